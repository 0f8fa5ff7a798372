"""`GET /api/v1/`: what this service is and what it can advise on."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from perf_pipelines import __version__
from perf_pipelines.settings import CAPABILITIES
from perf_pipelines.sidecar.dependencies import SettingsDep

SERVICE = "perf_pipelines"

router = APIRouter(prefix="/api/v1")


@router.get("/")
async def service_info(settings: SettingsDep) -> dict[str, Any]:
    return {
        "service": SERVICE,
        "version": __version__,
        "agent_id": settings.agent_id,
        "agent_type": settings.agent_type,
        "capabilities": list(CAPABILITIES),
    }
