"""The `health_check` job run in-process from the real definitions, on SQLite and PostgreSQL,
with a real redis-server, a real loopback orchestrator and a real Dagster instance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    DagsterInstance,
    DefaultScheduleStatus,
    Definitions,
    build_schedule_context,
    build_sensor_context,
    job,
    op,
)
from sqlalchemy import select

from perf_pipelines.dagster_defs.health import HealthResource
from perf_pipelines.definitions import build_definitions
from perf_pipelines.engines.canonical import CanonicalSnapshot
from perf_pipelines.settings import load_settings
from perf_pipelines.storage.db import create_db_engine, ensure_schema
from perf_pipelines.storage.schema import agent_health
from perf_pipelines.storage.snapshots import SnapshotRow, insert_snapshots
from tests.health.redis_server import run_redis
from tests.support.http_servers import closed_port
from tests.support.orchestrator import run_orchestrator

COMPONENTS = {"database", "targets", "dagster", "orchestrator", "cache"}


def _definitions(tmp_path: Path, database_url: str, **overrides: Any) -> Definitions:
    targets = tmp_path / "targets.yaml"
    targets.write_text("targets:\n  - {name: llama-a, url: 'http://10.0.0.1:8000/metrics'}\n")
    values: dict[str, Any] = {
        "database_url": database_url,
        "perf_targets": targets,
        "agent_id": "perf-health",
        "orchestrator_url": None,
        "orchestrator_token": None,
        "redis_url": None,
        "health_check_cron": "*/2 * * * *",
    }
    values.update(overrides)
    return build_definitions(load_settings(**values))


def _seed_collection(database_url: str, up: bool = True) -> None:
    engine = create_db_engine(database_url)
    ensure_schema(engine)
    row = SnapshotRow(
        run_id="cycle-1",
        sample_index=0,
        target="llama-a",
        engine="vllm",
        model="m",
        collected_at=datetime.now(UTC) - timedelta(seconds=30),
        up=up,
        error=None if up else "connection failed",
        scrape_ms=2.0,
        body_bytes=10,
        snapshot=CanonicalSnapshot(model="m", requests_running=1.0) if up else None,
    )
    with engine.begin() as connection:
        insert_snapshots(connection, [row])
    engine.dispose()


@op
def _noop() -> None:
    return None


@job(name="optimization_cycle")
def _finished_cycle() -> None:
    _noop()


def _health_rows(database_url: str) -> list[Any]:
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(agent_health)).all()
    finally:
        engine.dispose()


def test_all_components_healthy(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The definitions read the token through EnvVar, so that the UI never shows its value.
    monkeypatch.setenv("ORCHESTRATOR_TOKEN", "tok-health-1")
    _seed_collection(database_url)
    instance = DagsterInstance.ephemeral()
    assert _finished_cycle.execute_in_process(instance=instance).success
    with run_redis(tmp_path) as redis_url, run_orchestrator(token="tok-health-1") as orchestrator:
        defs = _definitions(
            tmp_path,
            database_url,
            redis_url=redis_url,
            orchestrator_url=orchestrator.url,
            orchestrator_token="tok-health-1",
        )
        sensor = defs.resolve_sensor_def("orchestrator_heartbeat")
        resources = defs.get_repository_def().get_top_level_resources()
        with build_sensor_context(resources=resources) as context:  # resources torn down after
            tick = sensor.evaluate_tick(context)
        assert tick.skip_message is not None and tick.skip_message.startswith("registered")
        result = defs.resolve_job_def("health_check").execute_in_process(instance=instance)
    assert result.success

    (row,) = _health_rows(database_url)
    assert row.run_id == result.run_id and row.agent_id == "perf-health"
    assert set(row.components) == COMPONENTS
    assert {name: c["status"] for name, c in row.components.items()} == dict.fromkeys(
        COMPONENTS, "ok"
    )
    assert row.status == "healthy"
    assert row.components["cache"]["latency_ms"] is not None
    assert row.components["dagster"]["data"]["last_run_status"] == "SUCCESS"
    assert row.components["targets"]["detail"] == "1/1 up in the latest collection run"

    (materialization,) = result.asset_materializations_for_node("agent_health")
    metadata = materialization.metadata
    assert metadata["status"].value == "healthy"
    assert metadata["components_not_ok"].value == 0
    table = metadata["components"].value
    assert table.startswith("| component | status | ms | detail |")
    assert "| cache | ok |" in table and "| orchestrator | ok |" in table


def test_components_down_are_recorded_not_raised(tmp_path: Path, sqlite_url: str) -> None:
    _seed_collection(sqlite_url, up=False)
    defs = _definitions(
        tmp_path, sqlite_url, redis_url=f"redis://:cache-pw-3@127.0.0.1:{closed_port()}/0"
    )
    result = defs.resolve_job_def("health_check").execute_in_process(
        instance=DagsterInstance.ephemeral()
    )
    assert result.success
    (row,) = _health_rows(sqlite_url)
    statuses = {name: c["status"] for name, c in row.components.items()}
    assert statuses == {
        "database": "ok",
        "targets": "down",
        "dagster": "degraded",
        "orchestrator": "not_configured",
        "cache": "down",
    }
    assert row.status == "degraded"
    assert "cache-pw-3" not in str(row.components)
    table = result.asset_materializations_for_node("agent_health")[0].metadata["components"]
    assert "| cache | **down** |" in table.value


def test_an_unreachable_database_fails_the_run_clearly(tmp_path: Path) -> None:
    broken = f"postgresql+psycopg://perf:db-pw-77@127.0.0.1:{closed_port()}/perf"
    defs = _definitions(tmp_path, broken)
    result = defs.resolve_job_def("health_check").execute_in_process(
        instance=DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = str(failure.step_failure_data.error)
    assert "database unreachable" in message and "no agent_health row" in message
    assert "db-pw-77" not in message


def test_schedule_requests_a_health_check_run(tmp_path: Path, sqlite_url: str) -> None:
    defs = _definitions(tmp_path, sqlite_url)
    schedule = defs.resolve_schedule_def("health_check_schedule")
    assert schedule.cron_schedule == "*/2 * * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "health_check"
    data = schedule.evaluate_tick(
        build_schedule_context(scheduled_execution_time=datetime(2026, 3, 1, 12, 2, tzinfo=UTC))
    )
    (request,) = data.run_requests
    assert request.job_name in (None, "health_check")


@pytest.mark.parametrize(
    ("cron", "stale_after"),
    [("*/5 * * * *", 720.0), ("0 * * * *", 7320.0), ("not a cron", 3600.0)],
)
def test_stale_threshold_follows_the_cycle_cron(cron: str, stale_after: float) -> None:
    assert HealthResource(optimization_cycle_cron=cron).cycle_stale_after_s() == stale_after
