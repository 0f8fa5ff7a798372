"""Database engine, connection settings and schema migrations (Alembic, applied on first use).

Alembic is imported only when a migration runs: a process whose database is already at
HEAD_REVISION (every sidecar start but the first, every Dagster run) never loads it (~10 MiB and
~80 ms of start-up).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The newest migration in migrations/versions/; tests/storage checks it against Alembic's own
# reading of the folder, so adding a migration without moving this fails the tests.
HEAD_REVISION = "0002"
# An arbitrary constant: serialises concurrent `upgrade` calls from several processes on PostgreSQL.
_PG_MIGRATION_LOCK_KEY = 7_242_011_355
_SQLITE_BUSY_WAIT_S = 15.0  # as PRAGMA busy_timeout=15000 below


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # busy_timeout waits out a short lock instead of failing the run at once. WAL lets the
    # sidecar read while a run writes.
    cursor.execute("PRAGMA busy_timeout=15000")
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """`PRAGMA journal_mode=WAL`, retried while another process holds the file's lock.

    Switching a new file's journal mode takes its exclusive lock, and SQLite answers
    'database is locked' at once there rather than calling the busy handler: a process that
    connected while another switched the mode or migrated failed (tests/reliability/
    test_concurrent_migrations.py). The switch is retried for as long as busy_timeout waits.
    """
    deadline = time.monotonic() + _SQLITE_BUSY_WAIT_S
    pause = 0.01
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def create_db_engine(url: str) -> Engine:
    """An Engine for SQLite (file created with its folder) or PostgreSQL (psycopg 3)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # hide_parameters: a failed multi-row INSERT would put ~9 KB of values into the error
        # a run reports; the statement and the database's message say what went wrong.
        engine = create_engine(url, connect_args={"timeout": 15}, hide_parameters=True)
        event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        hide_parameters=True,
        pool_size=5,
        max_overflow=5,
        connect_args={"connect_timeout": 10, "application_name": "perf_pipelines"},
    )


def _alembic_config(connection: Connection) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def schema_revision(connection: Connection) -> str | None:
    """The Alembic revision the database is at (None: never migrated).

    Plain SQL: Alembic's MigrationContext logs two INFO lines per call, which a probe every few
    seconds would turn into noise, and importing Alembic costs ~10 MiB.
    """
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return schema_revision(connection)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to `revision`; safe to call from several processes at once."""
    from alembic import command

    with _migration_connection(engine) as connection:
        command.upgrade(_alembic_config(connection), revision)


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    with _migration_connection(engine) as connection:
        command.downgrade(_alembic_config(connection), revision)


@contextmanager
def _migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection in one transaction that holds the database's migration lock until commit.

    Alembic reads alembic_version inside this transaction, after the lock is taken, so the
    second of two processes finds the first one's work done and applies nothing.
    """
    if engine.dialect.name != "sqlite":
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Transaction-scoped: released by the commit or rollback, also if the process dies.
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK_KEY}
                )
            yield connection
        return
    # SQLite: the database's own write lock (BEGIN IMMEDIATE), not a lock file beside it. It
    # covers every connection to the file, whatever opened it, and it makes the migration one
    # transaction: SQLite's DDL is transactional, so a failure or a killed process leaves the
    # schema as it was, never half made. pysqlite does not BEGIN before DDL by itself (each
    # CREATE TABLE committed alone, which let two processes both create the first table), so
    # the driver's own transaction handling is off (AUTOCOMMIT) and the BEGIN/COMMIT are ours.
    with engine.connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        # How long a second migrating process waits for the first one's lock (10 min, not the
        # 15 s of a run's writes): a migration that rebuilds a big table (batch mode copies it)
        # takes far longer than a run's write.
        connection.exec_driver_sql("PRAGMA busy_timeout=600000")
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.exec_driver_sql("ROLLBACK")
                raise
            connection.exec_driver_sql("COMMIT")
        finally:
            connection.exec_driver_sql("PRAGMA busy_timeout=15000")


_checked: set[str] = set()
_checked_lock = threading.Lock()


def ensure_schema(engine: Engine) -> None:
    """Upgrade to head once per process and database; cheap on later calls."""
    key = engine.url.render_as_string(hide_password=True)
    with _checked_lock:
        if key in _checked:
            return
        if current_revision(engine) != HEAD_REVISION:
            upgrade(engine)
        _checked.add(key)
