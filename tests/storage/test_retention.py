"""Retention on real databases: old rows go in batches, recent ones and advice history stay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select

from perf_pipelines.dagster_defs.resources import DatabaseResource
from perf_pipelines.dagster_defs.retention import RetentionResource, retention
from perf_pipelines.engines.canonical import CanonicalSnapshot
from perf_pipelines.storage import retention as retention_module
from perf_pipelines.storage.db import ensure_schema
from perf_pipelines.storage.retention import delete_older_than, expire_stale_recommendations
from perf_pipelines.storage.schema import (
    agent_health,
    bottleneck_reports,
    metric_snapshots,
    orchestrator_events,
    tuning_recommendations,
)
from perf_pipelines.storage.snapshots import SnapshotRow, insert_snapshots

NOW = datetime.now(UTC).replace(microsecond=0)
OLD, RECENT = NOW - timedelta(days=20), NOW - timedelta(days=1)


def _snapshots(at: datetime, count: int, run: str) -> list[SnapshotRow]:
    return [
        SnapshotRow(
            run_id=run,
            sample_index=i,
            target="vllm-a",
            engine="vllm",
            model="m",
            collected_at=at + timedelta(seconds=5 * i),
            up=True,
            error=None,
            scrape_ms=2.0,
            body_bytes=100,
            snapshot=CanonicalSnapshot(model="m", requests_running=1.0),
        )
        for i in range(count)
    ]


def _recommendation(rec_id: str, status: str, last_seen: datetime) -> dict[str, Any]:
    return {
        "id": rec_id,
        "created_at": last_seen,
        "last_seen_at": last_seen,
        "run_id": "r",
        "target": "vllm-a",
        "engine": "vllm",
        "capability": "batch_size_tuning",
        "parameter": f"p-{rec_id}",
        "engine_flag": "--max-num-seqs",
        "recommended_value": "64",
        "rationale": "r",
        "evidence": {},
        "confidence": 0.7,
        "status": status,
        "status_changed_at": last_seen,
    }


def _fill(engine: Engine) -> None:
    ensure_schema(engine)
    with engine.begin() as connection:
        insert_snapshots(connection, _snapshots(OLD, 7, "old") + _snapshots(RECENT, 3, "new"))
        connection.execute(
            insert(bottleneck_reports),
            [
                {
                    "run_id": run,
                    "created_at": at,
                    "target": "vllm-a",
                    "window_start": at,
                    "window_end": at,
                    "kind": "preemption",
                    "severity": "warning",
                    "score": 0.5,
                    "evidence": {},
                    "summary": "s",
                }
                for run, at in (("old", OLD), ("new", RECENT))
            ],
        )
        connection.execute(
            insert(agent_health),
            [
                {"checked_at": at, "agent_id": "a", "status": "healthy", "components": {}}
                for at in (OLD, RECENT)
            ],
        )
        connection.execute(
            insert(orchestrator_events),
            [{"occurred_at": OLD, "agent_id": "a", "kind": "heartbeat", "success": True}],
        )
        connection.execute(
            insert(tuning_recommendations), [_recommendation("applied-long-ago", "applied", OLD)]
        )


def _count(engine: Engine, table: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


def test_old_rows_are_deleted_in_batches_and_recent_ones_kept(
    db_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(db_engine)
    monkeypatch.setattr(retention_module, "DELETE_BATCH", 3)  # 7 old snapshots: 3 + 3 + 1
    result = delete_older_than(db_engine, NOW - timedelta(days=14))
    assert result.deleted == {
        "metric_snapshots": 7,
        "bottleneck_reports": 1,
        "agent_health": 1,
        "orchestrator_events": 1,
    }
    assert _count(db_engine, metric_snapshots) == 3
    assert _count(db_engine, bottleneck_reports) == 1
    assert _count(db_engine, tuning_recommendations) == 1  # the answer history stays
    again = delete_older_than(db_engine, NOW - timedelta(days=14))
    assert set(again.deleted.values()) == {0}


def test_open_advice_not_given_again_expires(db_engine: Engine) -> None:
    ensure_schema(db_engine)
    with db_engine.begin() as connection:
        connection.execute(
            insert(tuning_recommendations),
            [
                _recommendation("stale", "open", NOW - timedelta(hours=3)),
                _recommendation("fresh", "open", NOW - timedelta(minutes=5)),
                _recommendation("answered", "applied", NOW - timedelta(hours=3)),
            ],
        )
        expired = expire_stale_recommendations(connection, NOW - timedelta(hours=1), NOW)
    assert expired == 1
    with db_engine.connect() as connection:
        rows = connection.execute(
            select(tuning_recommendations.c.id, tuning_recommendations.c.status)
        ).all()
        statuses = {row.id: row.status for row in rows}
        open_ids = set(connection.exec_driver_sql("SELECT id FROM open_recommendations").scalars())
    assert statuses == {"stale": "expired", "fresh": "open", "answered": "applied"}
    assert open_ids == {"fresh"}


def test_retention_job_runs_in_process(sqlite_url: str) -> None:
    resources = {
        "database": DatabaseResource(url=sqlite_url),
        "retention": RetentionResource(days=14),
    }
    engine = DatabaseResource(url=sqlite_url).get_engine()
    _fill(engine)
    result = retention.execute_in_process(resources=resources)
    assert result.success
    (materialization,) = [
        event for event in result.all_events if event.event_type_value == "STEP_OUTPUT"
    ]
    metadata = materialization.event_specific_data.metadata  # type: ignore[union-attr]
    assert metadata["metric_snapshots"].value == 7
    assert _count(engine, metric_snapshots) == 3
