"""The `recommendation_outcomes` asset: whether advice the orchestrator applied has helped.

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
from sqlalchemy import select

from perf_pipelines.analysis.outcomes import evaluate_outcome
from perf_pipelines.dagster_defs.analysis import tuning_recommendations
from perf_pipelines.dagster_defs.catalog import row_count
from perf_pipelines.dagster_defs.cycle_asset import cycle_asset
from perf_pipelines.dagster_defs.resources import (
    AnalysisResource,
    DatabaseResource,
    TargetsResource,
)
from perf_pipelines.formatting import markdown_table
from perf_pipelines.storage.reports import awaiting_outcome, record_outcome
from perf_pipelines.storage.schema import tuning_recommendations as recommendations_table
from perf_pipelines.storage.snapshots import load_snapshots


@cycle_asset(
    deps=[tuning_recommendations],
    description=(
        "For advice marked applied: compares the window before the change with an equally long "
        "window after it (SLO attainment, TTFT/ITL p95, preemptions, queue, throughput) and sets "
        "`outcome` to improved, no_change or regressed with the evidence. Its rows are those "
        "of `tuning_recommendations` the orchestrator marked applied through the sidecar."
    ),
    table=recommendations_table,
)
def recommendation_outcomes(
    context: AssetExecutionContext,
    database: DatabaseResource,
    targets: TargetsResource,
    analysis: AnalysisResource,
) -> MaterializeResult[None]:
    window = timedelta(minutes=analysis.window_minutes)
    settle = timedelta(minutes=analysis.outcome_settle_minutes)
    now = datetime.now(UTC)
    target_map = targets.by_name()
    engine = database.get_engine()
    with engine.connect() as connection:
        pending = awaiting_outcome(connection, ready_before=now - settle - window)
        frames = {
            rec.id: load_snapshots(
                connection, rec.applied_at - window, rec.applied_at + settle + window, [rec.target]
            )
            for rec in pending
        }
    judged = []
    for rec in pending:
        result = evaluate_outcome(
            frames[rec.id],
            target_map.get(rec.target),
            rec.target,
            rec.model,
            rec.applied_at,
            window,
            settle,
        )
        judged.append((rec, result))
        message = f"{rec.target}: {rec.engine_flag} → {rec.recommended_value}: {result.outcome}"
        if result.outcome == "regressed":
            context.log.warning(message + " — consider rolling it back")
        else:
            context.log.info(message)
    with engine.begin() as connection:
        for rec, result in judged:
            record_outcome(connection, rec.id, result.outcome, result.evidence)
        size = row_count(connection, recommendations_table)
    counts = Counter(result.outcome or "not judged" for _, result in judged)
    rows = [
        [
            rec.target,
            rec.engine_flag,
            rec.recommended_value,
            result.outcome or "not judged",
            ", ".join(f"{k} {v}" for k, v in result.evidence.get("verdicts", {}).items())
            or result.evidence.get("reason", ""),
        ]
        for rec, result in judged
    ]
    return MaterializeResult(
        metadata={
            "judged": MetadataValue.int(len(judged)),
            "improved": MetadataValue.int(counts["improved"]),
            "no_change": MetadataValue.int(counts["no_change"]),
            "regressed": MetadataValue.int(counts["regressed"]),
            "outcomes": MetadataValue.md(
                markdown_table(["target", "flag", "applied value", "outcome", "why"], rows)
            ),
            **size,
        }
    )


@asset_check(
    asset=recommendation_outcomes,
    description="Warns while any applied advice made its server worse (outcome regressed).",
)
def no_regressions(
    context: AssetCheckExecutionContext, database: DatabaseResource
) -> AssetCheckResult:
    table = recommendations_table
    with database.get_engine().connect() as connection:
        regressed = connection.execute(
            select(table.c.target, table.c.engine_flag, table.c.recommended_value).where(
                table.c.outcome == "regressed", table.c.status == "applied"
            )
        ).all()
    return AssetCheckResult(
        passed=not regressed,
        severity=AssetCheckSeverity.WARN,
        description="no applied advice regressed"
        if not regressed
        else f"{len(regressed)} applied change(s) made things worse: roll back",
        metadata={"regressed": MetadataValue.json([f"{t}: {f} {v}" for t, f, v in regressed[:50]])},
    )
