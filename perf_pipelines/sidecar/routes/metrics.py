"""`GET /metrics`: the agent's own figures in the Prometheus text format, always 200.

The registry (`perf_pipelines.sidecar.metrics`) is built once by `create_app`; its collector
reads the database within the deadline and reports `perf_agent_database_up 0` when it cannot.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from perf_pipelines.sidecar.dependencies import RegistryDep

router = APIRouter()


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(registry: RegistryDep) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
