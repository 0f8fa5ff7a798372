"""The database fails under a run: PostgreSQL stopped in the middle of the `metric_snapshots`
write, a SQLite file locked by another writer, a read-only SQLite file. Each run either stores
all of its rows or none (one transaction), says why it failed, leaves everything already stored
as it was, and a re-run afterwards succeeds — twice with the same run id without duplicating.

PostgreSQL is a private cluster started by the `private_postgres` fixture: the shared test server
on :55432 is never stopped.
"""

import hashlib
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, Definitions, ExecuteInProcessResult, define_asset_job
from sqlalchemy import create_engine, text

from perf_pipelines.dagster_defs.resources import DatabaseResource, ScraperResource, TargetsResource
from perf_pipelines.dagster_defs.snapshots import metric_snapshots
from perf_pipelines.engines.canonical import CanonicalSnapshot
from perf_pipelines.storage.snapshots import SnapshotRow, insert_snapshots
from tests.collection.test_collector import MODEL, VLLM_BODY
from tests.reliability.conftest import PrivateCluster
from tests.reliability.support import duplicate_snapshot_keys, rows_by_run, write_targets
from tests.support.http_servers import Route, serve

SQLITE_BUSY_TIMEOUT_S = 15  # PRAGMA busy_timeout in storage/db.py


def _run(
    database_url: str, targets: Path, *, samples: int = 1, run_id: str | None = None
) -> ExecuteInProcessResult:
    """One `metric_snapshots` run (a job, so that a re-run can reuse a run id as a step retry
    does). Never raises: a failed run is a result."""
    job = define_asset_job("collect_only", selection=[metric_snapshots])
    defs = Definitions(
        assets=[metric_snapshots],
        jobs=[job],
        resources={
            "database": DatabaseResource(url=database_url),
            "targets": TargetsResource(path=str(targets)),
            "scraper": ScraperResource(timeout_s=2.0, samples=samples, interval_s=0.1),
        },
    )
    with DagsterInstance.ephemeral() as instance:
        return defs.resolve_job_def("collect_only").execute_in_process(
            instance=instance, run_id=run_id, raise_on_error=False
        )


def _failure(result: ExecuteInProcessResult) -> str:
    events = result.get_step_failure_events()
    assert events, "the run failed without a step failure"
    return str(events[0].event_specific_data.error)


def _inserted(result: ExecuteInProcessResult) -> int:
    (materialization,) = result.asset_materializations_for_node("metric_snapshots")
    return int(materialization.metadata["rows_inserted"].value)  # type: ignore[arg-type]


