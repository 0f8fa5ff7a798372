"""The `retention` job deletes Dagster's finished runs older than RETENTION_DAYS with their event
logs, from a real SQLite instance; runs not finished and newer runs stay."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    DagsterInstance,
    DagsterRunStatus,
    asset,
    asset_check,
    job,
    materialize,
    op,
)

from perf_pipelines.dagster_defs import retention as retention_module
from perf_pipelines.dagster_defs.retention import delete_finished_runs
from perf_pipelines.definitions import build_definitions
from perf_pipelines.settings import load_settings
from tests.dagster_defs.test_instance_secrets import dagster_postgres_url  # noqa: F401 (fixture)


@op
def _step() -> None:
    return None


@job
def _scheduled_job() -> None:
    _step()


def _run(instance: DagsterInstance) -> str:
    result = _scheduled_job.execute_in_process(instance=instance)
    assert result.success
    return result.run_id


def _instance(tmp_path: Path, storage_url: str | None = None) -> DagsterInstance:
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = "telemetry:\n  enabled: false\n"
    if storage_url:
        config += f"storage:\n  postgres:\n    postgres_url: '{storage_url}'\n"
    (home / "dagster.yaml").write_text(config)
    return DagsterInstance.from_config(str(home))


@asset
def checked_table() -> None:
    return None


@asset_check(asset=checked_table)
def checked_table_valid() -> AssetCheckResult:
    return AssetCheckResult(passed=True)


def _after_creation_of(instance: DagsterInstance, run_id: str) -> datetime:
    """A cutoff just after `run_id` was created, once the clock has passed it."""
    record = instance.get_run_record_by_id(run_id)
    assert record is not None
    created = record.create_timestamp
    deadline = time.monotonic() + 5
    while datetime.now(UTC) <= created and time.monotonic() < deadline:
        time.sleep(0.01)
    return datetime.now(UTC)


def test_finished_runs_before_the_cutoff_go_with_their_event_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention_module, "RUN_BATCH", 2)  # three pages for five runs
    instance = _instance(tmp_path)
    try:
        old = [_run(instance) for _ in range(5)]
        started = instance.create_run_for_job(_scheduled_job, status=DagsterRunStatus.STARTED)
        cutoff = _after_creation_of(instance, started.run_id)
        new = _run(instance)
        assert all(instance.all_logs(run_id) for run_id in old)

        assert delete_finished_runs(instance, cutoff) == 5

        remaining = {record.dagster_run.run_id for record in instance.get_run_records()}
        assert remaining == {started.run_id, new}, f"left: {remaining}"
        assert [run_id for run_id in old if instance.get_run_by_id(run_id)] == []
        # Nor any file of theirs: the SQLite event log's file per run (their event logs), the
        # compute logs.
        home = tmp_path / "dagster_home"
        left = [p for p in home.rglob("*") if any(run_id in p.name for run_id in old)]
        assert left == [], f"files of deleted runs: {left}"
        assert (home / "history" / "runs" / f"{new}.db").exists()
        assert instance.all_logs(new)
        assert delete_finished_runs(instance, cutoff) == 0
    finally:
        instance.dispose()


def test_the_retention_job_deletes_old_runs(tmp_path: Path, sqlite_url: str) -> None:
    # RETENTION_DAYS of a tenth of a second: the runs before it are old by the time it runs.
    days = 0.1 / 86400
    defs = build_definitions(load_settings(database_url=sqlite_url, retention_days=days))
    instance = _instance(tmp_path)
    try:
        old = [_run(instance) for _ in range(3)]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # until the newest old run is older than RETENTION_DAYS
            record = instance.get_run_record_by_id(old[-1])
            assert record is not None
            if (datetime.now(UTC) - record.create_timestamp).total_seconds() > 0.2:
                break
            time.sleep(0.02)
        result = defs.resolve_job_def("retention").execute_in_process(instance=instance)
        assert result.success
        (output,) = [event for event in result.all_events if event.is_successful_output]
        assert output.step_output_data.metadata["dagster_runs"].value == 3
        remaining = [record.dagster_run.run_id for record in instance.get_run_records()]
        assert remaining == [result.run_id], f"left: {remaining}"
    finally:
        instance.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def instance(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DagsterInstance]:
    """A real instance on SQLite files, or on PostgreSQL through dagster-postgres."""
    storage_url = None
    if request.param == "postgresql":
        storage_url = request.getfixturevalue("dagster_postgres_url")
    created = _instance(tmp_path, storage_url)
    yield created
    created.dispose()


def test_asset_check_executions_go_with_their_runs(instance: DagsterInstance) -> None:
    """delete_run leaves a run's asset check executions in the index; retention removes them."""
    key = AssetCheckKey(checked_table.key, "checked_table_valid")

    def check_runs() -> list[str]:
        history = instance.event_log_storage.get_asset_check_execution_history(key, limit=100)
        return sorted(record.run_id for record in history)

    old = [materialize([checked_table, checked_table_valid], instance=instance) for _ in range(3)]
    cutoff = _after_creation_of(instance, old[-1].run_id)
    new = materialize([checked_table, checked_table_valid], instance=instance)
    assert len(check_runs()) == 4

    assert delete_finished_runs(instance, cutoff) == 3
    assert check_runs() == [new.run_id]
