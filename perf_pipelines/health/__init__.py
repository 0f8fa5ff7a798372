"""Health checks of the agent itself: database, targets, Dagster, orchestrator, cache.

Plain Python, no Dagster, shared by the `health_check` job (`perf_pipelines.dagster_defs.health`,
which adds the run history from the Dagster instance and writes one `agent_health` row) and the
sidecar's `GET /api/v1/health/detailed` (which relays the newest row's `dagster` component).
"""

from perf_pipelines.health.checks import (
    COMPONENT_STATUSES,
    NOT_JUDGED,
    ComponentHealth,
    CycleRun,
    DatabaseState,
    RecordedHealth,
    check_cache,
    check_database,
    check_optimization_cycle,
    check_orchestrator,
    check_recorded_dagster,
    check_targets,
    database_components,
    describe_error,
    overall_status,
    read_database,
    write_health,
)
from perf_pipelines.health.cron import max_gap_seconds, stale_after_seconds

__all__ = [
    "COMPONENT_STATUSES",
    "NOT_JUDGED",
    "ComponentHealth",
    "CycleRun",
    "DatabaseState",
    "RecordedHealth",
    "check_cache",
    "check_database",
    "check_optimization_cycle",
    "check_orchestrator",
    "check_recorded_dagster",
    "check_targets",
    "database_components",
    "describe_error",
    "max_gap_seconds",
    "overall_status",
    "read_database",
    "stale_after_seconds",
    "write_health",
]
