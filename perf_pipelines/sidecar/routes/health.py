"""`GET /api/v1/health` (liveness) and `GET /api/v1/health/detailed` (readiness).

Liveness always answers 200 and never touches the database: its only dependency is the
agent's identity. The detailed health is 200 when healthy or degraded and 503 when unhealthy
(the database is down, unreadable or not at the code's schema head), always with the full JSON
body, so that a readiness probe can act on the code alone. Its checks are
`perf_pipelines.health`'s, as in the `health_check` job; `dagster` relays the newest
`agent_health` row (there is no Dagster instance here).
"""

from __future__ import annotations

from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import Engine

from perf_pipelines.health import (
    ComponentHealth,
    DatabaseState,
    check_cache,
    check_recorded_dagster,
    database_components,
    overall_status,
    read_database,
)
from perf_pipelines.settings import Settings
from perf_pipelines.sidecar.deadline import Deadline
from perf_pipelines.sidecar.dependencies import (
    DeadlineDep,
    EngineDep,
    HealthBasis,
    HealthBasisDep,
    IdentityDep,
    SettingsDep,
)
from perf_pipelines.sidecar.errors import Responses

CACHE_TIMEOUT_S = 1.0  # Redis PING connect and read timeouts (no retry)

UNHEALTHY: Responses = {
    503: {
        "description": "unhealthy: the database is down, unreadable or not at the "
        "schema head (same body as 200)",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}

router = APIRouter(prefix="/api/v1")


@router.get("/health")
async def liveness(identity: IdentityDep) -> dict[str, Any]:
    """Liveness: answers while the process serves HTTP; never touches the database."""
    return {"status": "healthy", **identity.as_json()}


@router.get("/health/detailed", responses=UNHEALTHY)
def detailed_health(
    settings: SettingsDep,
    engine: EngineDep,
    deadline: DeadlineDep,
    basis: HealthBasisDep,
    identity: IdentityDep,
) -> JSONResponse:
    """Every component; 503 when unhealthy (database not ok), else 200."""
    components = check_components(settings, engine, deadline, basis)
    status = overall_status(components)
    body = {
        "status": status,
        **identity.as_json(),
        "components": {name: c.as_json() for name, c in components.items()},
    }
    return JSONResponse(body, status_code=503 if status == "unhealthy" else 200)


def check_components(
    settings: Settings, engine: Engine, deadline: Deadline, basis: HealthBasis
) -> dict[str, ComponentHealth]:
    """The database is read once, within the deadline, while Redis is pinged in parallel."""
    cache = deadline.submit(lambda: check_cache(settings.redis_url, CACHE_TIMEOUT_S))
    try:
        state = deadline.call(lambda: read_database(engine, settings.agent_id))
    except TimeoutError as exc:
        state = DatabaseState(reachable=False, error=str(exc))
    now = datetime.now(UTC)
    components = database_components(
        state,
        basis.head_revision,
        now,
        # The targets file is the job's to read; here only whether PERF_TARGETS is set.
        targets_configured=0 if settings.perf_targets is None else None,
        orchestrator_configured=bool(settings.orchestrator_url),
        heartbeat_interval_s=settings.orchestrator_heartbeat_interval,
    )
    components["dagster"] = check_recorded_dagster(state, now, basis.stale_after_s)
    try:
        components["cache"] = cache.result(timeout=2 * CACHE_TIMEOUT_S + 1)
    except FutureTimeout:
        components["cache"] = ComponentHealth("down", "no answer from the health check")
    return components
