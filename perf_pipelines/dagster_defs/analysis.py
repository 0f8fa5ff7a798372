"""The `bottleneck_reports` and `tuning_recommendations` assets and their checks.

No `from __future__ import annotations`: Dagster reads the `context` annotation at definition time.
"""

from collections import Counter
from datetime import UTC, datetime, timedelta

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset_check,
)
from sqlalchemy import Connection, func, select

from perf_pipelines.analysis.detection import detect
from perf_pipelines.analysis.window import window_stats
from perf_pipelines.dagster_defs.catalog import row_count
from perf_pipelines.dagster_defs.cycle_asset import (
    BATCH_ID,
    batch_metadata,
    batch_of,
    cycle_asset,
    log_summary,
)
from perf_pipelines.dagster_defs.resources import (
    AnalysisResource,
    DatabaseResource,
    TargetsResource,
)
from perf_pipelines.dagster_defs.snapshots import metric_snapshots
from perf_pipelines.findings import BottleneckReport
from perf_pipelines.formatting import markdown_table
from perf_pipelines.recommendations.rules import Advice, advise
from perf_pipelines.storage.reports import upsert_recommendations, write_reports
from perf_pipelines.storage.retention import expire_stale_recommendations
from perf_pipelines.storage.schema import bottleneck_reports as reports_table
from perf_pipelines.storage.schema import metric_snapshots as snapshots_table
from perf_pipelines.storage.schema import tuning_recommendations as recommendations_table
from perf_pipelines.storage.snapshots import load_snapshots

_SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
_PREVIEW = 20


@cycle_asset(
    deps=[metric_snapshots],
    description=(
        "Bottlenecks per target and model over the ANALYSIS_WINDOW_MINUTES of snapshots that end "
        "with the latest `metric_snapshots` batch: KV-cache pressure, preemption, queue "
        "saturation, TTFT/ITL SLO breaches, under-utilisation and targets down, each with its "
        "evidence."
    ),
    table=reports_table,
)
def bottleneck_reports(
    context: AssetExecutionContext,
    database: DatabaseResource,
    targets: TargetsResource,
    analysis: AnalysisResource,
) -> MaterializeResult[None]:
    target_map = targets.by_name()
    snapshots_batch = batch_of(context, metric_snapshots.key)
    engine = database.get_engine()
    with engine.connect() as connection:
        # The window ends with the batch, not with the clock: re-materialized later (alone, or
        # re-executed from failure) it covers the same snapshots as in the cycle that made them.
        end = connection.execute(
            select(func.max(snapshots_table.c.collected_at)).where(
                snapshots_table.c.run_id == snapshots_batch
            )
        ).scalar()
        if end is None:
            raise Failure(
                description=(
                    f"the latest metric_snapshots batch ({snapshots_batch}) has no rows in the "
                    "database (deleted by retention, or another database): materialize "
                    "metric_snapshots again"
                )
            )
        start = end - timedelta(minutes=analysis.window_minutes)
        frame = load_snapshots(
            connection, start, end, targets=list(target_map), decode_histograms=False
        )
    stats = window_stats(frame, target_map, start, end)
    detection = detect(stats, target_map, analysis.detection_config())
    with engine.begin() as connection:
        write_reports(connection, context.run.run_id, detection.reports, datetime.now(UTC))
        size = row_count(connection, reports_table)
    ordered = sorted(detection.reports, key=lambda r: (_SEVERITY_ORDER[r.severity], -r.score))
    severities = Counter(r.severity for r in detection.reports)
    problems = [
        f"{r.target}: {r.kind} ({r.severity}) {r.summary}" for r in ordered if r.severity != "info"
    ]
    log_summary(
        context,
        f"{len(detection.reports)} report(s): {severities['critical']} critical, "
        f"{severities['warning']} warning, {severities['info']} info",
        problems,
        warn=bool(problems),
    )
    return MaterializeResult(
        metadata={
            "reports": MetadataValue.int(len(detection.reports)),
            "critical": MetadataValue.int(severities["critical"]),
            "warning": MetadataValue.int(severities["warning"]),
            "targets_analysed": MetadataValue.int(len({s.target for s in stats})),
            "window_minutes": MetadataValue.float(analysis.window_minutes),
            "sustained": MetadataValue.text(
                f"≥ {analysis.min_sustained_s:g} s and ≥ {analysis.sustained_share:.0%} of the "
                "observed time"
            ),
            "bursts": MetadataValue.int(
                sum(1 for r in detection.reports if r.evidence.get("sustained") is False)
            ),
            "kinds": MetadataValue.json(dict(Counter(r.kind for r in detection.reports))),
            "top_bottlenecks": MetadataValue.md(
                markdown_table(
                    ["target", "kind", "severity", "score", "summary"],
                    [
                        [r.target, r.kind, r.severity, f"{r.score:.2f}", r.summary]
                        for r in ordered[:_PREVIEW]
                    ],
                )
            ),
            "not_judged": MetadataValue.md(
                markdown_table(
                    ["target", "what could not be judged"],
                    [
                        [t, "; ".join(reasons)]
                        for t, reasons in sorted(detection.not_judged.items())
                    ][:_PREVIEW],
                )
            ),
            "snapshots_batch_id": MetadataValue.text(snapshots_batch),
            "window_end": MetadataValue.text(end.isoformat()),
            **batch_metadata(context),
            **size,
        }
    )


def _reports_of_batch(connection: Connection, batch: str) -> list[BottleneckReport]:
    rows = connection.execute(select(reports_table).where(reports_table.c.run_id == batch)).all()
    return [
        BottleneckReport(
            r.target,
            r.engine,
            r.model,
            r.window_start,
            r.window_end,
            r.kind,
            r.severity,
            r.score,
            r.evidence,
            r.summary,
        )
        for r in rows
    ]


