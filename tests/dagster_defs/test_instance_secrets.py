"""No secret in Dagster's own storage after a cycle: runs, event logs and schedule storage of a
real instance (SQLite files, or PostgreSQL through dagster-postgres), compressed snapshots
included, scanned for the database password, the orchestrator token and the Redis password,
and for every 8-character piece of them."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, build_sensor_context
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from perf_pipelines.definitions import build_definitions
from perf_pipelines.settings import load_settings
from tests.collection.test_collector import VLLM_BODY
from tests.support.http_servers import Route, closed_port, serve
from tests.support.orchestrator import run_orchestrator

# Random, so that no 8-character piece of them occurs by chance in Dagster's storage.
DB_PASSWORD = f"dbpw-{uuid.uuid4().hex}"
TOKEN = f"tok-{uuid.uuid4().hex}"
REDIS_PASSWORD = f"rdpw-{uuid.uuid4().hex}"


def _needles() -> dict[str, str]:
    """Every 8-character piece of each secret (a secret half-masked still leaks)."""
    pieces: dict[str, str] = {}
    for name, secret in (("db", DB_PASSWORD), ("token", TOKEN), ("redis", REDIS_PASSWORD)):
        for start in range(len(secret) - 7):
            pieces[secret[start : start + 8]] = name
    return pieces


def _texts(value: object) -> Iterator[str]:
    """A stored value as text; bytes also zlib-decompressed (Dagster compresses snapshots)."""
    if value is None:
        return
    if isinstance(value, memoryview):
        value = bytes(value)
    if isinstance(value, bytes):
        yield value.decode("latin-1")
        with contextlib.suppress(zlib.error):
            yield zlib.decompress(value).decode("latin-1")
        return
    yield str(value)


def _find(texts: Iterator[tuple[str, str]]) -> list[str]:
    needles = _needles()
    found = []
    scanned = 0
    for where, content in texts:
        scanned += 1
        for piece, secret in needles.items():
            if piece in content:
                found.append(f"{secret} secret piece {piece!r} in {where}")
                break
    assert scanned > 0, "nothing was scanned"
    return found


def _sqlite_files(home: Path) -> Iterator[tuple[str, str]]:
    """Every row of every table of every SQLite file under DAGSTER_HOME, then every file's raw
    bytes (compute logs, WAL files)."""
    for path in sorted(home.rglob("*")):
        if not path.is_file():
            continue
        for content in _texts(path.read_bytes()):
            yield str(path), content
        if path.suffix != ".db":
            continue
        connection = sqlite3.connect(path)
        try:
            tables = [
                row[0]
                for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            for table in tables:
                for row in connection.execute(f'SELECT * FROM "{table}"'):
                    for value in row:
                        for content in _texts(value):
                            yield f"{path.name}:{table}", content
        finally:
            connection.close()


def _postgres_tables(url: str) -> Iterator[tuple[str, str]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            for table in inspect(connection).get_table_names():
                for row in connection.execute(text(f'SELECT * FROM "{table}"')):
                    for value in row:
                        for content in _texts(value):
                            yield table, content
    finally:
        engine.dispose()


@pytest.fixture
def dagster_postgres_url(postgres_url: str) -> Iterator[str]:
    """A second database on the test server for Dagster's storage (its tables, alembic_version
    among them, must not meet the agent's)."""
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    name = f"dagster_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_url).set(drivername="postgresql+psycopg2", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _instance(home: Path, storage_url: str | None) -> DagsterInstance:
    home.mkdir()
    config = "telemetry:\n  enabled: false\n"
    if storage_url:
        config += f"storage:\n  postgres:\n    postgres_url: '{storage_url}'\n"
    (home / "dagster.yaml").write_text(config)
    return DagsterInstance.from_config(str(home))


def _run_a_cycle(tmp_path: Path, database_url: str, instance: DagsterInstance) -> None:
    """The optimization cycle, the health check and retention, and a heartbeat sensor tick, with
    the secrets set the way a deployment sets them (DATABASE_URL with a password, a token, a
    Redis URL with a password)."""
    routes = {"/metrics": Route(body=VLLM_BODY)}
    with serve(routes) as server, run_orchestrator(token=TOKEN) as orchestrator:
        targets = tmp_path / "targets.yaml"
        targets.write_text(
            f"targets:\n  - {{name: vllm-a, url: '{server.base_url}/metrics', engine: vllm}}\n"
        )
        defs = build_definitions(
            load_settings(
                database_url=database_url,
                perf_home=tmp_path / "perf_home",
                perf_targets=targets,
                orchestrator_url=orchestrator.url,
                orchestrator_token=TOKEN,
                redis_url=f"redis://:{REDIS_PASSWORD}@127.0.0.1:{closed_port()}/0",
                scrape_samples=2,
                scrape_interval_s=0.05,
            )
        )
        sensor = defs.resolve_sensor_def("orchestrator_heartbeat")
        resources = defs.get_repository_def().get_top_level_resources()
        with build_sensor_context(instance=instance, resources=resources) as context:
            tick = sensor.evaluate_tick(context)
        assert tick.skip_message is not None and tick.skip_message.startswith("registered")
        for job_name in ("optimization_cycle", "health_check", "retention"):
            result = defs.resolve_job_def(job_name).execute_in_process(instance=instance)
            assert result.success, f"{job_name} failed"
        # Dagster's own record of the run, as the UI shows it: the secrets by name only.
        run = instance.get_run_by_id(result.run_id)
        assert run is not None and run.run_config is not None


def test_no_secret_in_sqlite_instance_storage(tmp_path: Path, sqlite_url: str) -> None:
    home = tmp_path / "dagster_home"
    instance = _instance(home, None)
    try:
        _run_a_cycle(tmp_path, sqlite_url, instance)
        assert len(instance.get_run_records()) == 3
    finally:
        instance.dispose()
    assert _find(_sqlite_files(home)) == []


@pytest.mark.postgres
def test_no_secret_in_postgres_instance_storage(
    tmp_path: Path, postgres_url: str, dagster_postgres_url: str
) -> None:
    database_url = make_url(postgres_url).set(password=DB_PASSWORD)
    instance = _instance(tmp_path / "dagster_home", dagster_postgres_url)
    try:
        _run_a_cycle(tmp_path, database_url.render_as_string(hide_password=False), instance)
        records = instance.get_run_records()
        assert len(records) == 3
    finally:
        instance.dispose()
    found = _find(_postgres_tables(dagster_postgres_url))
    found += _find(_sqlite_files(tmp_path / "dagster_home"))  # compute logs stay on disk
    assert found == []


def test_the_scan_finds_a_secret_when_there_is_one(tmp_path: Path) -> None:
    """The scan itself can fail: a password put into run config (what the code location did
    before, DatabaseResource(url=<the URL>)) and zlib-compressed is found."""
    home = tmp_path / "leaky"
    home.mkdir()
    connection = sqlite3.connect(home / "runs.db")
    connection.execute("CREATE TABLE snapshots (body BLOB)")
    blob = zlib.compress(f'{{"url": "postgresql://perf:{DB_PASSWORD}@db/perf"}}'.encode())
    connection.execute("INSERT INTO snapshots VALUES (?)", (blob,))
    connection.commit()
    connection.close()
    assert any("runs.db:snapshots" in where for where in _find(_sqlite_files(home)))
