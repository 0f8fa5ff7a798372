"""The `health_check` job: one `agent_health` asset materialization per run, on a schedule.

An asset rather than an op: the row it writes is a table the sidecar and the orchestrator read,
so it belongs in the asset graph with its materialization history (status over time, the
components table in the UI), like the project's other tables. Each component is checked by
plain functions in `perf_pipelines.health`; a component that is down is recorded, not raised.
Only a database that cannot be reached fails the run, because then no row can be written.
The sidecar has no Dagster instance: its `dagster` component is this row's, while the row is
fresh (docs/sidecar.md).

No `from __future__ import annotations` here: Dagster reads the `context` annotation at
definition time.
"""

from datetime import UTC, datetime

from dagster import (
    AssetExecutionContext,
    AssetSelection,
    ConfigurableResource,
    DagsterRunStatus,
    Failure,
    MaterializeResult,
    MetadataValue,
    RunRecord,
    RunsFilter,
    ScheduleDefinition,
    define_asset_job,
    in_process_executor,
)
from sqlalchemy.engine import make_url

from perf_pipelines.dagster_defs.analysis import bottleneck_reports, tuning_recommendations
from perf_pipelines.dagster_defs.catalog import orchestrator_events_spec, row_count, table_asset
from perf_pipelines.dagster_defs.jobs import running_schedule
from perf_pipelines.dagster_defs.outcomes import recommendation_outcomes
from perf_pipelines.dagster_defs.resources import AgentResource, DatabaseResource, TargetsResource
from perf_pipelines.dagster_defs.snapshots import metric_snapshots
from perf_pipelines.formatting import markdown_table
from perf_pipelines.health import (
    ComponentHealth,
    CycleRun,
    check_cache,
    check_optimization_cycle,
    database_components,
    describe_error,
    read_database,
    stale_after_seconds,
    write_health,
)
from perf_pipelines.logs import redact_and_clip
from perf_pipelines.storage.db import HEAD_REVISION
from perf_pipelines.storage.schema import agent_health as agent_health_table
from perf_pipelines.targets import TargetsError

OPTIMIZATION_CYCLE_JOB = "optimization_cycle"
_FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]


class HealthResource(ConfigurableResource["HealthResource"]):
    """What the health check compares against: the optimization cycle's cron (a cycle is stale
    after two of its longest gaps plus two minutes) and the Redis PING timeout."""

    optimization_cycle_cron: str = "*/5 * * * *"
    cache_timeout_s: float = 2.0

    def cycle_stale_after_s(self) -> float:
        return stale_after_seconds(self.optimization_cycle_cron)


def _cycle_run(record: RunRecord) -> CycleRun:
    finished = record.end_time or record.update_timestamp.timestamp()
    return CycleRun(
        run_id=record.dagster_run.run_id,
        status=record.dagster_run.status.value,
        finished_at=datetime.fromtimestamp(finished, UTC),
    )


def _dagster_component(
    context: AssetExecutionContext, now: datetime, stale_after_s: float
) -> ComponentHealth:
    try:
        success = context.instance.get_run_records(
            RunsFilter(job_name=OPTIMIZATION_CYCLE_JOB, statuses=[DagsterRunStatus.SUCCESS]),
            limit=1,
        )
        finished = context.instance.get_run_records(
            RunsFilter(job_name=OPTIMIZATION_CYCLE_JOB, statuses=_FINISHED), limit=1
        )
    except Exception as exc:
        return ComponentHealth("down", f"Dagster run storage unreadable: {type(exc).__name__}")
    return check_optimization_cycle(
        _cycle_run(success[0]) if success else None,
        _cycle_run(finished[0]) if finished else None,
        now,
        stale_after_s,
    )


def _components_table(components: dict[str, ComponentHealth]) -> str:
    rows = [
        [
            name,
            c.status if c.status in ("ok", "not_configured") else f"**{c.status}**",
            "–" if c.latency_ms is None else f"{c.latency_ms:.0f}",
            c.detail,
        ]
        for name, c in components.items()
    ]
    return markdown_table(["component", "status", "ms", "detail"], rows)


