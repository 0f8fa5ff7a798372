"""What the `metric_snapshots` asset and `perf-pipelines prometheus backfill` do with Prometheus.

- `read_cycle`: the regular read (the last SCRAPE_SAMPLES scrapes of every target) plus, for
  targets the database has never seen, PROMETHEUS_BACKFILL_MINUTES of history before them.
- `backfill`: history for every target up to its oldest stored row, in one transaction.

One deadline (PROMETHEUS_CYCLE_TIMEOUT_S) covers everything a cycle asks Prometheus, the regular
read and the history together. When Prometheus itself fails (unreachable, silent, not an API)
the cycle's `source_error` says so and nothing is read: no server's state is known, so none is
stored as down.

Back-fill rows carry deterministic run ids (`backfill-<chunk start>-<target>`) and sample indexes
(the step within the chunk), so reading the same history again inserts nothing: rows are unique
on (run_id, target, sample_index, model).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, func, or_, select

from perf_pipelines.collection.collector import ScrapeResult
from perf_pipelines.sources.promapi import PrometheusConfig
from perf_pipelines.sources.prometheus import (
    BACKFILL_PREFIX,
    HistoryRead,
    read_history,
    read_recent,
    rows_from_reads,
    source_failure,
)
from perf_pipelines.storage.schema import metric_snapshots
from perf_pipelines.storage.snapshots import SnapshotRow, insert_snapshots
from perf_pipelines.targets import Target


def oldest_rows(connection: Connection, names: Sequence[str]) -> dict[str, datetime]:
    """The oldest `collected_at` stored per target (targets without rows are absent)."""
    table = metric_snapshots
    oldest: dict[str, datetime] = {}
    names = list(names)
    for start in range(0, len(names), 500):
        chunk = names[start : start + 500]
        query = (
            select(table.c.target, func.min(table.c.collected_at))
            .where(table.c.target.in_(chunk))
            .group_by(table.c.target)
        )
        for target, collected_at in connection.execute(query):
            if isinstance(collected_at, str):  # SQLite returns min() of a text column as text
                collected_at = datetime.fromisoformat(collected_at)
            if collected_at.tzinfo is None:
                collected_at = collected_at.replace(tzinfo=UTC)
            oldest[target] = collected_at
    return oldest


def targets_needing_backfill(connection: Connection, names: Sequence[str]) -> set[str]:
    """Targets seen for the first time: no row that was up and no back-filled row yet.

    Down rows alone do not count, so a first cycle that could not reach Prometheus does not
    cost the target its history.
    """
    table = metric_snapshots
    names = list(names)
    known: set[str] = set()
    for start in range(0, len(names), 500):
        chunk = names[start : start + 500]
        query = (
            select(table.c.target)
            .where(
                table.c.target.in_(chunk),
                or_(table.c.up.is_(True), table.c.run_id.startswith(BACKFILL_PREFIX)),
            )
            .distinct()
        )
        known.update(connection.execute(query).scalars())
    return set(names) - known


@dataclass
class CycleRead:
    rows: list[SnapshotRow]
    backfill_rows: list[SnapshotRow]
    latest: list[ScrapeResult]  # the newest result per known target, in target order
    samples: int
    warnings: dict[str, list[str]] = field(default_factory=dict)
    backfill_errors: dict[str, str] = field(default_factory=dict)
    # target → why its state is unknown (no row stored: it is not known to be down)
    unknown: dict[str, str] = field(default_factory=dict)
    # Prometheus itself failed: every target is unknown and nothing was read
    source_error: str | None = None


def read_cycle(
    config: PrometheusConfig,
    targets: Sequence[Target],
    run_id: str,
    *,
    samples: int,
    interval_s: float,
    backfill_targets: set[str],
    backfill_minutes: float,
    backfill_step_s: float,
    now: float | None = None,
) -> CycleRead:
    """Read the cycle's rows (and first-use history) from Prometheus; never raises for it."""
    now = now if now is not None else datetime.now(UTC).timestamp()
    deadline = time.monotonic() + config.cycle_timeout_s
    reads = asyncio.run(
        read_recent(config, targets, samples, interval_s, now=now, deadline=deadline)
    )
    warnings = {read.target.name: read.warnings for read in reads if read.warnings}
    unknown = {read.target.name: read.unknown for read in reads if read.unknown is not None}
    failure = source_failure(reads)
    if failure is not None:
        return CycleRead([], [], [], 0, warnings, unknown=unknown, source_error=str(failure))
    history: list[HistoryRead] = []
    if backfill_minutes > 0 and backfill_targets:
        # History ends where this cycle's samples start, so no scrape is stored twice.
        ends = {
            read.target.name: min(r.collected_at for r in read.results).timestamp()
            for read in reads
            if read.target.name in backfill_targets and read.results
        }
        chosen = [t for t in targets if t.name in ends]
        history = asyncio.run(
            read_history(
                config,
                chosen,
                now - backfill_minutes * 60,
                ends,
                backfill_step_s,
                deadline=deadline,
            )
        )
    for read in history:
        if read.warnings:
            warnings.setdefault(read.target.name, []).extend(read.warnings)
    return CycleRead(
        rows=rows_from_reads(run_id, reads),
        backfill_rows=[row for read in history for row in read.rows],
        latest=[read.latest for read in reads if read.results],
        samples=max((len(read.results) for read in reads), default=0),
        warnings=warnings,
        backfill_errors={read.target.name: read.error for read in history if read.error},
        unknown=unknown,
    )


@dataclass
class BackfillOutcome:
    inserted: int
    rows_by_target: dict[str, int]
    errors: dict[str, str]
    warnings: dict[str, list[str]]


def backfill(
    engine: Engine,
    config: PrometheusConfig,
    targets: Sequence[Target],
    *,
    minutes: float,
    step_s: float,
    now: float | None = None,
) -> BackfillOutcome:
    """Store `minutes` of history per target, up to its oldest stored row, in one transaction."""
    now = now if now is not None else datetime.now(UTC).timestamp()
    with engine.connect() as connection:
        oldest = oldest_rows(connection, [t.name for t in targets])
    ends = {t.name: oldest[t.name].timestamp() if t.name in oldest else now for t in targets}
    # Run by hand, not by the schedule: no cycle deadline, each query keeps its own timeout.
    reads = asyncio.run(
        read_history(config, targets, now - minutes * 60, ends, step_s, deadline=math.inf)
    )
    rows = [row for read in reads for row in read.rows]
    with engine.begin() as connection:
        inserted = insert_snapshots(connection, rows)
    return BackfillOutcome(
        inserted=inserted,
        rows_by_target={read.target.name: len(read.rows) for read in reads},
        errors={read.target.name: read.error for read in reads if read.error},
        warnings={read.target.name: read.warnings for read in reads if read.warnings},
    )
