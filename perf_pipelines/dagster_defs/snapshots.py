"""The `metric_snapshots` asset and its checks: one scrape round (or several) of the fleet.

No `from __future__ import annotations` here: Dagster inspects the `context` annotation at
definition time and rejects it as a string.
"""

import asyncio
from collections import Counter

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
from sqlalchemy import and_, func, or_, select

from perf_pipelines.collection.collector import ScrapeLimits, ScrapeResult, collect
from perf_pipelines.collection.rounds import rows_from_rounds
from perf_pipelines.dagster_defs.catalog import row_count
from perf_pipelines.dagster_defs.cycle_asset import (
    BATCH_ID,
    batch_metadata,
    batch_of,
    cycle_asset,
    log_summary,
)
from perf_pipelines.dagster_defs.resources import DatabaseResource, ScraperResource, TargetsResource
from perf_pipelines.formatting import format_value, markdown_table
from perf_pipelines.sources.cycle import read_cycle, targets_needing_backfill
from perf_pipelines.storage.schema import metric_snapshots as metric_snapshots_table
from perf_pipelines.storage.snapshots import SnapshotRow, insert_snapshots
from perf_pipelines.targets import Target, TargetsError

_PREVIEW_ROWS = 25


def _preview(results: list[ScrapeResult]) -> str:
    rows = []
    for result in sorted(results, key=lambda r: (r.up, r.target.name))[:_PREVIEW_ROWS]:
        snapshot = result.snapshots[0] if result.snapshots else None
        rows.append(
            [
                result.target.name,
                result.engine.value if result.engine else "?",
                (snapshot.model if snapshot else result.target.model) or "–",
                "up" if result.up else "**down**",
                format_value(snapshot.requests_running if snapshot else None, 0),
                format_value(snapshot.requests_waiting if snapshot else None, 0),
                format_value(snapshot.kv_cache_usage if snapshot else None),
                f"{result.scrape_ms:.0f}",
                result.error or "",
            ]
        )
    header = ["target", "engine", "model", "state", "running", "waiting", "kv use", "ms", "error"]
    return markdown_table(header, rows)


@cycle_asset(
    description=(
        "Scrapes /metrics of every target in PERF_TARGETS (SCRAPE_SAMPLES rounds, "
        "SCRAPE_INTERVAL_S apart), or reads the same series from PROMETHEUS_URL when set, and "
        "appends canonical rows to the `metric_snapshots` table."
    ),
    table=metric_snapshots_table,
)
def metric_snapshots(
    context: AssetExecutionContext,
    database: DatabaseResource,
    targets: TargetsResource,
    scraper: ScraperResource,
) -> MaterializeResult[None]:
    try:
        target_list = targets.load()
    except TargetsError as exc:
        raise Failure(description=str(exc)) from None
    if not target_list:
        raise Failure(
            description="no targets configured: set PERF_TARGETS to a targets YAML file",
        )
    source_metadata: dict[str, MetadataValue] = {"source": MetadataValue.text("scrape")}
    if scraper.prometheus_url:
        rows, last_round, samples, source_metadata = _read_prometheus(
            context, database, scraper, target_list
        )
    else:
        limits = ScrapeLimits(
            timeout_s=scraper.timeout_s,
            concurrency=scraper.concurrency,
            max_bytes=scraper.max_bytes,
            max_series=scraper.max_series,
            max_models=scraper.max_models,
            max_label_bytes=scraper.max_label_bytes,
        )
        rounds = asyncio.run(collect(target_list, limits, scraper.samples, scraper.interval_s))
        rows = rows_from_rounds(context.run.run_id, rounds)
        last_round, samples = rounds[-1], len(rounds)
    # One transaction for the whole run: a failure leaves no partial rows behind.
    with database.get_engine().begin() as connection:
        inserted = insert_snapshots(connection, rows)
        size = row_count(connection, metric_snapshots_table)

    down = [r for r in last_round if not r.up]
    engines = Counter(r.engine.value for r in last_round if r.engine)
    log_summary(
        context,
        f"scraped {len(target_list)} targets × {samples} samples: "
        f"{len(last_round) - len(down)} up, {len(down)} down, {inserted} rows stored",
        [f"target {result.target.name} is down: {result.error}" for result in down],
        warn=bool(down),
    )
    return MaterializeResult(
        metadata={
            "targets_total": MetadataValue.int(len(target_list)),
            # Prometheus may know a target in neither state (unknown): not counted as up.
            "targets_up": MetadataValue.int(len(last_round) - len(down)),
            "targets_down": MetadataValue.int(len(down)),
            "samples": MetadataValue.int(samples),
            "rows_inserted": MetadataValue.int(inserted),
            "engines": MetadataValue.json(dict(engines)),
            "preview": MetadataValue.md(_preview(last_round)),
            **source_metadata,
            **batch_metadata(context),
            **size,
        }
    )


