"""Shared fixtures: real SQLite files and a real PostgreSQL database per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from perf_pipelines.storage.db import create_db_engine

FIXTURES = Path(__file__).parent / "fixtures"


def _postgres_admin_url() -> str | None:
    url = os.environ.get("PERF_TEST_POSTGRES_URL")
    if url:
        return url
    if os.environ.get("PERF_REQUIRE_POSTGRES") == "1":
        pytest.fail("PERF_REQUIRE_POSTGRES=1 but PERF_TEST_POSTGRES_URL is not set")
    return None


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """The code location exports the secrets it read into os.environ (Dagster's EnvVar resolves
    from there, perf_pipelines/definitions.py): one test's token must not reach the next."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    admin_url = _postgres_admin_url()
    if admin_url is None:
        pytest.skip(
            "PostgreSQL not available: set PERF_TEST_POSTGRES_URL (scripts/start_postgres.sh)"
        )
    name = f"perf_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'perf.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def db_engine(database_url: str) -> Iterator[Engine]:
    engine = create_db_engine(database_url)
    yield engine
    engine.dispose()