def _state(database_url: str) -> tuple[dict[str, int], list[Any]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return rows_by_run(connection), duplicate_snapshot_keys(connection)
    finally:
        engine.dispose()


# -- PostgreSQL stopped during a run -----------------------------------------------------------

STALL_SQL = """
CREATE FUNCTION stall_last_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(60); RETURN NEW; END $$;
CREATE TRIGGER stall_last_row BEFORE INSERT ON metric_snapshots FOR EACH ROW
WHEN (NEW.target = 't-149' AND NEW.sample_index = 1) EXECUTE FUNCTION stall_last_row();
"""


def test_postgres_stopped_mid_write_leaves_no_partial_rows(
    private_postgres: PrivateCluster, tmp_path: Path
) -> None:
    cluster = private_postgres
    with serve({"/metrics": Route(body=VLLM_BODY)}) as server:
        # 150 targets × 2 samples = 300 rows: two INSERT chunks of one transaction.
        targets = write_targets(
            tmp_path / "targets.yaml",
            [f"{{name: t-{i:03d}, url: '{server.base_url}/metrics'}}" for i in range(150)],
        )
        first = _run(cluster.url, targets, samples=2)
        assert first.success and _inserted(first) == 300

        # Make the write of the very last row wait, so that the server can be stopped while
        # the transaction holds the first 299 rows.
        admin = create_engine(cluster.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(STALL_SQL))
        outcome: dict[str, Any] = {}
        runner = threading.Thread(
            target=lambda: outcome.update(result=_run(cluster.url, targets, samples=2))
        )
        runner.start()
        deadline = time.monotonic() + 60
        with admin.connect() as connection:
            while time.monotonic() < deadline:
                waiting = connection.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")
                ).scalar()
                if waiting:
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the write never reached its last row")
            in_flight = connection.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE state = 'active'")
            ).scalar()
        admin.dispose()
        assert in_flight and in_flight >= 1
        stopped_at = time.monotonic()
        cluster.stop("fast")  # as `systemctl stop postgresql` does
        runner.join(timeout=60)
        assert not runner.is_alive()
        failed_after = time.monotonic() - stopped_at
        second = outcome["result"]
        assert not second.success
        message = _failure(second)
        assert "terminating connection" in message or "server closed" in message, message
        assert failed_after < 30

        cluster.start()
        counts, duplicates = _state(cluster.url)
        assert counts == {first.run_id: 300}  # nothing of the failed run, the first intact
        assert duplicates == []

        with create_engine(cluster.url, isolation_level="AUTOCOMMIT").connect() as connection:
            connection.execute(text("DROP TRIGGER stall_last_row ON metric_snapshots"))
        # Re-run under the failed run's id (a step retry keeps its run id), then once more.
        again = _run(cluster.url, targets, samples=2, run_id=second.run_id)
        assert again.success and _inserted(again) == 300
        once_more = _run(cluster.url, targets, samples=2, run_id=second.run_id)
        assert once_more.success and _inserted(once_more) == 0
    counts, duplicates = _state(cluster.url)
    assert counts == {first.run_id: 300, second.run_id: 300}
    assert duplicates == []


def test_postgres_down_for_a_whole_run_fails_it_and_the_next_run_recovers(
    private_postgres: PrivateCluster, tmp_path: Path
) -> None:
    cluster = private_postgres
    with serve({"/metrics": Route(body=VLLM_BODY)}) as server:
        targets = write_targets(
            tmp_path / "targets.yaml", [f"{{name: solo, url: '{server.base_url}/metrics'}}"]
        )
        first = _run(cluster.url, targets)
        assert first.success
        cluster.stop("fast")
        started = time.monotonic()
        down = _run(cluster.url, targets)
        assert not down.success
        assert "connection" in _failure(down).lower()
        assert time.monotonic() - started < 30  # refused at once, not a hang
        cluster.start()
        after = _run(cluster.url, targets)
        assert after.success and _inserted(after) == 1
    counts, duplicates = _state(cluster.url)
    assert counts == {first.run_id: 1, after.run_id: 1} and duplicates == []


# -- SQLite: another writer, a read-only file ----------------------------------------------------


