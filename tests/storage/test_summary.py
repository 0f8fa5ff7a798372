"""fleet_summary on real databases: what the heartbeat, /metrics and the health check report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert

from perf_pipelines.engines.canonical import CanonicalSnapshot
from perf_pipelines.storage.db import ensure_schema
from perf_pipelines.storage.schema import (
    bottleneck_reports,
    orchestrator_events,
    tuning_recommendations,
)
from perf_pipelines.storage.snapshots import SnapshotRow, insert_snapshots
from perf_pipelines.storage.summary import fleet_summary

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _row(run: str, target: str, index: int, up: bool, error: str | None = None) -> SnapshotRow:
    return SnapshotRow(
        run_id=run,
        sample_index=index,
        target=target,
        engine="vllm",
        model="m" if up else None,
        collected_at=T0 + timedelta(minutes=5 if run == "new" else 0, seconds=5 * index),
        up=up,
        error=error,
        scrape_ms=3.0,
        body_bytes=100 if up else None,
        snapshot=CanonicalSnapshot(model="m", requests_running=1.0) if up else None,
    )


def _recommendation(rec_id: str, status: str, outcome: str | None, severity: str) -> dict:
    return {
        "id": rec_id,
        "created_at": T0,
        "last_seen_at": T0,
        "run_id": "new",
        "target": "a",
        "engine": "vllm",
        "capability": "kv_cache_optimization",
        "parameter": f"p-{rec_id}",
        "engine_flag": "--gpu-memory-utilization",
        "recommended_value": "0.9",
        "rationale": "r",
        "evidence": {},
        "confidence": 0.8,
        "severity": severity,
        "status": status,
        "outcome": outcome,
        "status_changed_at": T0,
    }


def test_empty_database_summarises_to_zeroes(db_engine: Engine) -> None:
    ensure_schema(db_engine)
    with db_engine.connect() as connection:
        summary = fleet_summary(connection)
    counts = (summary.targets, summary.targets_up, summary.open_total, summary.regressions)
    assert counts == (0, 0, 0, 0)
    assert summary.last_collection_at is None and summary.last_analysis_at is None


def test_summary_reads_the_latest_run_and_open_advice(db_engine: Engine) -> None:
    ensure_schema(db_engine)
    with db_engine.begin() as connection:
        insert_snapshots(
            connection,
            [
                _row("old", "a", 0, False, "connection refused"),  # older run: ignored
                _row("new", "a", 0, True),
                _row("new", "a", 1, False, "timed out after 5 s"),  # up once: counts as up
                _row("new", "b", 0, False, "timed out after 5 s"),
                _row("new", "c", 0, False, "HTTP 500"),
            ],
        )
        connection.execute(
            insert(bottleneck_reports),
            [
                {
                    "run_id": "new",
                    "created_at": T0,
                    "target": t,
                    "window_start": T0,
                    "window_end": T0,
                    "kind": kind,
                    "severity": severity,
                    "score": 0.5,
                    "evidence": {},
                    "summary": "s",
                }
                for t, kind, severity in (("a", "preemption", "critical"), ("b", "x", "warning"))
            ],
        )
        connection.execute(
            insert(tuning_recommendations),
            [
                _recommendation("r1", "open", None, "critical"),
                _recommendation("r2", "open", None, "critical"),
                _recommendation("r3", "applied", "regressed", "warning"),
                _recommendation("r4", "applied", "improved", "warning"),
            ],
        )
        connection.execute(
            insert(orchestrator_events),
            [
                {"occurred_at": T0, "agent_id": "x", "kind": "heartbeat", "success": ok}
                for ok in (True, False, False)
            ],
        )
    with db_engine.connect() as connection:
        summary = fleet_summary(connection)
    assert (summary.targets, summary.targets_up) == (3, 1)
    assert summary.scrape_errors == {"timed out after 5 s": 2, "HTTP 500": 1}
    assert summary.open_recommendations == {("kv_cache_optimization", "critical"): 2}
    assert summary.outcomes == {"regressed": 1, "improved": 1} and summary.regressions == 1
    assert summary.critical_bottlenecks == 1
    assert summary.orchestrator_failures == {"heartbeat": 2}
    assert summary.last_collection_at == T0 + timedelta(minutes=5, seconds=5)
