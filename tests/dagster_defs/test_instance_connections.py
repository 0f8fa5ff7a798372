"""No database connection is left open after a run: the database resource disposes of its
engine when Dagster tears it down (PostgreSQL: the server's pg_stat_activity; SQLite: this
process's open file descriptors)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dagster import DagsterInstance, build_sensor_context
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from perf_pipelines.definitions import build_definitions
from perf_pipelines.settings import load_settings
from tests.collection.test_collector import VLLM_BODY
from tests.support.http_servers import Route, serve
from tests.support.orchestrator import run_orchestrator


def _run_every_job(tmp_path: Path, database_url: str, during: Callable[[], int]) -> int:
    """Run the cycle, the health check and retention in-process, and a heartbeat sensor tick;
    returns the most connections `during` counted while a run's resources were still set up
    (so that the count afterwards is known to look at the right thing)."""
    most = 0
    with (
        serve({"/metrics": Route(body=VLLM_BODY)}) as server,
        run_orchestrator(token="tok-conn") as orchestrator,
    ):
        targets = tmp_path / "targets.yaml"
        targets.write_text(
            f"targets:\n  - {{name: vllm-a, url: '{server.base_url}/metrics', engine: vllm}}\n"
        )
        defs = build_definitions(
            load_settings(
                database_url=database_url,
                perf_targets=targets,
                orchestrator_url=orchestrator.url,
                orchestrator_token="tok-conn",
                redis_url=None,
                scrape_samples=1,
                scrape_interval_s=0,
            )
        )
        instance = DagsterInstance.ephemeral()
        for name in ("optimization_cycle", "health_check", "retention"):
            assert defs.resolve_job_def(name).execute_in_process(instance=instance).success
        resources = defs.get_repository_def().get_top_level_resources()
        with build_sensor_context(instance=instance, resources=resources) as context:
            tick = defs.resolve_sensor_def("orchestrator_heartbeat").evaluate_tick(context)
            most = max(most, during())
        assert tick.skip_message is not None and tick.skip_message.startswith("registered")
    return most


def _settles_at_zero(count: Callable[[], int], deadline_s: float = 15.0) -> int:
    """A closed PostgreSQL connection's backend leaves pg_stat_activity a moment later: poll."""
    deadline = time.monotonic() + deadline_s
    while (seen := count()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return seen


@pytest.mark.postgres
def test_no_postgres_connection_is_left_open(tmp_path: Path, postgres_url: str) -> None:
    database = make_url(postgres_url).database
    # The server's view, through a connection to another database (the cluster's admin one).
    admin = create_engine(os.environ["PERF_TEST_POSTGRES_URL"])

    def connections() -> int:
        with admin.connect() as connection:
            return int(
                connection.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE datname = :name"),
                    {"name": database},
                ).scalar_one()
            )

    try:
        during = _run_every_job(tmp_path, postgres_url, connections)
        assert during >= 1, "the sensor's database resource held no connection: wrong database?"
        left = _settles_at_zero(connections)
    finally:
        admin.dispose()
    assert left == 0, f"{left} connection(s) to {database} still open after the runs"


def test_no_sqlite_file_is_left_open(tmp_path: Path, sqlite_url: str) -> None:
    database = make_url(sqlite_url).database
    assert database is not None

    def open_files() -> int:
        """This process's descriptors on the database file, its WAL and its shared memory."""
        count = 0
        for fd in Path("/proc/self/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:  # closed meanwhile (the listing's own descriptor)
                continue
            count += target.startswith(database)
        return count

    during = _run_every_job(tmp_path, sqlite_url, open_files)
    assert during >= 1, "the sensor's database resource held no file open: wrong path?"
    assert open_files() == 0, "the database file is still open after the runs"
