"""Two processes migrate one new database at the same moment: `perf-pipelines db upgrade` twice,
or the first use of two runs (`ensure_schema`). Both must succeed and the schema must be whole.

Each child process imports everything first (the CLI, Alembic, the migrations' modules), says
`ready`, and waits on its stdin; the test releases both together, so they race on the first
statement, not on import time. Several rounds per case make a lost race likely: before the lock
on SQLite, 6 of 10 rounds had one process fail with `table agent_health already exists`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import DBAPIError

from perf_pipelines.storage.db import HEAD_REVISION, create_db_engine, current_revision, upgrade
from perf_pipelines.storage.schema import metadata

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 4
_START_TIMEOUT_S = 120

# The two ways a process brings a database to head: the CLI, and a run's first use of it.
_CHILD = {
    "db-upgrade": """
import sys
import alembic.command, alembic.script
from perf_pipelines.cli import main
print("ready", flush=True)
sys.stdin.readline()
main(["db", "upgrade"])
""",
    "first-run": """
import os, sys
import alembic.command, alembic.script
from perf_pipelines.storage.db import create_db_engine, ensure_schema
engine = create_db_engine(os.environ["DATABASE_URL"])
print("ready", flush=True)
sys.stdin.readline()
ensure_schema(engine)
print("migrated", flush=True)
""",
}


def _race(url: str, home: Path, child: str) -> list[tuple[int, str]]:
    """Start two children, release them together, return (exit code, output) of each."""
    env = {**os.environ, "DATABASE_URL": url, "PERF_HOME": str(home)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", child],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for process in processes:
            assert process.stdout is not None and process.stdin is not None
            first = process.stdout.readline()
            assert first.strip() == "ready", f"child did not start: {first!r}"
        for process in processes:  # the barrier: both are blocked on stdin until now
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        return [
            (process.wait(timeout=_START_TIMEOUT_S), process.communicate()[0])
            for process in processes
        ]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _index_names(connection: Connection) -> set[str]:
    # From the catalogue: the inspector skips expression indexes on SQLite (with a warning).
    if connection.dialect.name == "sqlite":
        query = "SELECT name FROM sqlite_master WHERE type = 'index'"
    else:
        query = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
    return {row[0] for row in connection.execute(text(query))}


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(ROUNDS))
@pytest.mark.parametrize("child", sorted(_CHILD))
def test_two_migrations_at_once_both_succeed_and_leave_the_whole_schema(
    database_url: str, tmp_path: Path, child: str, round_: int
) -> None:
    outcomes = _race(database_url, tmp_path, _CHILD[child])

    failed = [(code, output[-1500:]) for code, output in outcomes if code != 0]
    assert not failed, f"round {round_}: a migrating process failed: {failed}"
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
            tables = set(inspect(connection).get_table_names())
            views = set(inspect(connection).get_view_names())
            indexes = _index_names(connection)
    finally:
        engine.dispose()
    assert [v[0] for v in versions] == [HEAD_REVISION], f"alembic_version rows: {versions}"
    assert set(metadata.tables) <= tables, f"missing tables: {set(metadata.tables) - tables}"
    assert "open_recommendations" in views, f"views: {views}"
    expected_indexes = {index.name for table in metadata.tables.values() for index in table.indexes}
    assert expected_indexes <= indexes, f"missing indexes: {expected_indexes - indexes}"


def test_a_migration_that_fails_half_way_leaves_no_half_made_schema(database_url: str) -> None:
    # A table squatting on the name of the view 0001 creates last: the migration fails at its
    # last statement, after five tables and their indexes were made.
    engine = create_db_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE open_recommendations (x INTEGER)"))
        with pytest.raises(DBAPIError) as failed:
            upgrade(engine)
        assert "open_recommendations" in str(failed.value)
        with engine.connect() as connection:
            left = set(inspect(connection).get_table_names()) - {"open_recommendations"}
        assert not left, f"the failed migration left these behind: {sorted(left)}"
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE open_recommendations"))
        upgrade(engine)  # and once the obstacle is gone, the same migration goes through
        assert current_revision(engine) == HEAD_REVISION
    finally:
        engine.dispose()
