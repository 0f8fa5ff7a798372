"""Orchestrator protocol: register once, then heartbeat; back off when the orchestrator is away.

Plain Python (httpx, SQLAlchemy Core), no Dagster: the `orchestrator_heartbeat` sensor in
`perf_pipelines.dagster_defs.sensors` is a thin wrapper that keeps `HeartbeatState` in its cursor.
"""

from perf_pipelines.orchestrator.client import Attempt, OrchestratorClient
from perf_pipelines.orchestrator.events import (
    OrchestratorStatus,
    insert_events,
    orchestrator_status,
)
from perf_pipelines.orchestrator.heartbeat import (
    AgentReport,
    HeartbeatConfig,
    HeartbeatState,
    TickOutcome,
    backoff_delay,
    heartbeat_payload,
    registration_payload,
    report_from_fleet,
    run_tick,
)

__all__ = [
    "AgentReport",
    "Attempt",
    "HeartbeatConfig",
    "HeartbeatState",
    "OrchestratorClient",
    "OrchestratorStatus",
    "TickOutcome",
    "backoff_delay",
    "heartbeat_payload",
    "insert_events",
    "orchestrator_status",
    "registration_payload",
    "report_from_fleet",
    "run_tick",
]
