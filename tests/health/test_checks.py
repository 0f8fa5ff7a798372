"""Health checks on real databases, a real redis-server and plain inputs."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select, text

from perf_pipelines.health.checks import (
    NOT_JUDGED,
    ComponentHealth,
    CycleRun,
    DatabaseState,
    RecordedHealth,
    check_cache,
    check_database,
    check_optimization_cycle,
    check_orchestrator,
    check_recorded_dagster,
    check_targets,
    database_components,
    overall_status,
    read_database,
    write_health,
)
from perf_pipelines.orchestrator.events import OrchestratorStatus
from perf_pipelines.storage.db import HEAD_REVISION, create_db_engine, ensure_schema
from perf_pipelines.storage.schema import agent_health, orchestrator_events
from perf_pipelines.storage.summary import FleetSummary
from tests.health.redis_server import run_redis
from tests.support.http_servers import closed_port

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _check_database(engine: Engine) -> ComponentHealth:
    return check_database(read_database(engine, "perf-1"), HEAD_REVISION)


def test_database_ok_then_behind_head(db_engine: Engine) -> None:
    ensure_schema(db_engine)
    ok = _check_database(db_engine)
    assert ok.status == "ok" and ok.latency_ms is not None
    assert ok.data["revision"] == ok.data["head"] == HEAD_REVISION
    with db_engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    behind = _check_database(db_engine)
    assert behind.status == "degraded" and "older" in behind.detail
    assert "perf-pipelines db upgrade" in behind.detail


def test_database_never_migrated(db_engine: Engine) -> None:
    """Reachable, no tables: degraded, and everything read from the tables is not judged."""
    state = read_database(db_engine, "perf-1")
    assert state.reachable and state.revision is None and state.fleet is None
    components = database_components(
        state,
        HEAD_REVISION,
        NOW,
        targets_configured=3,
        orchestrator_configured=True,
        heartbeat_interval_s=30,
    )
    assert components["database"].status == "degraded"
    assert "schema at revision none" in components["database"].detail
    assert (
        components["targets"]
        == components["orchestrator"]
        == ComponentHealth("degraded", NOT_JUDGED)
    )
    assert check_recorded_dagster(state, NOW, 240).detail == NOT_JUDGED
    assert overall_status(components) == "unhealthy"
    standalone = database_components(
        state, HEAD_REVISION, NOW, targets_configured=3, orchestrator_configured=False,
        heartbeat_interval_s=30,
    )  # fmt: skip
    assert standalone["orchestrator"].status == "not_configured"


def test_read_database_reads_this_agents_rows(db_engine: Engine) -> None:
    ensure_schema(db_engine)
    with db_engine.begin() as connection:
        connection.execute(
            insert(orchestrator_events),
            [
                {"occurred_at": NOW - timedelta(seconds=9), "agent_id": "perf-1",
                 "kind": "heartbeat", "success": True, "status_code": 200},
                {"occurred_at": NOW - timedelta(seconds=1), "agent_id": "other",
                 "kind": "heartbeat", "success": False, "status_code": 503},
            ],
        )  # fmt: skip
        for agent_id, seconds in (("perf-1", 30), ("other", 5)):
            write_health(
                connection,
                checked_at=NOW - timedelta(seconds=seconds),
                run_id=None,
                agent_id=agent_id,
                components={"database": ComponentHealth("ok", "")},
            )
    state = read_database(db_engine, "perf-1")
    assert state.error is None and state.fleet is not None and state.fleet.targets == 0
    assert state.link is not None and state.link.last_success is True
    assert state.last_health is not None
    assert state.last_health.checked_at == NOW - timedelta(seconds=30)
    assert state.last_health.components["database"]["status"] == "ok"


def test_database_unreachable_hides_the_password() -> None:
    engine = create_db_engine(
        f"postgresql+psycopg://perf:hunter2-secret@127.0.0.1:{closed_port()}/nothing"
    )
    try:
        result = _check_database(engine)
    finally:
        engine.dispose()
    assert result.status == "down" and result.detail.startswith("unreachable: ")
    assert "OperationalError" in result.detail
    assert "hunter2-secret" not in result.detail


def _fleet(targets: int = 3, up: int = 3, **extra: object) -> FleetSummary:
    values: dict[str, object] = {
        "targets": targets,
        "targets_up": up,
        "scrape_errors": {"connection failed: refused": targets - up} if up < targets else {},
        "last_collection_at": NOW - timedelta(seconds=40) if targets else None,
        "last_analysis_at": None,
        "open_recommendations": {},
        "outcomes": {},
        "critical_bottlenecks": 0,
    }
    values.update(extra)
    return FleetSummary(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fleet", "configured", "error", "status", "words"),
    [
        (_fleet(), 3, None, "ok", "3/3 up"),
        (_fleet(up=2), 3, None, "degraded", "connection failed"),
        (_fleet(up=0), 3, None, "down", "0/3 up in the latest collection run; most common"),
        (_fleet(targets=0, up=0), 3, None, "degraded", "no collection run"),
        (_fleet(targets=0, up=0), None, None, "degraded", "no collection run"),
        (_fleet(), None, None, "ok", "3/3 up"),  # the sidecar: PERF_TARGETS set, file not read
        (_fleet(), 0, None, "degraded", "no targets configured"),
        (_fleet(), None, "duplicate name", "degraded", "duplicate name"),
    ],
)
def test_targets(
    fleet: FleetSummary, configured: int | None, error: str | None, status: str, words: str
) -> None:
    result = check_targets(fleet, configured, NOW, error)
    assert result.status == status and words in result.detail
    assert result.data["configured"] == configured


def test_targets_data_age() -> None:
    assert check_targets(_fleet(), 3, NOW).data["data_age_s"] == 40.0


def _run(minutes_ago: float, status: str = "SUCCESS", run_id: str = "abcdef123456") -> CycleRun:
    return CycleRun(run_id, status, NOW - timedelta(minutes=minutes_ago))


@pytest.mark.parametrize(
    ("success", "finished", "status", "words"),
    [
        (_run(3), _run(3), "ok", "180s ago"),
        (_run(30), _run(30), "degraded", "stale after 720s"),
        (None, None, "degraded", "no successful optimization_cycle run yet"),
        (None, _run(1, "FAILURE"), "degraded", "latest run abcdef12 FAILURE"),
        (_run(8), _run(2, "FAILURE", "ffff0000"), "degraded", "latest run ffff0000 FAILURE"),
        (_run(2), _run(8, "FAILURE"), "ok", "120s ago"),
    ],
)
def test_optimization_cycle(
    success: CycleRun | None, finished: CycleRun | None, status: str, words: str
) -> None:
    result = check_optimization_cycle(success, finished, NOW, stale_after_s=720)
    assert result.status == status and words in result.detail


def _link(seconds_ago: float, success: bool = True, failures: int = 0) -> OrchestratorStatus:
    at = NOW - timedelta(seconds=seconds_ago)
    return OrchestratorStatus(
        last_attempt_at=at,
        last_kind="heartbeat",
        last_success=success,
        last_status_code=200 if success else 503,
        last_error=None if success else "HTTP 503 Service Unavailable",
        last_success_at=at if success else at - timedelta(minutes=5),
        consecutive_failures=failures,
    )


@pytest.mark.parametrize(
    ("configured", "link", "status", "words"),
    [
        (False, None, "not_configured", "standalone"),
        (True, None, "degraded", "no registration or heartbeat attempt"),
        (True, _link(20), "ok", "last heartbeat ok 20s ago"),
        (True, _link(400), "degraded", "sensor stopped?"),
        (True, _link(5, success=False, failures=4), "down", "4 consecutive failure(s)"),
    ],
)
def test_orchestrator(
    configured: bool, link: OrchestratorStatus | None, status: str, words: str
) -> None:
    result = check_orchestrator(configured, link, NOW, interval_s=30)
    assert result.status == status and words in result.detail


def test_orchestrator_failure_reason_is_redacted_or_the_http_code() -> None:
    leaked = replace(_link(5, success=False, failures=1), last_error="ConnectError Bearer tok-9x")
    result = check_orchestrator(True, leaked, NOW, interval_s=30)
    assert "tok-9x" not in result.detail and "Bearer ***" in result.detail
    coded = replace(_link(5, success=False, failures=2), last_error=None)
    assert "(HTTP 503)" in check_orchestrator(True, coded, NOW, interval_s=30).detail


def _recorded(seconds_ago: float, dagster: dict[str, object] | None) -> DatabaseState:
    components = {} if dagster is None else {"dagster": dagster}
    last = RecordedHealth(NOW - timedelta(seconds=seconds_ago), "healthy", components)
    return DatabaseState(reachable=True, fleet=_fleet(), last_health=last)


_CYCLE_OK = {"status": "ok", "detail": "last successful optimization_cycle 100s ago",
             "latency_ms": None, "data": {"last_run_status": "SUCCESS"}}  # fmt: skip


@pytest.mark.parametrize(
    ("state", "status", "words"),
    [
        (_recorded(60, _CYCLE_OK), "ok", "cycle 100s ago (as of health_check 60s ago)"),
        (
            _recorded(60, {**_CYCLE_OK, "status": "degraded", "detail": "latest run ab FAILURE"}),
            "degraded",
            "FAILURE",
        ),
        (_recorded(300, _CYCLE_OK), "degraded", "health_check run 300s ago (stale after 240s)"),
        (_recorded(60, None), "degraded", "recorded no dagster component"),
        (_recorded(60, {"status": "bogus"}), "degraded", "recorded no dagster component"),
        (
            DatabaseState(reachable=True, fleet=_fleet()),
            "degraded",
            "no health_check run recorded yet: is the Dagster daemon running? "
            "(newest collection 40s ago)",
        ),
        (DatabaseState(reachable=False, error="x"), "degraded", NOT_JUDGED),
    ],
)
def test_recorded_dagster(state: DatabaseState, status: str, words: str) -> None:
    result = check_recorded_dagster(state, NOW, stale_after_s=240)
    assert result.status == status and words in result.detail
    if status == "ok":
        assert result.data["last_run_status"] == "SUCCESS"
        assert result.data["health_check_age_s"] == 60


def test_cache_not_configured_without_redis_url() -> None:
    assert check_cache(None).status == "not_configured"


def test_cache_ping_on_a_real_redis(tmp_path: Path) -> None:
    with run_redis(tmp_path, password="redis-pass-42") as url:
        ok = check_cache(url, timeout_s=1)
        wrong = check_cache(url.replace("redis-pass-42", "not-the-pass"), timeout_s=1)
    assert ok.status == "ok" and ok.latency_ms is not None
    assert ok.data["address"].startswith("127.0.0.1:")
    assert wrong.status == "down"
    for result in (ok, wrong):
        assert "redis-pass-42" not in str(result) and "not-the-pass" not in str(result)


def test_cache_down_on_a_closed_port() -> None:
    result = check_cache(f"redis://:pw-secret-9@127.0.0.1:{closed_port()}/0", timeout_s=0.5)
    assert result.status == "down" and "pw-secret-9" not in result.detail
    assert "127.0.0.1:" in result.detail


def test_overall_status() -> None:
    ok, off = ComponentHealth("ok", ""), ComponentHealth("not_configured", "")
    down, degraded = ComponentHealth("down", ""), ComponentHealth("degraded", "")
    assert overall_status({"database": ok, "cache": off}) == "healthy"
    assert overall_status({"database": ok, "cache": down}) == "degraded"
    assert overall_status({"database": ok, "targets": degraded}) == "degraded"
    assert overall_status({"database": degraded, "cache": ok}) == "unhealthy"  # behind head
    assert overall_status({"database": down, "cache": ok}) == "unhealthy"
    assert overall_status({"cache": ok}) == "healthy"


def test_write_health_row(db_engine: Engine) -> None:
    ensure_schema(db_engine)
    components = {
        "database": ComponentHealth("ok", "fine", 1.5),
        "cache": ComponentHealth("down", "x"),
    }
    with db_engine.begin() as connection:
        written = write_health(
            connection, checked_at=NOW, run_id="r1", agent_id="perf-1", components=components
        )
    with db_engine.connect() as connection:
        row = connection.execute(select(agent_health)).one()
    assert written["status"] == row.status == "degraded"
    assert row.checked_at == NOW and row.run_id == "r1" and row.agent_id == "perf-1"
    assert row.components["database"] == {
        "status": "ok",
        "detail": "fine",
        "latency_ms": 1.5,
        "data": {},
    }
