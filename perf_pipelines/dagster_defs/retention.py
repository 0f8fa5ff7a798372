"""The `retention` job: keeps the agent's tables bounded (RETENTION_DAYS), on a daily schedule.

An op rather than an asset: it maintains tables that assets own and produces no data itself.
No `from __future__ import annotations`: Dagster reads the `context` annotation at definition time.
"""

from datetime import UTC, datetime, timedelta

from dagster import (
    ConfigurableResource,
    MetadataValue,
    OpExecutionContext,
    Output,
    ScheduleDefinition,
    in_process_executor,
    job,
    op,
)

from perf_pipelines.dagster_defs.jobs import running_schedule
from perf_pipelines.dagster_defs.resources import DatabaseResource
from perf_pipelines.storage.retention import delete_older_than


class RetentionResource(ConfigurableResource["RetentionResource"]):
    """How long snapshots, reports, health rows and orchestrator events are kept."""

    days: float = 7.0


@op(description="Deletes rows older than RETENTION_DAYS in batches; recommendations are kept.")
def delete_expired_rows(
    context: OpExecutionContext, database: DatabaseResource, retention: RetentionResource
) -> Output[None]:
    cutoff = datetime.now(UTC) - timedelta(days=retention.days)
    result = delete_older_than(database.get_engine(), cutoff)
    context.log.info(f"deleted rows older than {cutoff:%Y-%m-%d %H:%M} UTC: {result.deleted}")
    return Output(
        None,
        metadata={
            "cutoff": MetadataValue.text(cutoff.isoformat()),
            **{table: MetadataValue.int(count) for table, count in result.deleted.items()},
        },
    )


@job(
    name="retention",
    description="Keeps the agent's tables bounded: deletes what is older than RETENTION_DAYS.",
    executor_def=in_process_executor,
)
def retention() -> None:
    delete_expired_rows()


def retention_schedule(cron: str) -> ScheduleDefinition:
    # Running by default: unbounded growth is a failure that shows up only weeks later.
    return running_schedule("retention_schedule", retention, cron)
