"""`orchestrator_events` on real SQLite and PostgreSQL: rows in, latest status out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select

from perf_pipelines.orchestrator.events import insert_events, orchestrator_status
from perf_pipelines.storage.db import ensure_schema
from perf_pipelines.storage.schema import orchestrator_events

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _event(seconds: int, kind: str, success: bool, agent: str = "perf-1", code: int | None = 200):
    return {
        "occurred_at": T0 + timedelta(seconds=seconds),
        "agent_id": agent,
        "kind": kind,
        "success": success,
        "status_code": code,
        "latency_ms": 3.5,
        "error": None if success else f"HTTP {code}",
        "detail": {"path": "/x", "summary": {"targets_up": 2}},
    }


def test_status_counts_failures_since_the_last_success(db_engine: Engine) -> None:
    ensure_schema(db_engine)
    with db_engine.begin() as connection:
        assert orchestrator_status(connection, "perf-1").last_attempt_at is None
        insert_events(
            connection,
            [
                _event(0, "register", True, code=201),
                _event(30, "heartbeat", True),
                _event(60, "heartbeat", False, code=500),
                _event(90, "heartbeat", False, code=503),
                _event(95, "heartbeat", True, agent="other"),
            ],
        )
    with db_engine.connect() as connection:
        status = orchestrator_status(connection, "perf-1")
        detail = connection.execute(
            select(orchestrator_events.c.detail).order_by(orchestrator_events.c.id).limit(1)
        ).scalar_one()
    assert status.last_attempt_at == T0 + timedelta(seconds=90)
    assert status.last_kind == "heartbeat" and status.last_success is False
    assert status.last_status_code == 503 and status.last_error == "HTTP 503"
    assert status.last_success_at == T0 + timedelta(seconds=30)
    assert status.consecutive_failures == 2
    assert detail == {"path": "/x", "summary": {"targets_up": 2}}


def test_no_success_ever_counts_every_failure(db_engine: Engine) -> None:
    ensure_schema(db_engine)
    with db_engine.begin() as connection:
        insert_events(connection, [_event(i, "register", False, code=None) for i in range(3)])
        assert insert_events(connection, []) == 0
        status = orchestrator_status(connection, "perf-1")
    assert status.last_success_at is None and status.consecutive_failures == 3