def _read_prometheus(
    context: AssetExecutionContext,
    database: DatabaseResource,
    scraper: ScraperResource,
    target_list: list[Target],
) -> tuple[list[SnapshotRow], list[ScrapeResult], int, dict[str, MetadataValue]]:
    """The cycle's rows from PROMETHEUS_URL, with history for targets seen the first time."""
    with database.get_engine().connect() as connection:
        first_use = targets_needing_backfill(connection, [t.name for t in target_list])
    cycle = read_cycle(
        scraper.prometheus_config(),
        target_list,
        context.run.run_id,
        samples=scraper.samples,
        interval_s=scraper.interval_s,
        backfill_targets=first_use,
        backfill_minutes=scraper.prometheus_backfill_minutes,
        backfill_step_s=scraper.prometheus_backfill_step_s,
    )
    if cycle.source_error is not None:
        # Prometheus itself failed, so nothing is known about any server: a failed run records
        # it as the source's fault and stores nothing, so no server is reported down and no
        # advice rests on it. A re-run reads the same cycle again (docs/prometheus.md).
        raise Failure(
            description=(
                f"Prometheus source failed: {cycle.source_error}; every target's state is "
                "unknown (not down): nothing stored for this cycle"
            ),
            metadata={"targets_unknown": MetadataValue.int(len(target_list))},
        )
    problems = [f"target {name}: " + "; ".join(notes) for name, notes in cycle.warnings.items()]
    problems += [f"target {name}: state unknown: {why}" for name, why in cycle.unknown.items()]
    problems += [
        f"target {name}: back-fill failed: {e}" for name, e in cycle.backfill_errors.items()
    ]
    if problems:
        log_summary(context, f"{len(problems)} target(s) read with problems", problems, warn=True)
    metadata: dict[str, MetadataValue] = {
        "source": MetadataValue.text("prometheus"),
        "rows_backfilled": MetadataValue.int(len(cycle.backfill_rows)),
        "prometheus_warnings": MetadataValue.json(cycle.warnings),
        "targets_unknown": MetadataValue.int(len(cycle.unknown)),
        "unknown": MetadataValue.json(cycle.unknown),
    }
    return cycle.rows + cycle.backfill_rows, cycle.latest, cycle.samples, metadata


# Not blocking: a target that is down is reported (a `target_down` report, this warning) while
# advice for the others goes on; and Dagster blocks only on ERROR severity anyway.
@asset_check(
    asset=metric_snapshots,
    description="Warns when targets could not be scraped in the batch's latest sample.",
)
def targets_reachable(
    context: AssetCheckExecutionContext, database: DatabaseResource, targets: TargetsResource
) -> AssetCheckResult:
    table = metric_snapshots_table
    batch = batch_of(context, metric_snapshots.key)
    with database.get_engine().connect() as connection:
        last_sample = connection.execute(
            select(func.max(table.c.sample_index)).where(table.c.run_id == batch)
        ).scalar()
        rows = connection.execute(
            select(table.c.target, table.c.up, table.c.error).where(
                table.c.run_id == batch, table.c.sample_index == last_sample
            )
        ).all()
    down = sorted({(row.target, row.error or "") for row in rows if not row.up})
    # A target without a row is one the source could not tell about (Prometheus had no current
    # sample of it): unknown, not down, and not "answered" either.
    unknown = sorted({t.name for t in targets.load()} - {row.target for row in rows})
    problems = (
        [f"{len(down)} target(s) down: " + ", ".join(t for t, _ in down[:10])] if down else []
    )
    if unknown:
        problems.append(f"{len(unknown)} target(s) unknown (no row): " + ", ".join(unknown[:10]))
    return AssetCheckResult(
        passed=not problems and bool(rows),
        severity=AssetCheckSeverity.WARN,
        description="; ".join(problems) or ("all targets answered" if rows else "no rows"),
        metadata={
            "targets_checked": len({row.target for row in rows}),
            "targets_down": len(down),
            "targets_unknown": len(unknown),
            "down": MetadataValue.md(markdown_table(["target", "error"], [list(d) for d in down])),
            BATCH_ID: MetadataValue.text(batch),
        },
    )


# Blocking: it guards publication. When it fails, bottleneck_reports and tuning_recommendations
# do not run, so no advice rests on impossible values, and the run fails naming this check.
@asset_check(
    asset=metric_snapshots,
    blocking=True,
    description=(
        "Fails when stored values are impossible: KV use outside 0–1, negative gauges or "
        "counters, or an 'up' row without any canonical value. Blocking: no report or "
        "recommendation is written from a batch that fails it."
    ),
)
def snapshot_values_valid(
    context: AssetCheckExecutionContext, database: DatabaseResource
) -> AssetCheckResult:
    table = metric_snapshots_table
    non_negative = [
        table.c.requests_running,
        table.c.requests_waiting,
        table.c.prompt_tokens_total,
        table.c.generation_tokens_total,
        table.c.preemptions_total,
        table.c.requests_finished_total,
    ]
    impossible = or_(
        table.c.kv_cache_usage < 0,
        table.c.kv_cache_usage > 1,
        *(column < 0 for column in non_negative),
        and_(table.c.up.is_(True), *(column.is_(None) for column in non_negative)),
    )
    batch = batch_of(context, metric_snapshots.key)
    with database.get_engine().connect() as connection:
        bad = connection.execute(
            select(table.c.target, table.c.model, table.c.sample_index)
            .where(table.c.run_id == batch, impossible)
            .limit(20)
        ).all()
    targets = sorted({row.target for row in bad})
    return AssetCheckResult(
        passed=not bad,
        severity=AssetCheckSeverity.ERROR,
        description=(
            "all values plausible"
            if not bad
            else f"{len(bad)} implausible row(s) from {', '.join(targets[:10])}: "
            "no advice is published from this batch"
        ),
        metadata={
            "bad_rows": MetadataValue.json([list(map(str, row)) for row in bad]),
            BATCH_ID: MetadataValue.text(batch),
        },
    )
