"""The `retention` job: keeps the agent's tables and Dagster's run history bounded
(RETENTION_DAYS), on a daily schedule.

An op rather than an asset: it maintains tables that assets own and produces no data itself.
No `from __future__ import annotations`: Dagster reads the `context` annotation at definition time.
"""

from datetime import UTC, datetime, timedelta
from pathlib import Path

from dagster import (
    ConfigurableResource,
    DagsterInstance,
    DagsterRunStatus,
    MetadataValue,
    OpExecutionContext,
    Output,
    RunsFilter,
    ScheduleDefinition,
    in_process_executor,
    job,
    op,
)

# Private Dagster modules, for the one cleanup delete_run omits (_delete_check_executions).
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage

from perf_pipelines.dagster_defs.jobs import running_schedule
from perf_pipelines.dagster_defs.resources import DatabaseResource
from perf_pipelines.storage.retention import delete_older_than

# Runs in these states are over; a queued or running one is never deleted (nor its event log).
FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
# Runs deleted per query: each delete_run is one transaction on Dagster's storage.
RUN_BATCH = 100


class RetentionResource(ConfigurableResource["RetentionResource"]):
    """How long snapshots, reports, health rows, orchestrator events and Dagster's finished runs
    (with their event logs) are kept."""

    days: float = 7.0


def _delete_run_files(instance: DagsterInstance, run_id: str) -> None:
    """What `delete_run` leaves on disk: the run's captured stdout/stderr (compute logs, under
    DAGSTER_HOME/storage with the default manager) and, with the default SQLite event log
    storage, the run's own database file, emptied but never removed (~130-230 KiB a run: the
    instance grew by ~100 MiB a day with the default schedules although every row was gone)."""
    instance.compute_log_manager.delete_logs(prefix=[run_id])
    # SqliteEventLogStorage keeps one file per run; its class is not public API, so it is
    # recognised by the method that names the file. PostgreSQL storage has no such file.
    path_for_shard = getattr(instance.event_log_storage, "path_for_shard", None)
    if path_for_shard is not None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path_for_shard(run_id)}{suffix}").unlink(missing_ok=True)


def _delete_check_executions(instance: DagsterInstance, run_ids: list[str]) -> None:
    """What `delete_run` leaves in the event log's index: the runs' asset check executions (one
    row per check per cycle, ~1,440 a day with the default schedule, each with its evaluation
    event), measured growing by as many rows as checks the deleted runs had. Dagster has no public
    call for it; every SQL event log storage (SQLite, PostgreSQL) has this table and
    `index_transaction()`, and tests/dagster_defs/test_instance_retention.py would see a change."""
    storage = instance.event_log_storage
    if not run_ids or not isinstance(storage, SqlEventLogStorage):
        return
    table = AssetCheckExecutionsTable
    with storage.index_transaction() as connection:
        connection.execute(table.delete().where(table.c.run_id.in_(run_ids)))


def delete_finished_runs(instance: DagsterInstance, cutoff: datetime) -> int:
    """Delete the finished runs created before `cutoff`, each with its event log and its files
    on disk (Dagster keeps all forever otherwise: with the default schedules ~580 runs a day),
    in batches of RUN_BATCH.
    Asset materializations go with their run's event log; the agent's own tables keep the data.
    """
    deleted = 0
    while True:
        records = instance.get_run_records(
            filters=RunsFilter(statuses=FINISHED, created_before=cutoff), limit=RUN_BATCH
        )
        for record in records:
            instance.delete_run(record.dagster_run.run_id)
            _delete_run_files(instance, record.dagster_run.run_id)
        _delete_check_executions(instance, [record.dagster_run.run_id for record in records])
        deleted += len(records)
        if len(records) < RUN_BATCH:
            return deleted


@op(
    description="Deletes rows and finished Dagster runs older than RETENTION_DAYS in batches; "
    "recommendations are kept."
)
def delete_expired_rows(
    context: OpExecutionContext, database: DatabaseResource, retention: RetentionResource
) -> Output[None]:
    cutoff = datetime.now(UTC) - timedelta(days=retention.days)
    result = delete_older_than(database.get_engine(), cutoff)
    runs = delete_finished_runs(context.instance, cutoff)
    context.log.info(
        f"deleted rows older than {cutoff:%Y-%m-%d %H:%M} UTC: {result.deleted}, "
        f"and {runs} finished Dagster runs with their event logs"
    )
    return Output(
        None,
        metadata={
            "cutoff": MetadataValue.text(cutoff.isoformat()),
            "dagster_runs": MetadataValue.int(runs),
            **{table: MetadataValue.int(count) for table, count in result.deleted.items()},
        },
    )


@job(
    name="retention",
    description="Keeps the agent's tables and Dagster's run history bounded: deletes what is "
    "older than RETENTION_DAYS.",
    executor_def=in_process_executor,
)
def retention() -> None:
    delete_expired_rows()


def retention_schedule(cron: str) -> ScheduleDefinition:
    # Running by default: unbounded growth is a failure that shows up only weeks later.
    return running_schedule("retention_schedule", retention, cron)
