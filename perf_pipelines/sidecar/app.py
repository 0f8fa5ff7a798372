"""The sidecar HTTP service (DESIGN.md, "Sidecar HTTP"): liveness, health, metrics, and the
orchestrator's answers to recommendations.

`create_app` builds what the routes share (`dependencies.SidecarState`: settings, database
engine, deadline, metrics registry), keeps it on `app.state`, and includes the routers of
`routes/`, which receive those parts as FastAPI dependencies. Status codes are described in
each route module; any other database failure in a route is 503 `{"detail": "database
unavailable"}` (`errors`).

Database work runs in threads (SQLAlchemy Core, sync engine); health and metrics reads have a
deadline so that a database that hangs makes them report it instead of hanging too.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from perf_pipelines import __version__
from perf_pipelines.health import stale_after_seconds
from perf_pipelines.settings import Settings
from perf_pipelines.sidecar.deadline import Deadline
from perf_pipelines.sidecar.dependencies import HealthBasis, Identity, SidecarState
from perf_pipelines.sidecar.errors import install_error_handlers
from perf_pipelines.sidecar.limits import RequestLimits
from perf_pipelines.sidecar.metrics import FleetCollector, build_registry
from perf_pipelines.sidecar.request_log import RequestLog
from perf_pipelines.sidecar.routes import ROUTERS
from perf_pipelines.storage.summary import FleetSummary, fleet_summary

DB_DEADLINE_S = 4.0  # health and metrics give up on the database after this long


def create_app(
    settings: Settings, engine: Engine | None = None, db_deadline_s: float = DB_DEADLINE_S
) -> FastAPI:
    """The sidecar as an ASGI app. Without `engine`, one is made from DATABASE_URL (and
    disposed of when the app's lifespan ends)."""
    # Imported here: the database module is not needed to import this one (bench_sidecar.py).
    from perf_pipelines.storage.db import HEAD_REVISION, create_db_engine

    own_engine = engine is None
    db = engine if engine is not None else create_db_engine(settings.resolved_database_url)
    state = build_state(settings, db, Deadline(db_deadline_s), HEAD_REVISION)
    app = FastAPI(
        title="perf_pipelines sidecar",
        version=__version__,
        docs_url="/api/v1/docs",
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
        lifespan=_lifespan(state, dispose_engine=own_engine),
    )
    app.state.sidecar = state
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    # Inside the request log, so that refusals are logged like any other answer.
    app.add_middleware(
        RequestLimits,
        max_headers=settings.sidecar_max_headers,
        max_body_bytes=settings.sidecar_max_body_bytes,
        body_timeout_s=settings.sidecar_body_timeout_s,
    )
    app.add_middleware(RequestLog)
    return app


def build_state(
    settings: Settings, engine: Engine, deadline: Deadline, head_revision: str
) -> SidecarState:
    """What the routes share; nothing here touches the database."""
    return SidecarState(
        settings=settings,
        engine=engine,
        deadline=deadline,
        registry=_registry(settings, engine, deadline),
        identity=Identity(settings.agent_id, time.monotonic()),
        health=HealthBasis(head_revision, stale_after_seconds(settings.health_check_cron)),
    )


def _registry(settings: Settings, engine: Engine, deadline: Deadline) -> CollectorRegistry:
    """The /metrics registry: one `fleet_summary()` per scrape, within the deadline."""

    def read_summary() -> FleetSummary:
        def query() -> FleetSummary:
            with engine.connect() as connection:
                return fleet_summary(connection)

        return deadline.call(query)

    return build_registry(FleetCollector(read_summary, __version__, settings.agent_id))


def _lifespan(
    state: SidecarState, *, dispose_engine: bool
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """On shutdown: stop the deadline's pool, and dispose of an engine the app made itself."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        state.deadline.shutdown()
        if dispose_engine:
            state.engine.dispose()

    return lifespan
