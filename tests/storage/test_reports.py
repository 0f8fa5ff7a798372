"""`bottleneck_reports` and `tuning_recommendations` on SQLite and PostgreSQL: re-runs add nothing,
repeated advice keeps its status, new advice supersedes the old, the view shows the newest."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Engine, func, insert, select, text, update

from perf_pipelines.analysis.detection import detect
from perf_pipelines.analysis.window import window_stats
from perf_pipelines.findings import BottleneckReport, Recommendation
from perf_pipelines.recommendations.rules import recommend
from perf_pipelines.storage.db import ensure_schema
from perf_pipelines.storage.reports import upsert_recommendations, write_reports
from perf_pipelines.storage.schema import bottleneck_reports, tuning_recommendations
from perf_pipelines.targets import Target
from tests.support.windows import frame, window_bounds

NOW = datetime(2026, 11, 24, 12, 15, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)
TARGETS = {
    "vllm-a": Target.model_validate(
        {
            "name": "vllm-a",
            "url": "http://127.0.0.1:8000/metrics",
            "engine": "vllm",
            "hardware": {"gpu": "H100-SXM-80GB", "count": 1},
            "config": {"gpu_memory_utilization": 0.8, "max_num_seqs": 64},
            "slo": {"itl_p95_ms": 60},
        }
    )
}


def _window() -> tuple[list[BottleneckReport], list[Recommendation]]:
    """vllm-a: KV pressure with preemptions (one report: the preemptions are its evidence);
    tgi-b: never answered (no model)."""
    pressured = [
        {
            "requests_running": 40.0,
            "requests_waiting": 0.0,
            "kv_cache_usage": 0.93 + 0.01 * (i % 3),
            "preemptions_total": 3.0 + 2 * i,
            "generation_tokens_total": 500.0 * i,
            "requests_finished_total": 10.0 * i,
        }
        for i in range(8)
    ]
    data = pd.concat(
        [
            frame(pressured),
            frame([{"down": "timeout after 5s"}] * 4, target="tgi-b", engine="tgi", model=None),
        ],
        ignore_index=True,
    )
    stats = window_stats(data, TARGETS, *window_bounds(data))
    reports = detect(stats, TARGETS).reports
    return reports, recommend(stats, reports, TARGETS)


@pytest.fixture
def engine(db_engine: Engine) -> Engine:
    ensure_schema(db_engine)
    return db_engine


def _report_rows(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return connection.execute(
            select(bottleneck_reports).order_by(bottleneck_reports.c.id)
        ).all()


def _recommendation_rows(engine: Engine) -> dict[str, Any]:
    with engine.connect() as connection:
        rows = connection.execute(select(tuning_recommendations)).all()
    return {row.id: row for row in rows}


def _open_view(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return connection.execute(
            text("SELECT * FROM open_recommendations ORDER BY target, parameter")
        ).all()


def _store(
    engine: Engine, run_id: str, recs: list[Recommendation], now: datetime
) -> tuple[Any, dict[tuple[str, str | None, str], int]]:
    reports, _ = _window()
    with engine.begin() as connection:
        ids = write_reports(connection, run_id, reports, now)
        return upsert_recommendations(connection, run_id, recs, now, ids), ids


def test_write_reports_is_idempotent_for_a_rerun(engine: Engine) -> None:
    reports, _ = _window()
    kinds = {(r.target, r.model, r.kind) for r in reports}
    assert ("tgi-b", None, "target_down") in kinds and len(kinds) == len(reports) == 2
    with engine.begin() as connection:
        first = write_reports(connection, "run-1", reports, NOW)
    with engine.begin() as connection:
        again = write_reports(connection, "run-1", reports, NOW)  # Dagster retried the step
    assert first == again and set(first) == kinds
    rows = _report_rows(engine)
    assert len(rows) == 2  # the model-less target_down row is not duplicated either
    stored = {(r.target, r.model, r.kind): r for r in rows}
    kv = stored[("vllm-a", "meta-llama/Llama-3.1-8B-Instruct", "kv_cache_pressure")]
    original = next(r for r in reports if r.kind == "kv_cache_pressure")
    assert kv.evidence == original.evidence and kv.severity == "critical"
    assert kv.window_start.tzinfo is not None and kv.created_at == NOW

    with engine.begin() as connection:
        next_run = write_reports(connection, "run-2", reports, LATER)
    assert len(_report_rows(engine)) == 4
    assert set(next_run.values()).isdisjoint(first.values())


def test_new_advice_is_stored_open_and_linked_to_its_report(engine: Engine) -> None:
    _, recs = _window()
    (rec,) = recs
    result, report_ids = _store(engine, "run-1", recs, NOW)
    assert (result.new, result.refreshed, result.superseded) == (1, 0, 0)
    row = _recommendation_rows(engine)[rec.id]
    assert (row.status, row.target, row.parameter, row.engine_flag) == (
        "open",
        "vllm-a",
        "gpu_memory_utilization",
        "--gpu-memory-utilization",
    )
    assert row.current_value == "0.8" and row.recommended_value == str(rec.recommended_value)
    assert row.report_id == report_ids[("vllm-a", rec.model, rec.report_kind)]
    assert row.created_at == NOW and row.status_changed_at == NOW and row.outcome is None
    assert row.evidence == rec.evidence


def test_the_same_advice_again_refreshes_and_keeps_its_status(engine: Engine) -> None:
    _, recs = _window()
    (rec,) = recs
    _store(engine, "run-1", recs, NOW)
    result, _ = _store(engine, "run-2", recs, LATER)
    assert (result.new, result.refreshed, result.superseded) == (0, 1, 0)
    row = _recommendation_rows(engine)[rec.id]
    assert (row.status, row.created_at, row.last_seen_at, row.run_id) == (
        "open",
        NOW,
        LATER,
        "run-2",
    )

    # The orchestrator applied it; the next cycle still sees the pressure and gives it again.
    with engine.begin() as connection:
        connection.execute(
            update(tuning_recommendations)
            .where(tuning_recommendations.c.id == rec.id)
            .values(status="applied", status_changed_at=LATER)
        )
    even_later = LATER + timedelta(minutes=5)
    result, _ = _store(engine, "run-3", recs, even_later)
    assert (result.new, result.refreshed) == (0, 1)
    rows = _recommendation_rows(engine)
    assert len(rows) == 1
    assert rows[rec.id].status == "applied" and rows[rec.id].status_changed_at == LATER
    assert rows[rec.id].last_seen_at == even_later
    assert _open_view(engine) == []  # an applied recommendation is not reopened


def test_different_advice_supersedes_the_older_open_one(engine: Engine) -> None:
    _, (old,) = _window()
    _store(engine, "run-1", [old], NOW)
    new = replace(old, recommended_value=0.9, current_value=0.85)
    assert new.id != old.id
    result, _ = _store(engine, "run-2", [new], LATER)
    assert (result.new, result.refreshed, result.superseded) == (1, 0, 1)
    rows = _recommendation_rows(engine)
    assert rows[old.id].status == "superseded" and rows[old.id].status_changed_at == LATER
    assert rows[new.id].status == "open"
    (shown,) = _open_view(engine)
    assert (shown.id, shown.recommended_value) == (new.id, "0.9")


def test_an_applied_one_is_not_superseded_by_new_advice(engine: Engine) -> None:
    _, (old,) = _window()
    _store(engine, "run-1", [old], NOW)
    with engine.begin() as connection:
        connection.execute(
            update(tuning_recommendations).values(status="applied", status_changed_at=NOW)
        )
    new = replace(old, recommended_value=0.9)
    result, _ = _store(engine, "run-2", [new], LATER)
    assert result.superseded == 0
    rows = _recommendation_rows(engine)
    assert (rows[old.id].status, rows[new.id].status) == ("applied", "open")


def test_advice_that_comes_back_is_reopened_and_supersedes_its_replacement(
    engine: Engine,
) -> None:
    _, (first,) = _window()
    second = replace(first, recommended_value=0.9)
    _store(engine, "run-1", [first], NOW)
    _store(engine, "run-2", [second], LATER)
    back = LATER + timedelta(minutes=5)
    result, _ = _store(engine, "run-3", [first], back)  # the evidence swung back
    assert result.superseded == 1
    rows = _recommendation_rows(engine)
    assert (rows[first.id].status, rows[second.id].status) == ("open", "superseded")
    assert rows[first.id].status_changed_at == back
    (shown,) = _open_view(engine)
    assert shown.id == first.id  # the view shows this cycle's advice, not the stale one


def test_other_parameters_and_targets_are_left_alone(engine: Engine) -> None:
    _, (memory,) = _window()
    batch = replace(
        memory,
        capability="batch_size_tuning",
        parameter="max_num_seqs",
        engine_flag="--max-num-seqs",
        current_value=64,
        recommended_value=48,
        direction="lower",
    )
    elsewhere = replace(memory, target="vllm-b")
    _store(engine, "run-1", [memory, batch, elsewhere], NOW)
    result, _ = _store(engine, "run-2", [replace(memory, recommended_value=0.9)], LATER)
    assert result.superseded == 1
    statuses = {(r.target, r.parameter, r.status) for r in _recommendation_rows(engine).values()}
    assert statuses == {
        ("vllm-a", "gpu_memory_utilization", "superseded"),
        ("vllm-a", "gpu_memory_utilization", "open"),
        ("vllm-a", "max_num_seqs", "open"),
        ("vllm-b", "gpu_memory_utilization", "open"),
    }
    shown = [(r.target, r.parameter, r.recommended_value) for r in _open_view(engine)]
    assert shown == [
        ("vllm-a", "gpu_memory_utilization", "0.9"),
        ("vllm-a", "max_num_seqs", "48"),
        ("vllm-b", "gpu_memory_utilization", str(memory.recommended_value)),
    ]


def test_the_view_shows_only_the_newest_open_one_per_target_and_parameter(engine: Engine) -> None:
    """Two open rows for one knob (e.g. written by overlapping runs): the view picks the newest,
    and on a tie of created_at the higher id, the same way on both databases."""
    _, (rec,) = _window()
    base = {
        "run_id": "run-x",
        "target": "vllm-a",
        "engine": "vllm",
        "model": rec.model,
        "capability": rec.capability,
        "parameter": rec.parameter,
        "engine_flag": rec.engine_flag,
        "current_value": "0.8",
        "rationale": "r",
        "evidence": {},
        "confidence": 0.5,
        "status_changed_at": NOW,
    }
    rows = [
        {"id": "rec-older", "created_at": NOW, "recommended_value": "0.85", "status": "open"},
        {"id": "rec-newer", "created_at": LATER, "recommended_value": "0.9", "status": "open"},
        {
            "id": "rec-newest-closed",
            "created_at": LATER + timedelta(1),
            "recommended_value": "0.95",
        },
        {"id": "rec-tie-a", "created_at": NOW, "recommended_value": "64", "status": "open"},
        {"id": "rec-tie-b", "created_at": NOW, "recommended_value": "48", "status": "open"},
    ]
    rows[2]["status"] = "rejected"
    for row in rows[3:]:
        row["parameter"] = "max_num_seqs"
    with engine.begin() as connection:
        connection.execute(
            insert(tuning_recommendations),
            [base | {"last_seen_at": r["created_at"]} | r for r in rows],
        )
    shown = {(r.parameter, r.id) for r in _open_view(engine)}
    assert shown == {("gpu_memory_utilization", "rec-newer"), ("max_num_seqs", "rec-tie-b")}
    with engine.connect() as connection:
        total = connection.execute(select(func.count()).select_from(tuning_recommendations))
        assert total.scalar() == 5
