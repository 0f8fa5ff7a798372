"""Jobs and schedules of the optimization cycle, and how every schedule of the agent is built."""

from __future__ import annotations

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    # What ScheduleDefinition accepts as `job`; Dagster does not export the alias publicly.
    from dagster._core.definitions.target import ExecutableDefinition

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


def running_schedule(name: str, job: ExecutableDefinition, cron: str) -> ScheduleDefinition:
    """A schedule of the agent: running as soon as it is deployed (no one switches it on in the
    UI), its cron read in UTC whatever the host's time zone."""
    return ScheduleDefinition(
        name=name,
        job=job,
        cron_schedule=cron,
        default_status=DefaultScheduleStatus.RUNNING,
        execution_timezone="UTC",
    )


def optimization_cycle_schedule(cron: str) -> ScheduleDefinition:
    # Running by default: an agent deployed next to a fleet is expected to watch it at once.
    return running_schedule("optimization_cycle_schedule", optimization_cycle, cron)
