"""`orchestrator_events`: every registration and heartbeat attempt, and what the latest say."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select

from perf_pipelines.storage.schema import orchestrator_events


def insert_events(connection: Connection, rows: Sequence[dict[str, Any]]) -> int:
    """Append rows shaped like the table (see `run_tick`); returns how many."""
    if rows:
        connection.execute(insert(orchestrator_events), list(rows))
    return len(rows)


@dataclass(frozen=True)
class OrchestratorStatus:
    """What the events table says about the link to the orchestrator, for one agent."""

    last_attempt_at: datetime | None
    last_kind: str | None
    last_success: bool | None
    last_status_code: int | None
    last_error: str | None
    last_success_at: datetime | None
    consecutive_failures: int  # failed attempts since the last successful one


def orchestrator_status(connection: Connection, agent_id: str) -> OrchestratorStatus:
    table = orchestrator_events
    mine = table.c.agent_id == agent_id
    last = connection.execute(
        select(table).where(mine).order_by(table.c.occurred_at.desc(), table.c.id.desc()).limit(1)
    ).first()
    success = connection.execute(
        select(table.c.id, table.c.occurred_at)
        .where(mine, table.c.success.is_(True))
        .order_by(table.c.occurred_at.desc(), table.c.id.desc())
        .limit(1)
    ).first()
    failures_query = select(func.count()).where(mine, table.c.success.is_(False))
    if success is not None:
        failures_query = failures_query.where(table.c.id > success.id)
    failures = connection.execute(failures_query).scalar_one()
    return OrchestratorStatus(
        last_attempt_at=None if last is None else last.occurred_at,
        last_kind=None if last is None else last.kind,
        last_success=None if last is None else bool(last.success),
        last_status_code=None if last is None else last.status_code,
        last_error=None if last is None else last.error,
        last_success_at=None if success is None else success.occurred_at,
        consecutive_failures=int(failures),
    )
