"""What the routes need, as FastAPI dependencies.

`create_app` builds one `SidecarState` and keeps it on `app.state`; the dependencies below hand
its parts to the routes (`settings: SettingsDep`, `engine: EngineDep`, ...), so that a route
declares what it reads and no route closes over the factory's locals. The getters are `async`:
FastAPI runs sync dependencies on its thread pool, which liveness should not wait for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from perf_pipelines import __version__
from perf_pipelines.settings import Settings
from perf_pipelines.sidecar.deadline import Deadline


@dataclass(frozen=True)
class Identity:
    """Who answers, for the health bodies: version, agent id, uptime."""

    agent_id: str
    started_monotonic: float

    def as_json(self) -> dict[str, Any]:
        return {
            "timestamp": datetime.now(UTC).isoformat(),
            "version": __version__,
            "agent_id": self.agent_id,
            "uptime_seconds": round(time.monotonic() - self.started_monotonic, 3),
        }


@dataclass(frozen=True)
class HealthBasis:
    """What the detailed health compares the database with: the code's schema head, and the
    age after which the newest `agent_health` row no longer counts (from HEALTH_CHECK_CRON)."""

    head_revision: str
    stale_after_s: float


@dataclass(frozen=True)
class SidecarState:
    """Everything the routes share, made once by `create_app`."""

    settings: Settings
    engine: Engine
    deadline: Deadline
    registry: CollectorRegistry
    identity: Identity
    health: HealthBasis


async def get_state(request: Request) -> SidecarState:
    state: SidecarState = request.app.state.sidecar
    return state


StateDep = Annotated[SidecarState, Depends(get_state)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


async def get_engine(state: StateDep) -> Engine:
    return state.engine


async def get_deadline(state: StateDep) -> Deadline:
    return state.deadline


async def get_registry(state: StateDep) -> CollectorRegistry:
    return state.registry


async def get_identity(state: StateDep) -> Identity:
    return state.identity


async def get_health_basis(state: StateDep) -> HealthBasis:
    return state.health


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
DeadlineDep = Annotated[Deadline, Depends(get_deadline)]
RegistryDep = Annotated[CollectorRegistry, Depends(get_registry)]
IdentityDep = Annotated[Identity, Depends(get_identity)]
HealthBasisDep = Annotated[HealthBasis, Depends(get_health_basis)]
