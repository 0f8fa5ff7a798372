"""Writing and reading `metric_snapshots` rows."""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import JSON, Connection, Insert, String, Text, cast, select, type_coerce
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
            record[name] = _finite(getattr(snapshot, name)) if snapshot else None
        for name in HISTOGRAM_FIELDS:
            histogram: Histogram | None = getattr(snapshot, name) if snapshot else None
            record[name] = _histogram_json(histogram)
        if snapshot:
            record["settings"] = _json_safe(snapshot.settings) or None
            record["extra"] = _json_safe(snapshot.extra) or None
        return record


# NaN and ±Inf are not measurements: they are stored as NULL ("not measured"). PostgreSQL's JSON
# type rejects them outright, so one server exporting NaN would otherwise fail the whole run's
# transaction, and an infinite gauge or counter would poison every rate and quantile after it.
def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _histogram_json(histogram: Histogram | None) -> dict[str, Any] | None:
    if histogram is None:
        return None
    counts = (*histogram.cumulative, histogram.count)
    if not all(math.isfinite(c) for c in counts):
        return None  # a non-finite bucket count makes every quantile from it meaningless
    return histogram.to_json()


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return _finite(value)


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
    *,
    decode_histograms: bool = True,
) -> pd.DataFrame:
    """Snapshot rows collected in [since, until], by target then oldest first, as a DataFrame.

    JSON columns hold the values as stored (histograms, settings and extra as dicts; None for
    NULL; rows with equal settings or extra share one dict: read, don't modify); `collected_at`
    is tz-aware UTC. With `decode_histograms=False` the histogram columns hold the stored JSON
    text instead, for a reader that decodes only the few it uses: decoding every histogram is
    most of the cost of a load (~10 µs each), and `window_stats` reads two per target and model.
    """
    # JSON comes back as text, decoded below (settings and extra once per distinct text, the
    # histograms only if asked for) instead of value by value by the driver or SQLAlchemy.
    # collected_at comes back as the driver gives it (text on SQLite, datetimes on PostgreSQL)
    # and pandas parses the whole column at once instead of SQLAlchemy row by row.
    selected = [
        cast(column, Text).label(column.name)
        if isinstance(column.type, JSON)
        else type_coerce(column, String).label(column.name)
        if column.name == "collected_at"
        else column
        for column in metric_snapshots.columns
    ]
    query = select(*selected).where(metric_snapshots.c.collected_at >= since)
    if until is not None:
        query = query.where(metric_snapshots.c.collected_at <= until)
    if targets is not None:
        query = query.where(metric_snapshots.c.target.in_(list(targets)))
    query = query.order_by(metric_snapshots.c.target, metric_snapshots.c.collected_at)
    result = connection.execute(query)
    # Plain tuples: for SQLAlchemy Rows pandas probes every row for namedtuple fields (2× slower).
    rows = [tuple(row) for row in result.fetchall()]
    frame = pd.DataFrame(rows, columns=list(result.keys()))
    if frame.empty:
        return frame
    frame["collected_at"] = pd.to_datetime(frame["collected_at"], utc=True, format="ISO8601")
    for name in _JSON_COLUMNS:
        histogram = name in HISTOGRAM_FIELDS
        decode = decode_histograms or not histogram
        values = _json_values(frame[name].to_numpy(dtype=object), decode, shared=not histogram)
        # JSON text stays an object column, with None (not NaN) where there is no histogram.
        frame[name] = values if decode else pd.Series(values, index=frame.index, dtype=object)
    return frame


_JSON_COLUMNS = tuple(
    column.name for column in metric_snapshots.columns if isinstance(column.type, JSON)
)


def _json_values(texts: Collection[Any], decode: bool, shared: bool) -> list[Any]:
    """Stored JSON texts decoded, or kept as text; None where there was no text (SQL NULL, which
    pandas may have turned into NaN) or JSON null.

    `shared`: equal texts are decoded once and their rows share the value (settings repeat in
    every sample of a target).
    """
    if not decode:
        return [text if isinstance(text, str) and text != "null" else None for text in texts]
    loads = json.loads
    if not shared:
        return [loads(text) if isinstance(text, str) else None for text in texts]
    decoded = {text: loads(text) for text in set(texts) if isinstance(text, str)}
    return [decoded[text] if isinstance(text, str) else None for text in texts]
