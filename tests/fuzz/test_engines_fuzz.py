"""Property tests of the engine adapters through the collector's entry point
(`snapshots_from_text`, what `scrape_target` calls on a body) and the Prometheus source's
(`to_canonical` on families).

For pages built from each engine's own metric names with random labels (DP/TP ranks, model
names with escapes, 600-character names, failure reasons) and random values (NaN, ±Inf,
negative, 1e308), the adapters must:

- raise nothing but `ExpositionError`;
- return a bounded number of snapshots (at most one per model label value; one for engines
  without a model label);
- leave every canonical field None when the page has none of its source families, and the
  fields an engine never exports None whatever the page says;
- return only values the storage layer can write on both databases: finite floats or None,
  histograms with finite counts, JSON-safe settings/extra (PostgreSQL rejects NaN/Infinity
  in JSON and strings longer than the `model` column), model names ≤ 512 characters.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import fields
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine as Database

from perf_pipelines.engines import snapshots_from_text
from perf_pipelines.engines.canonical import (
    CANONICAL_VALUE_FIELDS,
    HISTOGRAM_FIELDS,
    CanonicalSnapshot,
    Engine,
    Histogram,
)
from perf_pipelines.engines.exposition import ExpositionError
from perf_pipelines.storage.db import ensure_schema
from perf_pipelines.storage.snapshots import SnapshotRow, insert_snapshots
from tests.fuzz.strategies import SOURCES, EnginePage, engine_pages

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODEL_COLUMN_LENGTH = 512  # metric_snapshots.model is String(512)
# Fields an engine never fills, whatever its page holds (docs/detection.md "not judged").
NEVER: dict[Engine, frozenset[str]] = {
    engine: frozenset(name for name, sources in table.items() if not sources)
    for engine, table in SOURCES.items()
}


def test_every_canonical_field_has_a_declared_source_per_engine() -> None:
    # Keeps SOURCES honest when a canonical field is added.
    declared = {f.name for f in fields(CanonicalSnapshot)} - {
        "model",
        "settings",
        "extra",
        "rejected",
    }
    for engine, table in SOURCES.items():
        assert set(table) == declared, engine


def assert_storable(snapshot: CanonicalSnapshot) -> None:
    for name in CANONICAL_VALUE_FIELDS:
        value = getattr(snapshot, name)
        assert value is None or (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ), (name, value)
    for name in HISTOGRAM_FIELDS:
        histogram: Histogram | None = getattr(snapshot, name)
        if histogram is None:
            continue
        assert len(histogram.cumulative) == len(histogram.bounds) + 1
        assert all(math.isfinite(b) for b in histogram.bounds)
        assert list(histogram.bounds) == sorted(set(histogram.bounds))
        assert all(math.isfinite(c) for c in histogram.cumulative), (name, histogram)
        assert math.isfinite(histogram.count), (name, histogram)
        json.dumps(histogram.to_json(), allow_nan=False)
    json.dumps(snapshot.settings, allow_nan=False)
    json.dumps(snapshot.extra, allow_nan=False)
    if snapshot.model is not None:
        assert 0 < len(snapshot.model) <= MODEL_COLUMN_LENGTH
        assert "\x00" not in snapshot.model


def check_page(page: EnginePage, hint: Engine | None) -> None:
    try:
        engine, snapshots = snapshots_from_text(page.text, hint)
    except ExpositionError:
        return
    assert engine is page.engine
    if page.engine in (Engine.TGI, Engine.LLAMACPP):
        assert len(snapshots) == 1
    else:
        # None when the page has engine metrics but no per-model gauge or token counter: the
        # collector stores that as down with a reason (collection/rounds.py).
        assert len(snapshots) <= min(len(page.models) + 1, page.series)
    models = [s.model for s in snapshots]
    assert len(models) == len(set(models)), "one snapshot per model"
    for snapshot in snapshots:
        assert_storable(snapshot)
        for field_name, sources in SOURCES[page.engine].items():
            if not page.present.intersection(sources):
                assert getattr(snapshot, field_name) is None, (field_name, page.present)
        for field_name in NEVER[page.engine]:
            assert getattr(snapshot, field_name) is None, field_name


@pytest.mark.parametrize("engine", list(Engine), ids=str)
def test_adapters_on_random_pages(engine: Engine) -> None:
    @FUZZ
    @given(engine_pages(engine), st.booleans())
    def run(page: EnginePage, with_hint: bool) -> None:
        check_page(page, engine if with_hint else None)

    run()


@pytest.mark.parametrize("engine", list(Engine), ids=str)
def test_a_wrong_hint_is_a_clear_error(engine: Engine) -> None:
    others = [e for e in Engine if e is not engine]

    @settings(max_examples=40, deadline=None)
    @given(engine_pages(engine), st.sampled_from(others))
    def run(page: EnginePage, hint: Engine) -> None:
        # A page whose label values hold NUL is refused before any engine is considered.
        with pytest.raises(ExpositionError, match=r"metrics found|NUL bytes"):
            snapshots_from_text(page.text, hint)

    run()


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "llamacpp:requests_processing",
                "llamacpp:requests_deferred",
                "llamacpp:kv_cache_usage_ratio",
                "llamacpp:tokens_predicted_total",
            ]
        ),
        st.floats(allow_nan=True, allow_infinity=True),
        min_size=1,
    )
)
def test_llamacpp_values_come_through_unchanged_or_as_none(values: dict[str, float]) -> None:
    """An oracle for the simplest adapter: one unlabelled series per family. A value outside
    its metric's domain (±Inf, negative, a KV use above 1) is None, with its reason."""
    body = "".join(f"# TYPE {name} gauge\n{name} {value!r}\n" for name, value in values.items())
    _, (snapshot,) = snapshots_from_text(body, Engine.LLAMACPP)
    fields_of = {
        "llamacpp:requests_processing": "requests_running",
        "llamacpp:requests_deferred": "requests_waiting",
        "llamacpp:kv_cache_usage_ratio": "kv_cache_usage",
        "llamacpp:tokens_predicted_total": "generation_tokens_total",
    }
    for name, value in values.items():
        field_name = fields_of[name]
        got = getattr(snapshot, field_name)
        upper = 1.0 if field_name == "kv_cache_usage" else math.inf
        if math.isfinite(value) and 0 <= value <= upper:
            assert got == value, (name, value, got)
        else:
            assert got is None, (name, value, got)
            # NaN is the formats' "no value" (a summary without observations): not measured.
            if not math.isnan(value):
                assert any(r.startswith(f"{field_name} ") for r in snapshot.rejected), snapshot


