"""The orchestrator's answers (applied / rejected) on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, insert, select

from perf_pipelines.storage.db import ensure_schema
from perf_pipelines.storage.recommendation_status import (
    IllegalTransition,
    RecommendationNotFound,
    list_recommendations,
    set_status,
)
from perf_pipelines.storage.schema import tuning_recommendations

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def recommendation(
    rec_id: str,
    status: str = "open",
    *,
    target: str = "vllm-a",
    parameter: str = "max_num_seqs",
    created_at: datetime = T0,
    **extra: object,
) -> dict:
    return {
        "id": rec_id,
        "created_at": created_at,
        "last_seen_at": created_at,
        "run_id": "run-1",
        "target": target,
        "engine": "vllm",
        "model": "llama",
        "capability": "batch_size_tuning",
        "parameter": parameter,
        "engine_flag": "--max-num-seqs",
        "current_value": "128",
        "recommended_value": "256",
        "rationale": "queue at the batch limit",
        "evidence": {"queue_p95": 40},
        "confidence": 0.8,
        "severity": "warning",
        "status": status,
        "status_changed_at": created_at,
    } | extra


@pytest.fixture
def engine(db_engine: Engine) -> Engine:
    ensure_schema(db_engine)
    with db_engine.begin() as connection:
        connection.execute(
            insert(tuning_recommendations),
            [
                recommendation("rec-open"),
                recommendation("rec-open2", parameter="gpu_memory_utilization"),
                recommendation("rec-superseded", "superseded", parameter="p2"),
                recommendation("rec-expired", "expired", parameter="p3"),
            ],
        )
    return db_engine


def _row(engine: Engine, rec_id: str):
    with engine.connect() as connection:
        table = tuning_recommendations
        return connection.execute(select(table).where(table.c.id == rec_id)).mappings().one()


def test_applying_an_open_recommendation_stamps_the_instant(engine: Engine) -> None:
    now = T0 + timedelta(hours=1)
    with engine.begin() as connection:
        row = set_status(connection, "rec-open", "applied", now, note="rolled out to 4 replicas")
    assert row["status"] == "applied"
    assert row["status_changed_at"] == now
    assert row["outcome"] is None and row["outcome_evidence"] is None  # left to outcome tracking
    stored = _row(engine, "rec-open")
    assert (stored.status, stored.status_changed_at) == ("applied", now)
    # other rows untouched
    assert _row(engine, "rec-open2").status == "open"


@pytest.mark.parametrize("status", ["applied", "rejected"])
def test_the_same_answer_again_is_idempotent(engine: Engine, status: str) -> None:
    first = T0 + timedelta(hours=1)
    with engine.begin() as connection:
        set_status(connection, "rec-open", status, first)
    with engine.begin() as connection:
        again = set_status(connection, "rec-open", status, first + timedelta(minutes=5))
    assert again["status"] == status
    assert again["status_changed_at"] == first  # the instant of the change, not of the retry


@pytest.mark.parametrize(
    ("rec_id", "first", "then", "current"),
    [
        ("rec-open", "applied", "rejected", "applied"),
        ("rec-open", "rejected", "applied", "rejected"),
        ("rec-superseded", None, "applied", "superseded"),
        ("rec-expired", None, "rejected", "expired"),
    ],
)
def test_illegal_transitions_name_both_statuses(
    engine: Engine, rec_id: str, first: str | None, then: str, current: str
) -> None:
    if first is not None:
        with engine.begin() as connection:
            set_status(connection, rec_id, first, T0 + timedelta(hours=1))
    before = _row(engine, rec_id)
    with pytest.raises(IllegalTransition) as raised, engine.begin() as connection:
        set_status(connection, rec_id, then, T0 + timedelta(hours=2))
    assert (raised.value.current, raised.value.requested) == (current, then)
    assert current in str(raised.value) and then in str(raised.value)
    assert _row(engine, rec_id) == before


def test_unknown_id_and_non_orchestrator_status(engine: Engine) -> None:
    with pytest.raises(RecommendationNotFound), engine.begin() as connection:
        set_status(connection, "rec-nope", "applied", T0)
    for status in ("open", "superseded", "expired", "APPLIED"):
        with pytest.raises(ValueError, match="status must be"), engine.begin() as connection:
            set_status(connection, "rec-open", status, T0)
    assert _row(engine, "rec-open").status == "open"


def test_racing_answers_have_exactly_one_winner(engine: Engine) -> None:
    """Eight threads answer at once, half `applied`, half `rejected`: one status wins, the
    threads that asked for it all succeed, the others get IllegalTransition."""
    barrier = threading.Barrier(8)
    results: dict[int, str] = {}

    def answer(index: int) -> None:
        status = "applied" if index % 2 else "rejected"
        barrier.wait()
        try:
            with engine.begin() as connection:
                set_status(connection, "rec-open", status, T0 + timedelta(seconds=index))
            results[index] = status
        except IllegalTransition as exc:
            results[index] = f"illegal:{exc.current}"

    threads = [threading.Thread(target=answer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    winner = _row(engine, "rec-open").status
    loser = "rejected" if winner == "applied" else "applied"
    expected = {
        i: winner if (i % 2 == 1) == (winner == "applied") else f"illegal:{winner}"
        for i in range(8)
    }
    assert results == expected, (winner, loser)


def test_listing_reads_the_open_view_or_the_table(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(
            insert(tuning_recommendations),
            [
                # newer open advice for the same (target, parameter): only it is in the view
                recommendation("rec-newer", created_at=T0 + timedelta(minutes=5)),
                recommendation("rec-b", target="sglang-b", parameter="mem_fraction_static"),
            ],
        )
        assert [r["id"] for r in list_recommendations(connection, "open")] == [
            "rec-newer",
            "rec-b",
            "rec-open2",
        ]
        opened = list_recommendations(connection, "open", target="vllm-a")
        assert {r["id"] for r in opened} == {"rec-newer", "rec-open2"}
        assert opened[0]["evidence"] == {"queue_p95": 40}  # JSON decoded on both databases
        assert opened[0]["created_at"].tzinfo is not None
        assert len(list_recommendations(connection, "open", limit=1)) == 1
        superseded = list_recommendations(connection, "superseded")
        assert [r["id"] for r in superseded] == ["rec-superseded"]
        assert list_recommendations(connection, "applied") == []
        assert list_recommendations(connection, "open", target="nobody") == []
        with pytest.raises(ValueError):
            list_recommendations(connection, "bogus")
