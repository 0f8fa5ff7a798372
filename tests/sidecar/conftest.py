"""The sidecar over real HTTP on loopback, on real databases, with a real Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from perf_pipelines.sidecar.app import create_app
from perf_pipelines.storage.db import ensure_schema
from tests.health.redis_server import run_redis
from tests.sidecar.support import Sidecar, SidecarFactory, make_settings, serve


@pytest.fixture
def start_sidecar() -> Iterator[Callable[..., Sidecar]]:
    """`start_sidecar(engine, **settings)` serves a sidecar until the test ends."""
    stack: list[Any] = []

    def start(engine: Engine, *, migrate: bool = True, **overrides: Any) -> Sidecar:
        if migrate:
            ensure_schema(engine)
        settings = make_settings(**overrides)
        server = serve(create_app(settings, engine, db_deadline_s=3.0))
        url = server.__enter__()
        stack.append(server)
        client = httpx.Client(base_url=url, timeout=10)
        stack.append(client)
        return Sidecar(url, client, engine, settings)

    yield start
    for item in reversed(stack):
        if isinstance(item, httpx.Client):
            item.close()
        else:
            item.__exit__(None, None, None)


@pytest.fixture
def sidecar(db_engine: Engine, start_sidecar: SidecarFactory) -> Sidecar:
    """A sidecar on a migrated database (SQLite and PostgreSQL), no token, standalone."""
    return start_sidecar(db_engine)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, without persistence; stopped afterwards."""
    with run_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url
