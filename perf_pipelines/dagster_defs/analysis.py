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
    MaterializeResult,
    MetadataValue,
    asset_check,
)
from sqlalchemy import Connection, func, select

from perf_pipelines.analysis.detection import detect
from perf_pipelines.analysis.window import window_stats
from perf_pipelines.dagster_defs.cycle_asset import cycle_asset, log_summary
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
from perf_pipelines.storage.schema import tuning_recommendations as recommendations_table
from perf_pipelines.storage.snapshots import load_snapshots

_SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
_PREVIEW = 20


@cycle_asset(
    deps=[metric_snapshots],
    description=(
        "Bottlenecks per target and model over the last ANALYSIS_WINDOW_MINUTES of snapshots: "
        "KV-cache pressure, preemption, queue saturation, TTFT/ITL SLO breaches, "
        "under-utilisation and targets down, each with its evidence."
    ),
)
def bottleneck_reports(
    context: AssetExecutionContext,
    database: DatabaseResource,
    targets: TargetsResource,
    analysis: AnalysisResource,
) -> MaterializeResult[None]:
    target_map = targets.by_name()
    end = datetime.now(UTC)
    start = end - timedelta(minutes=analysis.window_minutes)
    engine = database.get_engine()
    with engine.connect() as connection:
        frame = load_snapshots(
            connection, start, end, targets=list(target_map), decode_histograms=False
        )
    stats = window_stats(frame, target_map, start, end)
    detection = detect(stats, target_map, analysis.detection_config())
    with engine.begin() as connection:
        write_reports(connection, context.run.run_id, detection.reports, end)
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
        }
    )


def _reports_of_run(connection: Connection, run_id: str) -> list[BottleneckReport]:
    rows = connection.execute(select(reports_table).where(reports_table.c.run_id == run_id)).all()
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
        "evidence, expected effect and confidence; supersedes older open advice."
    ),
)
def tuning_recommendations(
    context: AssetExecutionContext,
    database: DatabaseResource,
    targets: TargetsResource,
    analysis: AnalysisResource,
) -> MaterializeResult[None]:
    target_map = targets.by_name()
    engine = database.get_engine()
    run_id = context.run.run_id
    with engine.connect() as connection:
        reports = _reports_of_run(connection, run_id)
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
                ).where(reports_table.c.run_id == run_id)
            ).all()
        }
        result = upsert_recommendations(connection, run_id, recommendations, now, report_ids)
        expired = expire_stale_recommendations(
            connection, now - timedelta(minutes=analysis.recommendation_ttl_minutes), now
        )
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
        }
    )


@asset_check(
    asset=bottleneck_reports, description="Warns when this run found a critical bottleneck."
)
def no_critical_bottlenecks(
    context: AssetCheckExecutionContext, database: DatabaseResource
) -> AssetCheckResult:
    with database.get_engine().connect() as connection:
        critical = connection.execute(
            select(reports_table.c.target, reports_table.c.kind).where(
                reports_table.c.run_id == context.run.run_id, reports_table.c.severity == "critical"
            )
        ).all()
    return AssetCheckResult(
        passed=not critical,
        severity=AssetCheckSeverity.WARN,
        description="no critical bottleneck"
        if not critical
        else f"{len(critical)} critical bottleneck(s)",
        metadata={"critical": MetadataValue.json([f"{t}: {k}" for t, k in critical[:50]])},
    )


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
