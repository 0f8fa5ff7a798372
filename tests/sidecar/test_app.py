"""Every sidecar route over real HTTP on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import os
import re
import shutil
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from perf_pipelines import __version__
from perf_pipelines.settings import CAPABILITIES
from perf_pipelines.storage.db import HEAD_REVISION, create_db_engine, ensure_schema
from perf_pipelines.storage.schema import (
    agent_health,
    bottleneck_reports,
    metric_snapshots,
    orchestrator_events,
    tuning_recommendations,
)
from tests.sidecar.support import (
    AGENT_ID,
    Sidecar,
    SidecarFactory,
    event,
    free_port,
    health_row,
    metric_values,
    recommendation,
    report,
    snapshot,
)

TOKEN = "s3cr3t-orchestrator-token-1234"


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0)
    return parsed


def populate(engine: Engine, now: datetime) -> None:
    """A fleet of four targets (one up), two analyses, six pieces of advice, link events."""
    with engine.begin() as connection:
        connection.execute(
            insert(metric_snapshots),
            [
                snapshot("c-old", "a", now - timedelta(minutes=10)),  # older run: ignored
                snapshot("c-new", "a", now - timedelta(seconds=31)),
                snapshot("c-new", "a", now - timedelta(seconds=30), index=1, up=False,
                         error="connection reset"),
                snapshot("c-new", "b", now - timedelta(seconds=30), up=False,
                         error="timed out after 5 s"),
                snapshot("c-new", "c", now - timedelta(seconds=30), up=False, error="HTTP 500"),
                snapshot("c-new", "d", now - timedelta(seconds=30), up=False,
                         error="timed out after 5 s"),
            ],
        )  # fmt: skip
        connection.execute(
            insert(bottleneck_reports),
            [
                report("a-old", "a", now - timedelta(minutes=10), "preemption", "critical"),
                report("a-new", "a", now - timedelta(seconds=20), "kv_cache_pressure", "critical"),
                report("a-new", "b", now - timedelta(seconds=20), "target_down", "critical"),
                report("a-new", "c", now - timedelta(seconds=20), "queue_saturation", "warning"),
            ],
        )
        at = now - timedelta(minutes=1)
        connection.execute(
            insert(tuning_recommendations),
            [
                recommendation("rec-1", severity="critical", at=at),
                recommendation("rec-2", severity="critical", at=at, target="sglang-b"),
                recommendation("rec-3", capability="batch_size_tuning", at=at),
                recommendation("rec-4", status="applied", outcome="regressed", at=at),
                recommendation("rec-5", status="applied", outcome="improved", at=at),
                recommendation("rec-6", status="superseded", at=at),
            ],
        )
        connection.execute(
            insert(orchestrator_events),
            [
                event(now - timedelta(seconds=60), "heartbeat", False, error="timed out"),
                event(now - timedelta(seconds=50), "heartbeat", False, status_code=503),
                event(now - timedelta(seconds=40), "register", True, status_code=200),
                event(now - timedelta(seconds=5), "heartbeat", True, status_code=200),
                event(now - timedelta(seconds=1), "register", False, agent_id="someone-else"),
            ],
        )
        connection.execute(insert(agent_health), [health_row(now - timedelta(seconds=15))])


def test_liveness_and_service_description(sqlite_url: str, start_sidecar: SidecarFactory) -> None:
    sidecar = start_sidecar(create_db_engine(sqlite_url))
    before = datetime.now(UTC)
    health = sidecar.client.get("/api/v1/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "healthy"
    assert (body["version"], body["agent_id"]) == (__version__, AGENT_ID)
    assert before - timedelta(seconds=1) <= _parse_time(body["timestamp"]) <= datetime.now(UTC)
    assert 0 <= body["uptime_seconds"] < 60
    info = sidecar.client.get("/api/v1/").json()
    assert info["service"] == "perf_pipelines"
    assert info["version"] == __version__ and info["agent_id"] == AGENT_ID
    assert info["capabilities"] == list(CAPABILITIES)
    assert {
        "performance_monitoring",
        "bottleneck_detection",
        "kv_cache_optimization",
        "quantization_optimization",
        "batch_size_tuning",
    } == set(info["capabilities"])
    # served fast over keep-alive
    latencies = []
    for _ in range(50):
        started = time.perf_counter()
        assert sidecar.client.get("/api/v1/health").status_code == 200
        latencies.append(1000 * (time.perf_counter() - started))
    assert statistics.median(latencies) < 50, latencies


def test_populated_database_every_route(
    db_engine: Engine, start_sidecar: SidecarFactory, redis_url: str
) -> None:
    now = datetime.now(UTC)
    ensure_schema(db_engine)
    populate(db_engine, now)
    sidecar = start_sidecar(
        db_engine,
        orchestrator_url="http://127.0.0.1:1",
        redis_url=redis_url,
        perf_targets=Path("targets.yaml"),
    )

    detailed = sidecar.client.get("/api/v1/health/detailed")
    assert detailed.status_code == 200
    body = detailed.json()
    components = body["components"]
    assert {name: c["status"] for name, c in components.items()} == {
        "database": "ok",
        "dagster": "ok",
        "orchestrator": "ok",
        "cache": "ok",
        "targets": "degraded",
    }, components
    assert body["status"] == "degraded"
    assert body["agent_id"] == AGENT_ID and body["version"] == __version__
    assert HEAD_REVISION in components["database"]["detail"]
    assert "1/4 up in the latest collection run" in components["targets"]["detail"]
    assert "timed out after 5 s" in components["targets"]["detail"]
    assert "PING" in components["cache"]["detail"]
    assert "last heartbeat ok" in components["orchestrator"]["detail"]
    # dagster: what the health_check job recorded 15 s ago, relayed
    # (a second or two later than 15 s on a loaded machine)
    assert re.search(r"\(as of health_check 1[5-8]s ago\)", components["dagster"]["detail"])
    assert components["dagster"]["data"]["last_run_status"] == "SUCCESS"
    # one shape with the agent_health row: status, detail, latency_ms, data
    assert all(set(c) == {"status", "detail", "latency_ms", "data"} for c in components.values())
    assert components["targets"]["data"]["configured"] is None  # the file is the job's to read

    # /metrics, parsed back, against the rows above
    response = sidecar.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = metric_values(response.text)
    assert values[("perf_agent_info", (("agent_id", AGENT_ID), ("version", __version__)))] == 1
    assert values[("perf_agent_database_up", ())] == 1
    assert values[("perf_agent_targets", (("state", "up"),))] == 1
    assert values[("perf_agent_targets", (("state", "down"),))] == 3
    errors = {
        dict(labels)["error"]: value
        for (name, labels), value in values.items()
        if name == "perf_agent_scrape_errors"
    }
    # failed scrapes of the latest run, by error (target a failed once, yet counts as up)
    assert errors == {"timed out after 5 s": 2, "HTTP 500": 1, "connection reset": 1}
    open_recs = {
        (dict(labels)["capability"], dict(labels)["severity"]): value
        for (name, labels), value in values.items()
        if name == "perf_agent_open_recommendations"
    }
    assert len(open_recs) == 9  # every capability × severity, zeros included
    assert {k: v for k, v in open_recs.items() if v} == {
        ("kv_cache_optimization", "critical"): 2,
        ("batch_size_tuning", "warning"): 1,
    }
    outcomes = {
        dict(labels)["outcome"]: value
        for (name, labels), value in values.items()
        if name == "perf_agent_recommendation_outcomes"
    }
    assert outcomes == {"improved": 1, "no_change": 0, "regressed": 1}
    assert 29 <= values[("perf_agent_last_collection_age_seconds", ())] < 60
    assert 19 <= values[("perf_agent_last_analysis_age_seconds", ())] < 60
    assert values[("perf_agent_critical_bottlenecks", ())] == 2
    failures = {
        dict(labels)["kind"]: value
        for (name, labels), value in values.items()
        if name == "perf_agent_orchestrator_failures_total"
    }
    assert failures == {"heartbeat": 2, "register": 1}
    assert values[("process_resident_memory_bytes", ())] > 0
    assert any(name == "python_info" for name, _ in values)

    # recommendations: the open view, the table by status, filters, limits
    listed = sidecar.client.get("/api/v1/recommendations").json()
    assert listed["status"] == "open" and listed["count"] == 3
    assert {r["id"] for r in listed["recommendations"]} == {"rec-1", "rec-2", "rec-3"}
    first = listed["recommendations"][0]
    assert first["evidence"]["kv_usage_mean"] == 0.97
    _parse_time(first["created_at"])
    applied = sidecar.client.get("/api/v1/recommendations", params={"status": "applied"}).json()
    assert {r["id"]: r["outcome"] for r in applied["recommendations"]} == {
        "rec-4": "regressed",
        "rec-5": "improved",
    }
    by_target = sidecar.client.get("/api/v1/recommendations", params={"target": "sglang-b"})
    assert [r["id"] for r in by_target.json()["recommendations"]] == ["rec-2"]
    one = sidecar.client.get("/api/v1/recommendations", params={"limit": 1}).json()
    assert one["count"] == 1
    assert sidecar.client.get("/api/v1/recommendations", params={"limit": 1000}).status_code == 200
    for bad in ({"status": "bogus"}, {"status": "OPEN"}, {"limit": 0}, {"limit": 1001}):
        assert sidecar.client.get("/api/v1/recommendations", params=bad).status_code == 422, bad

    # every target up in a newer collection: healthy
    with db_engine.begin() as connection:
        connection.execute(
            insert(metric_snapshots),
            [snapshot("c-newest", t, datetime.now(UTC)) for t in "abcd"],
        )
    detailed = sidecar.client.get("/api/v1/health/detailed")
    assert (detailed.status_code, detailed.json()["status"]) == (200, "healthy")


def test_status_answers_over_http(sidecar: Sidecar) -> None:
    now = datetime.now(UTC) - timedelta(minutes=1)
    with sidecar.engine.begin() as connection:
        connection.execute(
            insert(tuning_recommendations),
            [
                recommendation("rec-a", severity="critical", at=now),
                recommendation("rec-b", at=now),
                recommendation("rec-s", status="superseded", at=now),
            ],
        )
    client = sidecar.client
    before = datetime.now(UTC)
    applied = client.post("/api/v1/recommendations/rec-a/status", json={"status": "applied"})
    assert applied.status_code == 200, applied.text
    row = applied.json()
    assert row["id"] == "rec-a" and row["status"] == "applied"
    changed_at = _parse_time(row["status_changed_at"])
    assert before - timedelta(seconds=1) <= changed_at <= datetime.now(UTC)
    assert row["outcome_evidence"] is None

    # the same answer again: 200, unchanged
    again = client.post(
        "/api/v1/recommendations/rec-a/status", json={"status": "applied", "note": "retry"}
    )
    assert again.status_code == 200
    assert _parse_time(again.json()["status_changed_at"]) == changed_at

    # illegal transitions: 409 naming both statuses
    conflict = client.post("/api/v1/recommendations/rec-a/status", json={"status": "rejected"})
    assert conflict.status_code == 409
    assert conflict.json()["current_status"] == "applied"
    assert conflict.json()["requested_status"] == "rejected"
    assert "only an open recommendation" in conflict.json()["detail"]
    stale = client.post("/api/v1/recommendations/rec-s/status", json={"status": "applied"})
    assert (stale.status_code, stale.json()["current_status"]) == (409, "superseded")

    rejected = client.post(
        "/api/v1/recommendations/rec-b/status",
        json={"status": "rejected", "note": "change window closed"},
    )
    assert (rejected.status_code, rejected.json()["status"]) == (200, "rejected")

    missing = client.post("/api/v1/recommendations/rec-nope/status", json={"status": "applied"})
    assert missing.status_code == 404
    assert "rec-nope" in missing.json()["detail"]

    for body in (
        {"status": "open"},
        {"status": "expired"},
        {"status": "APPLIED"},
        {},
        {"status": "applied", "unexpected": 1},
        {"status": "applied", "note": "x" * 2001},
        ["applied"],
    ):
        response = client.post("/api/v1/recommendations/rec-b/status", json=body)
        assert response.status_code == 422, (body, response.text)
    not_json = client.post(
        "/api/v1/recommendations/rec-b/status",
        content=b"status=applied",
        headers={"content-type": "application/json"},
    )
    assert not_json.status_code == 422

    # the open view and /metrics follow
    listed = client.get("/api/v1/recommendations").json()
    assert listed["count"] == 0
    values = metric_values(client.get("/metrics").text)
    kv_critical = (("capability", "kv_cache_optimization"), ("severity", "critical"))
    assert values[("perf_agent_open_recommendations", kv_critical)] == 0


def test_bearer_token_is_required_and_never_logged(
    sqlite_url: str, start_sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    engine = create_db_engine(sqlite_url)
    sidecar = start_sidecar(engine, orchestrator_token=TOKEN)
    with engine.begin() as connection:
        connection.execute(
            insert(tuning_recommendations),
            [recommendation("rec-t", at=datetime.now(UTC))],
        )
    client = sidecar.client
    path = "/api/v1/recommendations/rec-t/status"
    body = {"status": "applied", "note": "rolled out"}

    missing = client.post(path, json=body)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    for header in ("Basic dXNlcjpwdw==", "Bearer", TOKEN):
        response = client.post(path, json=body, headers={"Authorization": header})
        assert response.status_code == 401, header
    wrong = client.post(path, json=body, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 403
    prefix = client.post(path, json=body, headers={"Authorization": f"Bearer {TOKEN[:-1]}"})
    assert prefix.status_code == 403
    # authentication comes before the body: a bad body without a token is still 401
    assert client.post(path, content=b"{not json").status_code == 401
    # nothing changed so far
    assert client.get("/api/v1/recommendations").json()["count"] == 1

    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post(path, content=b"{not json", headers=auth).status_code == 422
    ok = client.post(path, json=body, headers=auth)
    assert (ok.status_code, ok.json()["status"]) == (200, "applied")
    lower = client.post(path, json=body, headers={"authorization": f"bearer {TOKEN}"})
    assert lower.status_code == 200  # idempotent, scheme case-insensitive
    # reading stays open: the token guards changes only
    assert client.get("/api/v1/recommendations").status_code == 200

    server_side = [
        record
        for record in caplog.records
        if record.name.startswith(("perf_pipelines", "uvicorn", "fastapi", "starlette"))
    ]
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in server_side)
    assert "POST /api/v1/recommendations/rec-t/status 401" in logged
    assert "POST /api/v1/recommendations/rec-t/status 200" in logged
    assert TOKEN not in logged
    assert "Bearer" not in logged and "authorization" not in logged.lower()


def test_fresh_database_then_migrated(sqlite_url: str, start_sidecar: SidecarFactory) -> None:
    """Before the schema exists the sidecar serves and says so; after, it reports an idle agent."""
    engine = create_db_engine(sqlite_url)
    sidecar = start_sidecar(engine, migrate=False)
    detailed = sidecar.client.get("/api/v1/health/detailed")
    # Not ready: the routes that read the tables would answer 503 too.
    assert detailed.status_code == 503
    assert detailed.json()["status"] == "unhealthy"
    components = detailed.json()["components"]
    assert components["database"]["status"] == "degraded"
    assert "schema at revision none" in components["database"]["detail"]
    assert (components["dagster"]["status"], components["dagster"]["detail"]) == (
        "degraded",
        "not judged: the database cannot be read",
    )
    values = metric_values(sidecar.client.get("/metrics").text)
    assert values[("perf_agent_database_up", ())] == 0
    unavailable = sidecar.client.get("/api/v1/recommendations")
    assert (unavailable.status_code, unavailable.json()) == (
        503,
        {"detail": "database unavailable"},
    )

    ensure_schema(engine)
    detailed = sidecar.client.get("/api/v1/health/detailed")
    body = detailed.json()
    assert {name: c["status"] for name, c in body["components"].items()} == {
        "database": "ok",
        "dagster": "degraded",
        "orchestrator": "not_configured",
        "cache": "not_configured",
        "targets": "degraded",  # an agent without targets has nothing to do
    }
    assert "no health_check run recorded yet" in body["components"]["dagster"]["detail"]
    assert "no targets configured (PERF_TARGETS)" in body["components"]["targets"]["detail"]
    assert (detailed.status_code, body["status"]) == (200, "degraded")
    values = metric_values(sidecar.client.get("/metrics").text)
    assert values[("perf_agent_database_up", ())] == 1
    assert values[("perf_agent_targets", (("state", "up"),))] == 0
    assert ("perf_agent_last_collection_age_seconds", ()) not in values


def test_stale_runs_failing_orchestrator_and_unreachable_redis(
    sqlite_url: str, start_sidecar: SidecarFactory
) -> None:
    engine = create_db_engine(sqlite_url)
    ensure_schema(engine)
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    recently = datetime.now(UTC) - timedelta(seconds=10)
    with engine.begin() as connection:
        connection.execute(
            insert(metric_snapshots),
            [snapshot("c-1", t, long_ago, up=False, error="connection refused") for t in "ab"],
        )
        connection.execute(insert(agent_health), [health_row(long_ago)])
        connection.execute(
            insert(orchestrator_events),
            [
                event(recently - timedelta(seconds=20), "register", True, status_code=200),
                event(recently - timedelta(seconds=10), "heartbeat", False, status_code=500),
                event(recently, "heartbeat", False, error=f"ConnectError Bearer {TOKEN}"),
            ],
        )
    sidecar = start_sidecar(
        engine,
        orchestrator_url="http://127.0.0.1:1",
        redis_url=f"redis://:hunter2-password@127.0.0.1:{free_port()}/0",
        perf_targets=Path("targets.yaml"),
    )
    started = time.perf_counter()
    response = sidecar.client.get("/api/v1/health/detailed")
    assert time.perf_counter() - started < 3  # Redis gives up after 1 s, no retries
    body = response.json()
    components = body["components"]
    assert {name: c["status"] for name, c in components.items()} == {
        "database": "ok",
        "dagster": "degraded",
        "orchestrator": "down",
        "cache": "down",
        "targets": "down",
    }
    assert (response.status_code, body["status"]) == (200, "degraded")
    assert "are the Dagster daemon and its schedules running?" in components["dagster"]["detail"]
    # HEALTH_CHECK_CRON's default, every 5 minutes: 2 × 5 min + 2 min
    assert "(stale after 720s)" in components["dagster"]["detail"]
    assert "2 consecutive failure(s)" in components["orchestrator"]["detail"]
    assert TOKEN not in response.text
    assert "hunter2" not in response.text
    assert "0/2 up in the latest collection run" in components["targets"]["detail"]
    assert "connection refused" in components["targets"]["detail"]


def test_unreachable_database_from_the_start(start_sidecar: SidecarFactory) -> None:
    """Liveness never touches the database; the rest says it is down, without a trace."""
    engine = create_db_engine(f"postgresql+psycopg://perf@127.0.0.1:{free_port()}/nowhere")
    sidecar = start_sidecar(engine, migrate=False)
    started = time.perf_counter()
    assert sidecar.client.get("/api/v1/health").json()["status"] == "healthy"
    assert time.perf_counter() - started < 0.5
    detailed = sidecar.client.get("/api/v1/health/detailed")
    assert detailed.status_code == 503
    body = detailed.json()
    assert body["status"] == "unhealthy"
    assert body["components"]["database"]["status"] == "down"
    assert "OperationalError" in body["components"]["database"]["detail"]
    assert "Traceback" not in detailed.text
    values = metric_values(sidecar.client.get("/metrics").text)
    assert values[("perf_agent_database_up", ())] == 0
    assert not any(name == "perf_agent_targets" for name, _ in values)
    assert values[("perf_agent_info", (("agent_id", AGENT_ID), ("version", __version__)))] == 1
    post = sidecar.client.post("/api/v1/recommendations/rec-x/status", json={"status": "applied"})
    assert (post.status_code, post.json()) == (503, {"detail": "database unavailable"})


def test_database_goes_away(
    database_url: str, start_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    """Serving, then the database is dropped (PostgreSQL) or its folder removed (SQLite)."""
    backend = make_url(database_url).get_backend_name()
    if backend == "sqlite":
        folder = tmp_path / "db"
        url = f"sqlite:///{folder / 'perf.db'}"
        create_db_engine(url).dispose()  # creates the folder
        # A pooled SQLite connection keeps reading an unlinked file; without a pool every
        # request opens the file again, as a restarted process would.
        engine = create_engine(url, poolclass=NullPool)
    else:
        engine = create_db_engine(database_url)
    ensure_schema(engine)
    populate(engine, datetime.now(UTC))
    sidecar = start_sidecar(engine)
    assert (
        sidecar.client.get("/api/v1/health/detailed").json()["components"]["database"]["status"]
        == "ok"
    )
    assert metric_values(sidecar.client.get("/metrics").text)[("perf_agent_database_up", ())] == 1

    if backend == "sqlite":
        shutil.rmtree(folder)
    else:
        admin = create_engine(os.environ["PERF_TEST_POSTGRES_URL"], isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            name = make_url(database_url).database
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()

    detailed = sidecar.client.get("/api/v1/health/detailed")
    assert detailed.status_code == 503
    body = detailed.json()
    assert body["status"] == "unhealthy"
    assert body["components"]["database"]["status"] == "down"
    assert body["components"]["targets"]["detail"].startswith("not judged")
    values = metric_values(sidecar.client.get("/metrics").text)
    assert values[("perf_agent_database_up", ())] == 0
    assert not any(name == "perf_agent_open_recommendations" for name, _ in values)
    assert sidecar.client.get("/api/v1/health").status_code == 200
    listed = sidecar.client.get("/api/v1/recommendations")
    assert (listed.status_code, listed.json()) == (503, {"detail": "database unavailable"})
