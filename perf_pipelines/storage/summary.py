"""The agent's own state in a few numbers, read from its tables: what the heartbeat summary, the
sidecar's /metrics and the health check report. One query set, so they always agree."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, Table, and_, case, func, select

from perf_pipelines.logs import redact_and_clip
from perf_pipelines.storage.schema import (
    bottleneck_reports,
    metric_snapshots,
    orchestrator_events,
    tuning_recommendations,
)


@dataclass(frozen=True)
class FleetSummary:
    targets: int  # targets in the latest collection run
    targets_up: int
    scrape_errors: dict[str, int]  # error text (first 80 characters) -> targets, latest run
    last_collection_at: datetime | None
    last_analysis_at: datetime | None
    open_recommendations: dict[tuple[str, str], int]  # (capability, severity) -> count
    outcomes: dict[str, int]  # improved | no_change | regressed -> count of applied advice
    critical_bottlenecks: int  # in the latest analysis run
    orchestrator_failures: dict[str, int] = field(default_factory=dict)  # kind -> failed attempts

    @property
    def open_total(self) -> int:
        return sum(self.open_recommendations.values())

    @property
    def regressions(self) -> int:
        return self.outcomes.get("regressed", 0)


def _latest_run(connection: Connection, table: Table, time_column: str) -> str | None:
    row = connection.execute(
        select(table.c.run_id).order_by(table.c[time_column].desc()).limit(1)
    ).first()
    return None if row is None else str(row.run_id)


def fleet_summary(connection: Connection) -> FleetSummary:
    snapshots = metric_snapshots
    collection_run = _latest_run(connection, snapshots, "collected_at")
    targets = up = 0
    errors: dict[str, int] = {}
    if collection_run is not None:
        # A target is up in a run when any of its samples was up.
        per_target = connection.execute(
            select(snapshots.c.target, func.max(case((snapshots.c.up, 1), else_=0)))
            .where(snapshots.c.run_id == collection_run)
            .group_by(snapshots.c.target)
        ).all()
        targets = len(per_target)
        up = sum(1 for _, was_up in per_target if was_up)
        for error, count in connection.execute(
            select(snapshots.c.error, func.count(snapshots.c.target.distinct()))
            .where(and_(snapshots.c.run_id == collection_run, snapshots.c.up.is_(False)))
            .group_by(snapshots.c.error)
        ):
            key = redact_and_clip(error or "unknown", 80)
            errors[key] = errors.get(key, 0) + count
    analysis_run = _latest_run(connection, bottleneck_reports, "created_at")
    critical = 0
    if analysis_run is not None:
        critical = connection.execute(
            select(func.count()).where(
                bottleneck_reports.c.run_id == analysis_run,
                bottleneck_reports.c.severity == "critical",
            )
        ).scalar_one()
    recs = tuning_recommendations
    open_counts = {
        (capability, severity): count
        for capability, severity, count in connection.execute(
            select(recs.c.capability, recs.c.severity, func.count())
            .where(recs.c.status == "open")
            .group_by(recs.c.capability, recs.c.severity)
        )
    }
    outcomes = {
        outcome: count
        for outcome, count in connection.execute(
            select(recs.c.outcome, func.count())
            .where(recs.c.outcome.is_not(None))
            .group_by(recs.c.outcome)
        )
    }
    failures = {
        kind: count
        for kind, count in connection.execute(
            select(orchestrator_events.c.kind, func.count())
            .where(orchestrator_events.c.success.is_(False))
            .group_by(orchestrator_events.c.kind)
        )
    }
    return FleetSummary(
        targets=targets,
        targets_up=up,
        scrape_errors=errors,
        last_collection_at=connection.execute(select(func.max(snapshots.c.collected_at))).scalar(),
        last_analysis_at=connection.execute(
            select(func.max(bottleneck_reports.c.created_at))
        ).scalar(),
        open_recommendations=open_counts,
        outcomes=outcomes,
        critical_bottlenecks=int(critical),
        orchestrator_failures=failures,
    )
