"""The sidecar's routes, one router per concern; `create_app` includes them in this order."""

from __future__ import annotations

from fastapi import APIRouter

from perf_pipelines.sidecar.routes import health, info, metrics, recommendations

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    info.router,
    metrics.router,
    recommendations.router,
)
