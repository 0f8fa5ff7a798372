"""Jobs and schedules of the optimization cycle."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    ScheduleDefinition,
    define_asset_job,
    in_process_executor,
)

from perf_pipelines.dagster_defs.analysis import bottleneck_reports, tuning_recommendations
from perf_pipelines.dagster_defs.outcomes import recommendation_outcomes
from perf_pipelines.dagster_defs.snapshots import metric_snapshots

optimization_cycle = define_asset_job(
    "optimization_cycle",
    selection=AssetSelection.assets(
        metric_snapshots, bottleneck_reports, tuning_recommendations, recommendation_outcomes
    ),
    description=(
        "Scrape the fleet, detect bottlenecks, write tuning recommendations, and judge the "
        "outcome of advice the orchestrator applied."
    ),
    tags={"perf_pipelines/kind": "optimization_cycle"},
    # Every step is short and sequential (scrape, analyse, recommend); a process per step cost
    # ~2.5 s each on these machines for no parallelism gained.
    executor_def=in_process_executor,
)


def optimization_cycle_schedule(cron: str) -> ScheduleDefinition:
    # Running by default: an agent deployed next to a fleet is expected to watch it at once.
    return ScheduleDefinition(
        name="optimization_cycle_schedule",
        job=optimization_cycle,
        cron_schedule=cron,
        default_status=DefaultScheduleStatus.RUNNING,
        execution_timezone="UTC",
    )
