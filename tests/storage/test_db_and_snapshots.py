import json
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, func, insert, inspect, select, text

from perf_pipelines.analysis.window import window_stats
from perf_pipelines.engines.canonical import CanonicalSnapshot, Histogram
from perf_pipelines.storage.db import (
    HEAD_REVISION,
    MIGRATIONS_DIR,
    current_revision,
    downgrade,
    ensure_schema,
    upgrade,
)
from perf_pipelines.storage.schema import metadata, metric_snapshots, tuning_recommendations
from perf_pipelines.storage.snapshots import SnapshotRow, insert_snapshots, load_snapshots

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def _row(sample: int, target: str = "vllm-a", model: str | None = "llama", up: bool = True):
    snapshot = CanonicalSnapshot(
        model=model,
        requests_running=12,
        requests_waiting=0,
        kv_cache_usage=0.42,
        prompt_tokens_total=1000.0 * (sample + 1),
        ttft_seconds=Histogram(
            bounds=(0.1, 0.5),
            cumulative=tuple(c * (sample + 1) for c in (3, 8, 9)),
            sum=2.5 * (sample + 1),
            count=9 * (sample + 1),
        ),
        settings={"gpu_memory_utilization": 0.9, "enable_prefix_caching": True},
    )
    return SnapshotRow(
        run_id="run-1",
        sample_index=sample,
        target=target,
        engine="vllm",
        model=model,
        collected_at=T0 + timedelta(seconds=15 * sample),
        up=up,
        error=None if up else "timeout after 5s",
        scrape_ms=12.5,
        body_bytes=20_000,
        snapshot=snapshot if up else None,
    )


def test_migrations_create_every_table_and_the_view(db_engine: Engine) -> None:
    ensure_schema(db_engine)
    assert current_revision(db_engine) == HEAD_REVISION
    inspector = inspect(db_engine)
    assert {
        "metric_snapshots",
        "bottleneck_reports",
        "tuning_recommendations",
        "agent_health",
        "orchestrator_events",
    } <= set(inspector.get_table_names())
    assert "open_recommendations" in inspector.get_view_names()


def test_head_revision_is_the_newest_migration() -> None:
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    assert script.get_current_head() == HEAD_REVISION


# SQLite cannot reflect the expression indexes (unique on coalesce(model, '')), so Alembic skips
# them there with a warning; PostgreSQL compares them too.
@pytest.mark.filterwarnings("ignore:.*expression-based index")
def test_migrations_build_exactly_the_tables_and_indexes_the_code_declares(
    db_engine: Engine,
) -> None:
    upgrade(db_engine)
    with db_engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []


def test_downgrade_and_upgrade_round_trip(db_engine: Engine) -> None:
    upgrade(db_engine)
    downgrade(db_engine, "base")
    assert current_revision(db_engine) is None
    assert "metric_snapshots" not in inspect(db_engine).get_table_names()
    upgrade(db_engine)
    assert current_revision(db_engine) == HEAD_REVISION


def test_rows_round_trip_with_nulls_histograms_and_utc(db_engine: Engine) -> None:
    ensure_schema(db_engine)
    rows = [_row(0), _row(1), _row(0, target="tgi-b", model=None, up=False)]
    with db_engine.begin() as connection:
        assert insert_snapshots(connection, rows) == 3
    with db_engine.connect() as connection:
        frame = load_snapshots(connection, since=T0 - timedelta(minutes=1))
    assert len(frame) == 3
    first = frame[(frame.target == "vllm-a") & (frame.sample_index == 0)].iloc[0]
    assert first.kv_cache_usage == pytest.approx(0.42)
    assert first.ttft_seconds == {
        "bounds": [0.1, 0.5],
        "cumulative": [3, 8, 9],
        "sum": 2.5,
        "count": 9,
    }
    assert first.settings["enable_prefix_caching"] is True
    assert first.collected_at.tzinfo is not None
    # values the engine does not export stay NULL, never 0
    assert first.preemptions_total is None or first.preemptions_total != first.preemptions_total
    down = frame[frame.target == "tgi-b"].iloc[0]
    assert not down.up and down.error == "timeout after 5s"