@pytest.mark.parametrize(
    ("body", "engine"),
    [
        # Found by the fuzzer: int(+Inf) in TGI's settings raised OverflowError.
        ("# TYPE tgi_batch_max_total_tokens gauge\ntgi_batch_max_total_tokens +Inf\n", Engine.TGI),
        # Non-finite values reached JSON columns: PostgreSQL refused the run's whole insert.
        (
            "# TYPE tgi_batch_current_max_tokens gauge\ntgi_batch_current_max_tokens +Inf\n"
            "# TYPE tgi_batch_max_total_tokens gauge\ntgi_batch_max_total_tokens 5\n",
            Engine.TGI,
        ),
        (
            "# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 1\n"
            "# TYPE llamacpp:n_decode_total counter\nllamacpp:n_decode_total +Inf\n",
            Engine.LLAMACPP,
        ),
        (
            "# TYPE vllm:time_to_first_token_seconds histogram\n"
            'vllm:time_to_first_token_seconds_bucket{model_name="m",le="0.1"} NaN\n'
            'vllm:time_to_first_token_seconds_bucket{model_name="m",le="+Inf"} 2\n'
            'vllm:time_to_first_token_seconds_count{model_name="m"} 2\n',
            Engine.VLLM,
        ),
        (
            "# TYPE sglang:page_size gauge\n"
            'sglang:page_size{model_name="m"} 1.7e308\nsglang:page_size{model_name="m",dp_rank="1"}'
            " 1.7e308\n# TYPE sglang:num_running_reqs gauge\n"
            'sglang:num_running_reqs{model_name="m"} 1e308\n'
            'sglang:num_running_reqs{model_name="m",dp_rank="1"} 1e308\n',
            Engine.SGLANG,
        ),
        # A model label longer than the `model` column: PostgreSQL refused the whole insert.
        (
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{model_name="{"m" * 600}"}} 1\n',
            Engine.VLLM,
        ),
    ],
)
def test_regressions_found_by_fuzzing(body: str, engine: Engine) -> None:
    detected, snapshots = snapshots_from_text(body, None)
    assert detected is engine
    for snapshot in snapshots:
        assert_storable(snapshot)


def test_long_model_names_stay_distinct_after_shortening() -> None:
    a, b = "m" * 600 + "-a", "m" * 600 + "-b"
    body = "# TYPE vllm:num_requests_running gauge\n" + "".join(
        f'vllm:num_requests_running{{model_name="{m}"}} 1\n' for m in (a, b)
    )
    _, snapshots = snapshots_from_text(body, Engine.VLLM)
    models = {s.model for s in snapshots}
    assert len(models) == 2
    assert all(m is not None and len(m) <= MODEL_COLUMN_LENGTH for m in models)


@pytest.fixture
def migrated(db_engine: Database) -> Database:
    ensure_schema(db_engine)
    return db_engine


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(page=st.sampled_from(list(Engine)).flatmap(engine_pages))
@example(  # a model name longer than the column: refused by PostgreSQL before the fix
    page=EnginePage(
        engine=Engine.VLLM,
        text="# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{model_name="{"m" * 600}"}} 1\n',
        present=frozenset({"vllm:num_requests_running"}),
        models=frozenset({"m" * 600}),
        series=1,
    )
)
def test_whatever_a_server_sends_is_stored_on_both_databases(
    migrated: Database, page: EnginePage
) -> None:
    """End to end from a body to rows: one server's page can never fail the run's insert (on
    PostgreSQL a refused row rolls back every target's rows of that run)."""
    try:
        engine, snapshots = snapshots_from_text(page.text, None)
    except ExpositionError:
        return
    now = datetime.now(UTC)
    rows = [
        SnapshotRow(
            run_id=f"fuzz-{uuid.uuid4().hex[:8]}",
            sample_index=0,
            target="fuzzed",
            engine=engine.value,
            model=snapshot.model,
            collected_at=now,
            up=True,
            error=None,
            scrape_ms=1.0,
            body_bytes=len(page.text),
            snapshot=snapshot,
        )
        for snapshot in snapshots
    ]
    with migrated.begin() as connection:
        assert insert_snapshots(connection, rows) == len(rows)
