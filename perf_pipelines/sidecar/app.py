"""The sidecar HTTP service (DESIGN.md, "Sidecar HTTP"): liveness, health, metrics, and the
orchestrator's answers to recommendations.

Status codes:

- `GET /api/v1/health` always 200 and never touches the database (liveness).
- `GET /api/v1/health/detailed` 200 when healthy or degraded, 503 when unhealthy (the database
  is down, unreadable or not at the code's schema head), always with the full JSON body: a
  readiness probe can act on the code alone. The checks are `perf_pipelines.health`'s, as in
  the `health_check` job; `dagster` relays the newest `agent_health` row (no Dagster instance
  here).
- `GET /metrics` always 200; `perf_agent_database_up 0` when the database cannot be read.
- `POST /api/v1/recommendations/{id}/status`: 401 without a bearer token and 403 with a wrong one
  (when `ORCHESTRATOR_TOKEN` is set; checked before the body is read), 422 bad body, 404 unknown
  id, 409 illegal transition, 200 with the row.
- Any other database failure in a route: 503 `{"detail": "database unavailable"}`.

Database work runs in threads (SQLAlchemy Core, sync engine); health and metrics reads have a
deadline so that a database that hangs makes them report it instead of hanging too.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar, get_args

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from perf_pipelines import __version__
from perf_pipelines.health import (
    ComponentHealth,
    DatabaseState,
    check_cache,
    check_recorded_dagster,
    database_components,
    describe_error,
    overall_status,
    read_database,
    stale_after_seconds,
)
from perf_pipelines.settings import CAPABILITIES, Settings
from perf_pipelines.sidecar.metrics import FleetCollector, build_registry
from perf_pipelines.storage.recommendation_status import (
    IllegalTransition,
    RecommendationNotFound,
    list_recommendations,
    set_status,
)
from perf_pipelines.storage.schema import RECOMMENDATION_STATUSES
from perf_pipelines.storage.summary import FleetSummary, fleet_summary

log = logging.getLogger(__name__)

SERVICE = "perf_pipelines"
DB_DEADLINE_S = 4.0  # health and metrics give up on the database after this long
CACHE_TIMEOUT_S = 1.0  # Redis PING connect and read timeouts (no retry)
MAX_LIST_LIMIT = 1000
MAX_BODY_BYTES = 64 * 1024
_QUIET_PATHS = frozenset({"/api/v1/health", "/api/v1/health/detailed", "/metrics"})

T = TypeVar("T")
RecommendationStatus = Literal["open", "superseded", "applied", "rejected", "expired"]
assert set(get_args(RecommendationStatus)) == set(RECOMMENDATION_STATUSES)


class StatusUpdate(BaseModel):
    """The orchestrator's answer to a recommendation."""

    model_config = ConfigDict(extra="forbid")
    status: Literal["applied", "rejected"]
    note: str | None = Field(None, max_length=2000)


class _Deadline:
    """Runs blocking database work on a small pool and waits at most `timeout_s` for it.

    Work that overruns keeps its thread until the database answers or its own timeouts fire; the
    pool is bounded, so a hung database cannot pile up threads. The pool is made on first use
    and again after a shutdown: an app whose lifespan ends and starts again keeps working.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sidecar-db")
            return self._pool

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        return self._executor().submit(fn)

    def call(self, fn: Callable[[], T]) -> T:
        future = self._executor().submit(fn)
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(f"no answer within {self.timeout_s:g} s") from None

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


class _RequestLog:
    """Logs method, path, status and duration of each request: never headers or query."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            path = scope.get("path", "")
            quiet = path in _QUIET_PATHS and status < 500
            log.log(
                logging.DEBUG if quiet else logging.INFO,
                "%s %s %d",
                scope.get("method"),
                path,
                status,
                extra={
                    "http_method": scope.get("method"),
                    "http_path": path,
                    "http_status": status,
                    "duration_ms": round(1000 * (time.perf_counter() - started), 2),
                    "client": (scope.get("client") or ("-",))[0],
                },
            )