# The orchestrator link's table, written by the heartbeat sensor from a summary of the cycle's
# tables, read back by agent_health: declared so that lineage shows both sides.
orchestrator_events = orchestrator_events_spec(
    reads=[
        metric_snapshots.key,
        bottleneck_reports.key,
        tuning_recommendations.key,
        recommendation_outcomes.key,
    ]
)


@table_asset(
    agent_health_table,
    group_name="health",
    kinds={"python", "sql"},
    # What the check reads: the cycle's tables (latest collection, open advice, regressions)
    # and the orchestrator link's attempts. The sidecar and the orchestrator read its rows.
    deps=[
        metric_snapshots,
        bottleneck_reports,
        tuning_recommendations,
        recommendation_outcomes,
        orchestrator_events,
    ],
    description=(
        "Checks the agent's database (reachable, migrations at head), targets (latest collection "
        "run), Dagster (age of the last successful optimization_cycle), orchestrator (latest "
        "heartbeat events) and cache (Redis PING) and appends one row to `agent_health`, which "
        "the sidecar serves to the orchestrator."
    ),
)
def agent_health(
    context: AssetExecutionContext,
    database: DatabaseResource,
    agent: AgentResource,
    targets: TargetsResource,
    health: HealthResource,
) -> MaterializeResult[None]:
    now = datetime.now(UTC)
    try:
        engine = database.get_engine()
    except Exception as exc:
        raise Failure(
            description=(
                "database unreachable or its migrations failed, so no agent_health row can be "
                f"written: {describe_error(exc, make_url(database.url).password)}"
            )
        ) from None
    configured: int | None = None
    config_error: str | None = None
    try:
        configured = len(targets.load())
    except TargetsError as exc:
        config_error = redact_and_clip(str(exc), 300)
    components = database_components(
        read_database(engine, agent.agent_id),
        HEAD_REVISION,
        now,
        targets_configured=configured,
        targets_error=config_error,
        orchestrator_configured=bool(agent.orchestrator_url),
        heartbeat_interval_s=agent.orchestrator_heartbeat_interval,
    )
    if components["database"].status == "down":
        raise Failure(
            description=f"database {components['database'].detail}; no agent_health row written",
            metadata={"components": MetadataValue.md(_components_table(components))},
        )
    components["dagster"] = _dagster_component(context, now, health.cycle_stale_after_s())
    components["cache"] = check_cache(agent.redis_url, health.cache_timeout_s)

    with engine.begin() as connection:
        row = write_health(
            connection,
            checked_at=now,
            run_id=context.run.run_id,
            agent_id=agent.agent_id,
            components=components,
        )
        size = row_count(connection, agent_health_table)
    status = row["status"]
    troubled = {n: c for n, c in components.items() if c.status in ("degraded", "down")}
    for name, component in troubled.items():
        context.log.warning(f"{name} {component.status}: {component.detail}")
    context.log.info(f"agent {agent.agent_id} is {status}")
    return MaterializeResult(
        metadata={
            "status": MetadataValue.text(status),
            "components_not_ok": MetadataValue.int(len(troubled)),
            "components": MetadataValue.md(_components_table(components)),
            "checked_at": MetadataValue.text(now.isoformat()),
            **size,
        }
    )


health_check = define_asset_job(
    "health_check",
    selection=AssetSelection.assets(agent_health),
    description="Checks database, targets, Dagster, orchestrator and cache → table agent_health.",
    tags={"perf_pipelines/kind": "health_check"},
    # One short step: a separate process would cost more than the checks themselves.
    executor_def=in_process_executor,
)


def health_check_schedule(cron: str) -> ScheduleDefinition:
    # Running by default, like the optimization cycle: health rows are expected from the start.
    return running_schedule("health_check_schedule", health_check, cron)