def test_histograms_can_stay_json_text_and_analyse_the_same(db_engine: Engine) -> None:
    """The analysis assets load without decoding every histogram; the statistics are equal."""
    ensure_schema(db_engine)
    rows = [_row(0), _row(1), _row(2), _row(0, target="tgi-b", model=None, up=False)]
    with db_engine.begin() as connection:
        insert_snapshots(connection, rows)
    with db_engine.connect() as connection:
        decoded = load_snapshots(connection, since=T0 - timedelta(minutes=1))
        text_frame = load_snapshots(
            connection, since=T0 - timedelta(minutes=1), decode_histograms=False
        )
    first = text_frame[(text_frame.target == "vllm-a") & (text_frame.sample_index == 0)].iloc[0]
    assert isinstance(first.ttft_seconds, str)
    assert json.loads(first.ttft_seconds) == decoded.ttft_seconds[first.name]
    assert text_frame[text_frame.target == "tgi-b"].ttft_seconds.iloc[0] is None
    assert first.settings == {"gpu_memory_utilization": 0.9, "enable_prefix_caching": True}
    bounds = (T0 - timedelta(minutes=1), T0 + timedelta(minutes=1))
    from_text, from_dicts = (
        window_stats(text_frame, {}, *bounds),
        window_stats(decoded, {}, *bounds),
    )
    assert len(from_text) == len(from_dicts) == 2
    for a, b in zip(from_text, from_dicts, strict=True):
        assert (a.quantiles, a.observations, a.rates) == (b.quantiles, b.observations, b.rates)
    vllm = next(stats for stats in from_text if stats.target == "vllm-a")
    assert vllm.observations["ttft"] == 18 and vllm.quantiles["ttft_p95"] is not None


def test_reinserting_a_run_is_idempotent(db_engine: Engine) -> None:
    ensure_schema(db_engine)
    rows = [_row(0), _row(1), _row(0, target="tgi-b", model=None, up=False)]
    with db_engine.begin() as connection:
        insert_snapshots(connection, rows)
    with db_engine.begin() as connection:
        assert insert_snapshots(connection, rows) == 0
    with db_engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(metric_snapshots)).scalar() == 3


def test_a_failed_transaction_leaves_no_rows(db_engine: Engine) -> None:
    ensure_schema(db_engine)
    with pytest.raises(RuntimeError), db_engine.begin() as connection:
        insert_snapshots(connection, [_row(0), _row(1)])
        raise RuntimeError("the run died before commit")
    with db_engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(metric_snapshots)).scalar() == 0


def test_naive_timestamps_are_refused(db_engine: Engine) -> None:
    ensure_schema(db_engine)
    row = _row(0)
    record = row.as_record() | {"collected_at": datetime(2026, 1, 1)}
    with pytest.raises(Exception, match="naive datetime"), db_engine.begin() as connection:
        connection.execute(insert(metric_snapshots), [record])


def test_open_recommendations_view_shows_newest_open_per_parameter(db_engine: Engine) -> None:
    ensure_schema(db_engine)

    def rec(rec_id: str, minutes: int, status: str = "open", parameter: str = "max_num_seqs"):
        at = T0 + timedelta(minutes=minutes)
        return {
            "id": rec_id,
            "created_at": at,
            "last_seen_at": at,
            "run_id": "r",
            "target": "vllm-a",
            "engine": "vllm",
            "capability": "batch_size_tuning",
            "parameter": parameter,
            "engine_flag": "--max-num-seqs",
            "recommended_value": "384",
            "rationale": "queue persists at the batch limit",
            "evidence": {},
            "confidence": 0.8,
            "severity": "warning",
            "status": status,
            "status_changed_at": at,
        }

    with db_engine.begin() as connection:
        connection.execute(
            insert(tuning_recommendations),
            [
                rec("old", 0),
                rec("new", 5),
                rec("rejected", 9, status="rejected"),
                rec("kv", 1, parameter="gpu_memory_utilization"),
            ],
        )
    with db_engine.connect() as connection:
        ids = connection.execute(text("SELECT id FROM open_recommendations ORDER BY id")).scalars()
        assert list(ids) == ["kv", "new"]