def _sqlite_with_history(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "perf.db"
    url = f"sqlite:///{path}"
    then = datetime.now(UTC) - timedelta(minutes=2)
    rows = [
        SnapshotRow(run_id="earlier-run", sample_index=0, target="solo", engine="vllm",
                    model=MODEL, collected_at=then, up=True, error=None, scrape_ms=1.0,
                    body_bytes=10, snapshot=CanonicalSnapshot(model=MODEL, requests_running=1.0))
    ]  # fmt: skip
    engine = DatabaseResource(url=url).get_engine()
    with engine.begin() as connection:
        insert_snapshots(connection, rows)
    engine.dispose()
    return url, path


def _exclusive_writer(path: Path) -> sqlite3.Connection:
    """Another process's writer: holds BEGIN EXCLUSIVE and writes a row of its own."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")
    other.execute(
        "INSERT INTO orchestrator_events (occurred_at, agent_id, kind, success) "
        "VALUES ('2026-01-01 00:00:00.000000', 'other-writer', 'heartbeat', 1)"
    )
    return other


def _other_writer_rows(url: str) -> int:
    engine = create_engine(url)
    with engine.connect() as connection:
        count = connection.execute(
            text("SELECT count(*) FROM orchestrator_events WHERE agent_id = 'other-writer'")
        ).scalar()
    engine.dispose()
    return int(count or 0)


def test_sqlite_briefly_locked_by_another_writer_waits_and_succeeds(tmp_path: Path) -> None:
    url, path = _sqlite_with_history(tmp_path)
    with serve({"/metrics": Route(body=VLLM_BODY)}) as server:
        targets = write_targets(
            tmp_path / "targets.yaml", [f"{{name: solo, url: '{server.base_url}/metrics'}}"]
        )
        other = _exclusive_writer(path)
        release = threading.Timer(3.0, lambda: other.execute("COMMIT"))
        release.start()
        started = time.monotonic()
        result = _run(url, targets)
        waited = time.monotonic() - started
        release.join()
        other.close()
    assert result.success and _inserted(result) == 1
    assert waited >= 2.5  # it waited for the lock (busy_timeout) instead of failing
    counts, duplicates = _state(url)
    assert counts == {"earlier-run": 1, result.run_id: 1} and duplicates == []
    assert _other_writer_rows(url) == 1  # the other writer's work is kept too


def test_sqlite_locked_past_the_busy_timeout_fails_cleanly(tmp_path: Path) -> None:
    url, path = _sqlite_with_history(tmp_path)
    with serve({"/metrics": Route(body=VLLM_BODY)}) as server:
        targets = write_targets(
            tmp_path / "targets.yaml", [f"{{name: solo, url: '{server.base_url}/metrics'}}"]
        )
        other = _exclusive_writer(path)
        try:
            started = time.monotonic()
            locked = _run(url, targets)
            waited = time.monotonic() - started
        finally:
            other.execute("COMMIT")
            other.close()
        assert not locked.success
        assert "database is locked" in _failure(locked)
        assert SQLITE_BUSY_TIMEOUT_S - 1 <= waited < SQLITE_BUSY_TIMEOUT_S + 15
        counts, duplicates = _state(url)
        assert counts == {"earlier-run": 1} and duplicates == []  # nothing of the failed run
        assert _other_writer_rows(url) == 1
        after = _run(url, targets)
    assert after.success and _inserted(after) == 1
    assert _state(url)[0] == {"earlier-run": 1, after.run_id: 1}


def _make_read_only(path: Path) -> list[Path]:
    """chmod a-w; as root (who ignores modes) also the immutable attribute, where supported."""
    files = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
    for file in files:
        file.chmod(0o444)
    if os.geteuid() == 0:
        chattr = shutil.which("chattr")
        if chattr is None:
            pytest.skip("running as root without chattr: cannot make a file read-only")
        for file in files:
            done = subprocess.run([chattr, "+i", str(file)], capture_output=True, check=False)
            if done.returncode != 0:
                _make_writable(files)
                pytest.skip(f"chattr +i not supported here: {done.stderr.decode().strip()}")
    return files


def _make_writable(files: list[Path]) -> None:
    chattr = shutil.which("chattr")
    for file in files:
        if os.geteuid() == 0 and chattr:
            subprocess.run([chattr, "-i", str(file)], capture_output=True, check=False)
        file.chmod(0o644)


def test_read_only_sqlite_file_fails_cleanly(tmp_path: Path) -> None:
    url, path = _sqlite_with_history(tmp_path)
    with serve({"/metrics": Route(body=VLLM_BODY)}) as server:
        targets = write_targets(
            tmp_path / "targets.yaml", [f"{{name: solo, url: '{server.base_url}/metrics'}}"]
        )
        files = _make_read_only(path)
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        try:
            started = time.monotonic()
            result = _run(url, targets)
            elapsed = time.monotonic() - started
            after_hash = hashlib.sha256(path.read_bytes()).hexdigest()
        finally:
            _make_writable(files)
        assert not result.success
        message = _failure(result)
        assert "readonly" in message or "read-only" in message or "unable to open" in message
        assert elapsed < 10  # refused at once, no busy wait
        assert after_hash == before  # the file is untouched
        assert _state(url) == ({"earlier-run": 1}, [])
        again = _run(url, targets)
    assert again.success and _inserted(again) == 1