@cycle_asset(
    deps=[bottleneck_reports],
    description=(
        "KV-cache, quantization and batch-size advice in each engine's own flags, with rationale, "
        "evidence, expected effect and confidence, from the latest `bottleneck_reports` batch; "
        "supersedes older open advice. An orchestrator reads it (SQL, or the sidecar) and "
        "answers applied or rejected through the sidecar."
    ),
    table=recommendations_table,
)
def tuning_recommendations(
    context: AssetExecutionContext,
    database: DatabaseResource,
    targets: TargetsResource,
    analysis: AnalysisResource,
) -> MaterializeResult[None]:
    target_map = targets.by_name()
    engine = database.get_engine()
    reports_batch = batch_of(context, bottleneck_reports.key)
    with engine.connect() as connection:
        reports = _reports_of_batch(connection, reports_batch)
        if reports:
            start, end = reports[0].window_start, reports[0].window_end
            frame = load_snapshots(
                connection, start, end, targets=list(target_map), decode_histograms=False
            )
        else:
            frame = None
    advice = Advice()
    if reports and frame is not None:
        stats = window_stats(frame, target_map, reports[0].window_start, reports[0].window_end)
        advice = advise(stats, reports, target_map)
    recommendations = advice.recommendations
    now = datetime.now(UTC)
    with engine.begin() as connection:
        report_ids = {
            (r.target, r.model, r.kind): r.id
            for r in connection.execute(
                select(
                    reports_table.c.id,
                    reports_table.c.target,
                    reports_table.c.model,
                    reports_table.c.kind,
                ).where(reports_table.c.run_id == reports_batch)
            ).all()
        }
        # Rows carry the run that gave the advice last; their ids are deterministic, so giving
        # the same advice again (a retry, a re-execution) refreshes rows instead of adding them.
        result = upsert_recommendations(
            connection, context.run.run_id, recommendations, now, report_ids
        )
        expired = expire_stale_recommendations(
            connection, now - timedelta(minutes=analysis.recommendation_ttl_minutes), now
        )
        size = row_count(connection, recommendations_table)
    log_summary(
        context,
        f"{len(recommendations)} recommendation(s), "
        f"{len(advice.dropped)} dropped by the truth table",
        [
            f"{r.target}: {r.engine_flag} {r.current_value} → {r.recommended_value}"
            for r in recommendations
        ],
    )
    return MaterializeResult(
        metadata={
            "recommendations": MetadataValue.int(len(recommendations)),
            "new": MetadataValue.int(result.new),
            "refreshed": MetadataValue.int(result.refreshed),
            "superseded": MetadataValue.int(result.superseded),
            "expired": MetadataValue.int(expired),
            # values the engine truth table refused at the last check (each logged with why)
            "dropped": MetadataValue.int(len(advice.dropped)),
            "by_capability": MetadataValue.json(
                dict(Counter(r.capability for r in recommendations))
            ),
            "recommendations_table": MetadataValue.md(
                markdown_table(
                    ["target", "flag", "current", "recommended", "confidence", "expected effect"],
                    [
                        [
                            r.target,
                            r.engine_flag,
                            r.current_value,
                            r.recommended_value,
                            f"{r.confidence:.2f}",
                            r.expected_effect or "",
                        ]
                        for r in sorted(recommendations, key=lambda r: -r.confidence)[:_PREVIEW]
                    ],
                )
            ),
            "reports_batch_id": MetadataValue.text(reports_batch),
            **batch_metadata(context),
            **size,
        }
    )


# Not blocking: a critical bottleneck is what advice is for.
@asset_check(
    asset=bottleneck_reports, description="Warns when the batch has a critical bottleneck."
)
def no_critical_bottlenecks(
    context: AssetCheckExecutionContext, database: DatabaseResource
) -> AssetCheckResult:
    batch = batch_of(context, bottleneck_reports.key)
    with database.get_engine().connect() as connection:
        critical = connection.execute(
            select(reports_table.c.target, reports_table.c.kind).where(
                reports_table.c.run_id == batch, reports_table.c.severity == "critical"
            )
        ).all()
    return AssetCheckResult(
        passed=not critical,
        severity=AssetCheckSeverity.WARN,
        description="no critical bottleneck"
        if not critical
        else f"{len(critical)} critical bottleneck(s)",
        metadata={
            "critical": MetadataValue.json([f"{t}: {k}" for t, k in critical[:50]]),
            BATCH_ID: MetadataValue.text(batch),
        },
    )


# Not blocking: it judges advice already written (the orchestrator reads the table as soon as
# the step commits), and blocking would only hold back recommendation_outcomes, which judges
# advice applied earlier and is unrelated to a clash.
@asset_check(
    asset=tuning_recommendations,
    description="Fails when a target has more than one open recommendation for one parameter.",
)
def recommendations_consistent(
    context: AssetCheckExecutionContext, database: DatabaseResource
) -> AssetCheckResult:
    table = recommendations_table
    with database.get_engine().connect() as connection:
        clashes = connection.execute(
            select(table.c.target, table.c.parameter, func.count())
            .where(table.c.status == "open")
            .group_by(table.c.target, table.c.parameter)
            .having(func.count() > 1)
        ).all()
    return AssetCheckResult(
        passed=not clashes,
        severity=AssetCheckSeverity.ERROR,
        description="one open recommendation per target and parameter"
        if not clashes
        else f"{len(clashes)} conflicting group(s)",
        metadata={"conflicts": MetadataValue.json([f"{t}/{p}: {n}" for t, p, n in clashes])},
    )