def _authorize(request: Request, token: str | None) -> None:
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise HTTPException(
            401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(403, "invalid token")


def _error(description: str) -> dict[str, Any]:
    """An error response for the OpenAPI schema: `{"detail": "..."}`."""
    schema = {"type": "object", "properties": {"detail": {"type": "string"}}}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_DATABASE_DOWN = {503: _error("database unavailable")}


async def _read_capped(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes before more of it is read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, "request body too large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, "request body too large")
    return bytes(body)


def create_app(
    settings: Settings, engine: Engine | None = None, db_deadline_s: float = DB_DEADLINE_S
) -> FastAPI:
    """The sidecar as an ASGI app. Without `engine`, one is made from DATABASE_URL."""
    from perf_pipelines.storage.db import HEAD_REVISION, create_db_engine

    own_engine = engine is None
    db = engine if engine is not None else create_db_engine(settings.resolved_database_url)
    health_stale_after_s = stale_after_seconds(settings.health_check_cron)
    token = settings.token
    started_monotonic = time.monotonic()
    deadline = _Deadline(db_deadline_s)

    def read_summary() -> FleetSummary:
        def query() -> FleetSummary:
            with db.connect() as connection:
                return fleet_summary(connection)

        return deadline.call(query)

    registry = build_registry(FleetCollector(read_summary, __version__, settings.agent_id))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        deadline.shutdown()
        if own_engine:
            db.dispose()

    app = FastAPI(
        title="perf_pipelines sidecar",
        version=__version__,
        docs_url="/api/v1/docs",
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
        lifespan=lifespan,
    )
    app.state.engine = db
    app.state.settings = settings

    def identity() -> dict[str, Any]:
        return {
            "timestamp": datetime.now(UTC).isoformat(),
            "version": __version__,
            "agent_id": settings.agent_id,
            "uptime_seconds": round(time.monotonic() - started_monotonic, 3),
        }

    @app.exception_handler(SQLAlchemyError)
    async def _database_error(_request: Request, exc: SQLAlchemyError) -> JSONResponse:
        log.warning("database error: %s", describe_error(exc))
        return JSONResponse({"detail": "database unavailable"}, status_code=503)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # Logged by the server with its traceback (secrets redacted); the client gets no trace.
        return JSONResponse({"detail": "internal error"}, status_code=500)

    @app.get("/api/v1/health")
    async def liveness() -> dict[str, Any]:
        """Liveness: answers while the process serves HTTP; never touches the database."""
        return {"status": "healthy", **identity()}

    @app.get(
        "/api/v1/health/detailed",
        responses={
            503: {
                "description": "unhealthy: the database is down, unreadable or not at the "
                "schema head (same body as 200)",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    )
    def detailed_health() -> JSONResponse:
        """Every component; 503 when unhealthy (database not ok), else 200."""
        cache = deadline.submit(lambda: check_cache(settings.redis_url, CACHE_TIMEOUT_S))
        try:
            state = deadline.call(lambda: read_database(db, settings.agent_id))
        except TimeoutError as exc:
            state = DatabaseState(reachable=False, error=str(exc))
        now = datetime.now(UTC)
        components = database_components(
            state,
            HEAD_REVISION,
            now,
            # The targets file is the job's to read; here only whether PERF_TARGETS is set.
            targets_configured=0 if settings.perf_targets is None else None,
            orchestrator_configured=bool(settings.orchestrator_url),
            heartbeat_interval_s=settings.orchestrator_heartbeat_interval,
        )
        components["dagster"] = check_recorded_dagster(state, now, health_stale_after_s)
        try:
            components["cache"] = cache.result(timeout=2 * CACHE_TIMEOUT_S + 1)
        except FutureTimeout:
            components["cache"] = ComponentHealth("down", "no answer from the health check")
        status = overall_status(components)
        body = {
            "status": status,
            **identity(),
            "components": {name: c.as_json() for name, c in components.items()},
        }
        return JSONResponse(body, status_code=503 if status == "unhealthy" else 200)

    @app.get("/api/v1/")
    async def service_info() -> dict[str, Any]:
        return {
            "service": SERVICE,
            "version": __version__,
            "agent_id": settings.agent_id,
            "agent_type": settings.agent_type,
            "capabilities": list(CAPABILITIES),
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/v1/recommendations", responses=_DATABASE_DOWN)
    def recommendations(
        status: RecommendationStatus = "open",
        target: str | None = Query(None, max_length=128),
        limit: int = Query(100, ge=1, le=MAX_LIST_LIMIT),
    ) -> dict[str, Any]:
        """`open`: the newest open advice per (target, parameter); else the table by status."""
        with db.connect() as connection:
            rows = list_recommendations(connection, status, target, limit)
        return {"status": status, "count": len(rows), "recommendations": rows}

    @app.post(
        "/api/v1/recommendations/{rec_id}/status",
        response_model=None,
        responses={
            401: _error("ORCHESTRATOR_TOKEN is set and no bearer token was sent"),
            403: _error("wrong bearer token"),
            404: _error("unknown recommendation id"),
            409: _error("the recommendation is no longer open"),
            413: _error("request body over 64 KiB"),
            **_DATABASE_DOWN,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": StatusUpdate.model_json_schema()}},
            }
        },
    )
    async def answer_recommendation(rec_id: str, request: Request) -> dict[str, Any] | JSONResponse:
        """The orchestrator applied or rejected a recommendation."""
        _authorize(request, token)  # before the body is read
        body = await _read_capped(request, MAX_BODY_BYTES)
        try:
            answer = StatusUpdate.model_validate_json(body)
        except ValidationError as exc:
            # Without the input: bytes that are not UTF-8 cannot be encoded into the 422 body
            # (a 500 before), and a body is not echoed back (it may quote a token).
            errors = exc.errors(include_url=False, include_input=False)
            raise RequestValidationError(errors) from None

        def apply() -> dict[str, Any]:
            with db.begin() as connection:
                return set_status(
                    connection, rec_id, answer.status, datetime.now(UTC), note=answer.note
                )

        try:
            return await run_in_threadpool(apply)
        except RecommendationNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except IllegalTransition as exc:
            return JSONResponse(
                {
                    "detail": str(exc),
                    "current_status": exc.current,
                    "requested_status": exc.requested,
                },
                status_code=409,
            )

    app.add_middleware(_RequestLog)  # type: ignore[arg-type]
    return app
