"""Keeping the tables bounded: old snapshots and reports are deleted, stale advice expires."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, Table, delete, select, update
from sqlalchemy.engine import Connection

from perf_pipelines.storage.schema import (
    agent_health,
    bottleneck_reports,
    metric_snapshots,
    orchestrator_events,
    tuning_recommendations,
)

# Rows per DELETE: short transactions, so a cycle writing meanwhile never waits long for locks.
DELETE_BATCH = 20_000

# (table, timestamp column): what retention deletes. Recommendations stay: an orchestrator's
# applied/rejected history and its outcomes are small and worth keeping.
_AGED_TABLES: tuple[tuple[Table, str], ...] = (
    (metric_snapshots, "collected_at"),
    (bottleneck_reports, "created_at"),
    (agent_health, "checked_at"),
    (orchestrator_events, "occurred_at"),
)


@dataclass(frozen=True)
class RetentionResult:
    deleted: dict[str, int]  # table -> rows deleted


def delete_older_than(engine: Engine, cutoff: datetime) -> RetentionResult:
    """Delete rows older than `cutoff` from every aged table, in batches of DELETE_BATCH, each
    batch its own transaction (a crash midway leaves only whole batches deleted)."""
    deleted: dict[str, int] = {}
    for table, column_name in _AGED_TABLES:
        column = table.c[column_name]
        total = 0
        while True:
            with engine.begin() as connection:
                ids = select(table.c.id).where(column < cutoff).limit(DELETE_BATCH)
                result = connection.execute(
                    delete(table).where(table.c.id.in_(ids.scalar_subquery()))
                )
            count = max(result.rowcount, 0)
            total += count
            if count < DELETE_BATCH:
                break
        deleted[table.name] = total
    return RetentionResult(deleted)


def expire_stale_recommendations(
    connection: Connection, not_seen_since: datetime, now: datetime
) -> int:
    """Open advice that no cycle has given again since `not_seen_since` no longer describes the
    server (its condition went away, or the target left the targets file): mark it expired so an
    orchestrator reading open_recommendations does not act on it."""
    table = tuning_recommendations
    result = connection.execute(
        update(table)
        .where(table.c.status == "open", table.c.last_seen_at < not_seen_since)
        .values(status="expired", status_changed_at=now)
    )
    return max(result.rowcount, 0)
