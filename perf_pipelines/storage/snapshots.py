"""Writing and reading `metric_snapshots` rows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Insert, select
from sqlalchemy.dialects import postgresql, sqlite

from perf_pipelines.engines.canonical import (
    CANONICAL_VALUE_FIELDS,
    HISTOGRAM_FIELDS,
    CanonicalSnapshot,
    Histogram,
)
from perf_pipelines.storage.schema import metric_snapshots

# Bounded so that one multi-row INSERT stays under SQLite's variable limit and PG's packet size.
_INSERT_CHUNK = 200


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    """One row of `metric_snapshots`: a canonical snapshot, or a failed scrape (up=False)."""

    run_id: str
    sample_index: int
    target: str
    engine: str | None
    model: str | None
    collected_at: datetime
    up: bool
    error: str | None
    scrape_ms: float | None
    body_bytes: int | None
    snapshot: CanonicalSnapshot | None

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "run_id": self.run_id,
            "sample_index": self.sample_index,
            "target": self.target,
            "engine": self.engine,
            "model": self.model,
            "collected_at": self.collected_at,
            "up": self.up,
            "error": self.error,
            "scrape_ms": self.scrape_ms,
            "body_bytes": self.body_bytes,
            "settings": None,
            "extra": None,
        }
        snapshot = self.snapshot
        for name in CANONICAL_VALUE_FIELDS:
            record[name] = getattr(snapshot, name) if snapshot else None
        for name in HISTOGRAM_FIELDS:
            histogram: Histogram | None = getattr(snapshot, name) if snapshot else None
            record[name] = histogram.to_json() if histogram else None
        if snapshot:
            record["settings"] = snapshot.settings or None
            record["extra"] = snapshot.extra or None
        return record


def upsert_ignore(connection: Connection, table: Any) -> Insert:
    """INSERT … ON CONFLICT DO NOTHING for either dialect (re-runs must not duplicate rows)."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"unsupported database dialect {dialect!r}")


def insert_snapshots(connection: Connection, rows: Iterable[SnapshotRow]) -> int:
    """Insert rows inside the caller's transaction; rows already stored are skipped.

    Returns the number of rows that were new.
    """
    records = [row.as_record() for row in rows]
    inserted = 0
    # RETURNING counts what was new on both dialects; rowcount is -1 for batched inserts on PG.
    statement = upsert_ignore(connection, metric_snapshots).returning(metric_snapshots.c.id)
    for start in range(0, len(records), _INSERT_CHUNK):
        result = connection.execute(statement, records[start : start + _INSERT_CHUNK])
        inserted += len(result.all())
    return inserted


def load_snapshots(
    connection: Connection,
    since: datetime,
    until: datetime | None = None,
    targets: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Snapshot rows collected in [since, until], oldest first, as a DataFrame.

    Histogram columns hold the JSON dicts as stored; `collected_at` is tz-aware UTC.
    """
    query = select(metric_snapshots).where(metric_snapshots.c.collected_at >= since)
    if until is not None:
        query = query.where(metric_snapshots.c.collected_at <= until)
    if targets is not None:
        query = query.where(metric_snapshots.c.target.in_(list(targets)))
    query = query.order_by(metric_snapshots.c.target, metric_snapshots.c.collected_at)
    result = connection.execute(query)
    frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    if not frame.empty:
        frame["collected_at"] = pd.to_datetime(frame["collected_at"], utc=True)
    return frame
