"""The orchestrator's answer to a recommendation (`applied` / `rejected`), and reading advice back.

Only an `open` recommendation can be applied or rejected. The change is one
``UPDATE … WHERE id = :id AND status = 'open'``, so two answers racing for the same row cannot
both win: on PostgreSQL the second UPDATE waits for the first to commit, re-reads the row and
matches nothing; SQLite serialises writers. Only after that is the row read to explain a miss
(unknown id, the same answer again, or an illegal transition).

`status_changed_at` is the instant the change was applied: outcome tracking compares the
windows before and after it. `outcome_evidence` is left to outcome tracking; the orchestrator's
note is logged, not stored (the table has no column for it).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import Column, Connection, MetaData, Table, select, update

from perf_pipelines.logs import redact_and_clip
from perf_pipelines.storage.schema import RECOMMENDATION_STATUSES, tuning_recommendations

log = logging.getLogger(__name__)

# What an orchestrator may answer; every other status is set by the agent itself.
ORCHESTRATOR_STATUSES: tuple[str, ...] = ("applied", "rejected")

# The `open_recommendations` view with the table's column types, so that timestamps come back
# timezone-aware and JSON decoded on SQLite as on PostgreSQL.
open_recommendations_view = Table(
    "open_recommendations",
    MetaData(),
    *(Column(column.name, column.type) for column in tuning_recommendations.columns),
)


class RecommendationNotFound(LookupError):
    """No recommendation has this id."""

    def __init__(self, rec_id: str) -> None:
        super().__init__(f"no recommendation with id {rec_id!r}")
        self.rec_id = rec_id


class IllegalTransition(ValueError):
    """The recommendation is not open, so it cannot take the requested status."""

    def __init__(self, rec_id: str, current: str, requested: str) -> None:
        super().__init__(
            f"recommendation {rec_id} is {current!r} and cannot become {requested!r}: "
            "only an open recommendation can be applied or rejected"
        )
        self.rec_id = rec_id
        self.current = current
        self.requested = requested


def set_status(
    connection: Connection,
    rec_id: str,
    status: str,
    now: datetime,
    note: str | None = None,
) -> dict[str, Any]:
    """Mark an open recommendation `applied` or `rejected`; returns the row as it now is.

    Sending the status the row already has is idempotent: the row is returned unchanged (and
    `status_changed_at` keeps the first answer's time). Raises `RecommendationNotFound` for an
    unknown id and `IllegalTransition` for any other status the row is in. Runs inside the
    caller's transaction.
    """
    if status not in ORCHESTRATOR_STATUSES:
        raise ValueError(f"status must be one of {ORCHESTRATOR_STATUSES}, got {status!r}")
    table = tuning_recommendations
    changed = connection.execute(
        update(table)
        .where(table.c.id == rec_id, table.c.status == "open")
        .values(status=status, status_changed_at=now)
    ).rowcount
    row = connection.execute(select(table).where(table.c.id == rec_id)).mappings().first()
    if row is None:
        raise RecommendationNotFound(rec_id)
    if row.status != status:
        raise IllegalTransition(rec_id, row.status, status)
    if changed:
        log.info(
            "recommendation %s %s",
            rec_id,
            status,
            extra={
                "recommendation_id": rec_id,
                "target": row.target,
                "parameter": row.parameter,
                "status": status,
                "note": redact_and_clip(note or "", 500),
            },
        )
    return dict(row)


def list_recommendations(
    connection: Connection,
    status: str = "open",
    target: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Recommendations with `status`, newest first.

    `open` reads the `open_recommendations` view (the newest open advice per target and
    parameter: what an orchestrator should act on); any other status reads the table.
    """
    if status not in RECOMMENDATION_STATUSES:
        raise ValueError(f"status must be one of {RECOMMENDATION_STATUSES}, got {status!r}")
    if status == "open":
        source = open_recommendations_view
        query = select(source)
    else:
        source = tuning_recommendations
        query = select(source).where(source.c.status == status)
    if target is not None:
        query = query.where(source.c.target == target)
    query = query.order_by(
        source.c.status_changed_at.desc(), source.c.created_at.desc(), source.c.id
    ).limit(limit)
    return [dict(row) for row in connection.execute(query).mappings()]
