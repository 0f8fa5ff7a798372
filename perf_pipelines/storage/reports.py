"""Writing `bottleneck_reports` and `tuning_recommendations` (with superseding)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, select, text, update

from perf_pipelines.findings import BottleneckReport, Recommendation
from perf_pipelines.storage.schema import bottleneck_reports, tuning_recommendations
from perf_pipelines.storage.snapshots import upsert_ignore


def write_reports(
    connection: Connection, run_id: str, reports: Sequence[BottleneckReport], created_at: datetime
) -> dict[tuple[str, str | None, str], int]:
    """Insert the run's reports (a re-run adds nothing); their ids by (target, model, kind)."""
    if reports:
        records = [r.as_record() | {"run_id": run_id, "created_at": created_at} for r in reports]
        connection.execute(upsert_ignore(connection, bottleneck_reports), records)
    table = bottleneck_reports
    rows = connection.execute(
        select(table.c.id, table.c.target, table.c.model, table.c.kind).where(
            table.c.run_id == run_id
        )
    ).all()
    return {(row.target, row.model, row.kind): row.id for row in rows}


@dataclass(frozen=True)
class UpsertResult:
    new: int
    refreshed: int
    superseded: int


# Statuses the agent set itself; an orchestrator's answer (applied, rejected) is never undone.
_REOPENABLE = ("superseded", "expired")
# An arbitrary constant (next to db.py's migration lock): serialises cycles writing advice at once.
_PG_RECOMMENDATIONS_LOCK_KEY = 7_242_011_356


def _stringify(value: Any) -> str | None:
    return None if value is None else str(value)


def upsert_recommendations(
    connection: Connection,
    run_id: str,
    recommendations: Sequence[Recommendation],
    now: datetime,
    report_ids: dict[tuple[str, str | None, str], int],
) -> UpsertResult:
    """Store this cycle's advice inside the caller's transaction.

    The same advice again (same deterministic id) refreshes its row and keeps its status, so an
    applied or rejected recommendation is not reopened; different advice for a (target,
    parameter) that still has an open recommendation supersedes the older one. Advice that was
    superseded (or expired) and is given again is current again: it is reopened and supersedes
    whatever replaced it, so the open view never shows stale advice.
    """
    table = tuning_recommendations
    if connection.dialect.name == "postgresql":
        # Two cycles at once (a schedule tick overlapping a manual run): under READ COMMITTED the
        # second cannot see the first's uncommitted advice, so different advice for one (target,
        # parameter) would stay open twice. Held until the caller commits. SQLite serialises
        # writers by itself.
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_RECOMMENDATIONS_LOCK_KEY}
        )
    ids = [r.id for r in recommendations]
    existing: dict[str, str] = (
        {
            row.id: row.status
            for row in connection.execute(
                select(table.c.id, table.c.status).where(table.c.id.in_(ids))
            )
        }
        if ids
        else {}
    )
    new = refreshed = superseded = 0
    for rec in recommendations:
        values = {
            "last_seen_at": now,
            "run_id": run_id,
            "evidence": rec.evidence,
            "rationale": rec.rationale,
            "expected_effect": rec.expected_effect,
            "confidence": rec.confidence,
            "severity": rec.severity,
            "report_id": report_ids.get((rec.target, rec.model, rec.report_kind)),
        }
        status = existing.get(rec.id)
        if status is not None and status not in _REOPENABLE:
            connection.execute(update(table).where(table.c.id == rec.id).values(**values))
            refreshed += 1
            continue
        result = connection.execute(
            update(table)
            .where(
                and_(
                    table.c.target == rec.target,
                    table.c.parameter == rec.parameter,
                    table.c.status == "open",
                    table.c.id != rec.id,
                )
            )
            .values(status="superseded", status_changed_at=now)
        )
        superseded += max(result.rowcount, 0)
        if status is not None:  # given again after it was superseded or expired: reopen it
            connection.execute(
                update(table)
                .where(table.c.id == rec.id)
                .values(**values, status="open", status_changed_at=now)
            )
            refreshed += 1
            continue
        connection.execute(
            upsert_ignore(connection, table),
            [
                values
                | {
                    "id": rec.id,
                    "created_at": now,
                    "target": rec.target,
                    "engine": rec.engine,
                    "model": rec.model,
                    "capability": rec.capability,
                    "parameter": rec.parameter,
                    "engine_flag": rec.engine_flag,
                    "current_value": _stringify(rec.current_value),
                    "recommended_value": str(rec.recommended_value),
                    "status": "open",
                    "status_changed_at": now,
                }
            ],
        )
        new += 1
    return UpsertResult(new, refreshed, superseded)


@dataclass(frozen=True)
class AppliedRecommendation:
    id: str
    target: str
    model: str | None
    engine_flag: str
    recommended_value: str
    applied_at: datetime


def awaiting_outcome(connection: Connection, ready_before: datetime) -> list[AppliedRecommendation]:
    """Applied advice without an outcome yet, applied before `ready_before` (so that the window
    after the change is complete by now)."""
    table = tuning_recommendations
    rows = connection.execute(
        select(
            table.c.id,
            table.c.target,
            table.c.model,
            table.c.engine_flag,
            table.c.recommended_value,
            table.c.status_changed_at,
        )
        .where(
            table.c.status == "applied",
            table.c.outcome.is_(None),
            table.c.outcome_evidence.is_(None),  # judged already, with too little data
            table.c.status_changed_at <= ready_before,
        )
        .order_by(table.c.status_changed_at)
    ).all()
    return [
        AppliedRecommendation(
            r.id, r.target, r.model, r.engine_flag, r.recommended_value, r.status_changed_at
        )
        for r in rows
    ]


def record_outcome(
    connection: Connection, rec_id: str, outcome: str | None, evidence: dict[str, Any]
) -> None:
    """Store the verdict once. An outcome of None (too little data around the change) is kept
    with its reason and not retried: the windows it needed are in the past."""
    table = tuning_recommendations
    connection.execute(
        update(table)
        .where(
            table.c.id == rec_id,
            table.c.status == "applied",
            table.c.outcome.is_(None),
            table.c.outcome_evidence.is_(None),
        )
        .values(outcome=outcome, outcome_evidence=evidence)
    )
