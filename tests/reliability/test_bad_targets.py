"""One `metric_snapshots` run against a fleet in which nearly every target misbehaves, on SQLite
and PostgreSQL: each fault is stored as what it is (down with its reason, or up with NULL where a
value was unusable), and nothing is lost or duplicated — every target has exactly one row per
sample, the unique key holds, the two well-behaved targets and an earlier run's rows are intact.

The collector's unit tests (tests/collection/test_collector.py) cover these payloads one target
at a time; here they share one round, one transaction and one database.
"""

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import materialize
from sqlalchemy import select

from perf_pipelines.dagster_defs.resources import DatabaseResource, ScraperResource, TargetsResource
from perf_pipelines.dagster_defs.snapshots import (
    metric_snapshots,
    snapshot_values_valid,
    targets_reachable,
)
from perf_pipelines.engines import snapshots_from_text
from perf_pipelines.engines.canonical import CanonicalSnapshot
from perf_pipelines.storage.db import create_db_engine
from perf_pipelines.storage.schema import metric_snapshots as table
from perf_pipelines.storage.snapshots import SnapshotRow, insert_snapshots
from tests.collection.test_collector import MODEL, VLLM_BODY
from tests.reliability.support import (
    duplicate_snapshot_keys,
    huge,
    rows_by_run,
    serve_lazily,
    write_targets,
)
from tests.support.http_servers import Route, closed_port, serve

FIXTURES = Path(__file__).parent.parent / "fixtures" / "expositions"
SGLANG_BODY = (FIXTURES / "sglang_0_5.txt").read_bytes()
SAMPLES = 2
TIMEOUT_S = 2.0
CAP = 4 * 1024 * 1024  # a quarter of the default SCRAPE_MAX_BYTES: keeps the round quick
HUNDRED_MB = 100_000_000
FUTURE_S = 4_102_444_800  # 2100-01-01T00:00:00Z
L = f'{{engine="0",model_name="{MODEL}"}}'


def _vllm(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


DUPLICATES = _vllm(
    "# TYPE vllm:num_requests_running gauge",
    f"vllm:num_requests_running{L} 7",
    f"vllm:num_requests_running{L} 9",  # the same series again: the later value wins
    "# TYPE vllm:num_preemptions_total counter",
    f"vllm:num_preemptions_total{L} 4",
    f"vllm:num_preemptions_total{L} 4",  # repeated, not added: 4, never 8
)
NAN_INF = _vllm(
    "# TYPE vllm:num_requests_running gauge",
    f"vllm:num_requests_running{L} NaN",
    "# TYPE vllm:num_requests_waiting gauge",
    f"vllm:num_requests_waiting{L} +Inf",
    "# TYPE vllm:kv_cache_usage_perc gauge",
    f"vllm:kv_cache_usage_perc{L} NaN",
    "# TYPE vllm:num_preemptions_total counter",
    f"vllm:num_preemptions_total{L} -Inf",
    "# TYPE vllm:prompt_tokens_total counter",
    f"vllm:prompt_tokens_total{L} 5",
    "# TYPE vllm:time_to_first_token_seconds histogram",
    f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.1",model_name="{MODEL}"}} NaN',
    f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",model_name="{MODEL}"}} +Inf',
    f"vllm:time_to_first_token_seconds_sum{L} NaN",
    f"vllm:time_to_first_token_seconds_count{L} +Inf",
    "# TYPE vllm:inter_token_latency_seconds histogram",
    f'vllm:inter_token_latency_seconds_bucket{{engine="0",le="0.05",model_name="{MODEL}"}} 3',
    f'vllm:inter_token_latency_seconds_bucket{{engine="0",le="+Inf",model_name="{MODEL}"}} 4',
    f"vllm:inter_token_latency_seconds_sum{L} 0.1",
    f"vllm:inter_token_latency_seconds_count{L} 4",
)
# Every sample stamped in 2100 (0.0.4 timestamps are milliseconds), and a start time there too.
FUTURE = (
    "\n".join(
        f"{line} {FUTURE_S * 1000}" if line and not line.startswith("#") else line
        for line in VLLM_BODY.decode().splitlines()
    )
    + f"\nprocess_start_time_seconds {FUTURE_S}\n"
).encode()
CUT_AT_LINE = VLLM_BODY[: VLLM_BODY.index(b"# HELP vllm:kv_cache_usage_perc")]
NOT_UTF8 = VLLM_BODY.replace(b"Number of requests", b"Number of r\xe9quests \xff\xfe", 1)


@dataclass(frozen=True)
class Fault:
    path: str
    down: str | None = None  # expected substring of the stored error; None: the target is up
    engine: str = "vllm"


FAULTS: dict[str, Fault] = {
    "html-200": Fault("/html", down="unexpected content type 'text/html'"),
    "html-as-text-plain": Fault("/html-plain", down="invalid exposition", engine="auto"),
    "truncated-content-length": Fault("/truncated-length", down="protocol error"),
    "truncated-mid-line": Fault("/truncated-mid-line", down="invalid exposition"),
    "truncated-at-line-end": Fault("/truncated-at-line"),
    "endless-chunked": Fault("/endless", down=f"body exceeds the {CAP}-byte cap"),
    "100mb-chunked": Fault("/huge-chunked", down=f"body exceeds the {CAP}-byte cap"),
    "100mb-declared": Fault(
        "/huge-declared", down=f"body of {HUNDRED_MB} bytes exceeds the {CAP}-byte cap"
    ),
    "not-utf8": Fault("/not-utf8", down="body is not UTF-8"),
    "duplicate-series": Fault("/duplicates"),
    "nan-inf": Fault("/nan-inf"),
    "future-timestamps": Fault("/future"),
    "stall-mid-body": Fault("/stall", down=f"timeout after {TIMEOUT_S:g}s"),
    "dns-failure": Fault("dns", down="connection failed"),
    "connection-refused": Fault("refused", down="connection failed"),
}
GOOD = {"good-vllm": "/good", "good-sglang": "/sglang"}
# The `error` of an up row: the values refused as outside their domain, and why (NaN is "no
# value" in the formats and dropped without a word; ±Inf and the start time in 2100 are refused).
REJECTED = {
    "nan-inf": "values rejected: requests_waiting inf (not finite); preemptions_total -inf "
    "(not finite); ttft_seconds (non-finite bucket count)",
    "future-timestamps": f"values rejected: process_start_time {FUTURE_S} (in the future)",
}


@dataclass
class Zoo:
    database_url: str
    result: Any
    started: datetime
    finished: datetime
    elapsed_s: float
    rows: dict[tuple[str, int], Any]  # (target, sample_index) → row of the run
    counts_before: dict[str, int]
    counts_after: dict[str, int]
    earlier_before: list[Any]
    earlier_after: list[Any]
    duplicates: list[Any]


def _seed_earlier_run(database_url: str) -> None:
    """A previous cycle's rows for the two good targets: they must come through untouched."""
    then = datetime.now(UTC) - timedelta(minutes=3)
    rows = [
        SnapshotRow(run_id="earlier-run", sample_index=i, target=name, engine="vllm",
                    model=MODEL, collected_at=then + timedelta(seconds=i), up=True, error=None,
                    scrape_ms=2.0, body_bytes=100,
                    snapshot=CanonicalSnapshot(model=MODEL, requests_running=1.0 + i))
        for name in GOOD for i in range(2)
    ]  # fmt: skip
    engine = DatabaseResource(url=database_url).get_engine()
    with engine.begin() as connection:
        insert_snapshots(connection, rows)


def _snapshot_state(database_url: str) -> tuple[dict[str, int], list[Any]]:
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as connection:
            earlier = connection.execute(
                select(table).where(table.c.run_id == "earlier-run").order_by(table.c.id)
            ).all()
            return rows_by_run(connection), earlier
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def zoo(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    url = module_database_url
    _seed_earlier_run(url)
    counts_before, earlier_before = _snapshot_state(url)
    static_routes = {
        "/good": Route(body=VLLM_BODY),
        "/sglang": Route(body=SGLANG_BODY),
        "/html": Route(body=b"<html><body>502 Bad Gateway</body></html>", content_type="text/html"),
        "/html-plain": Route(body=b"<!DOCTYPE html><html><body>Sign in</body></html>"),
        "/truncated-length": Route(body=VLLM_BODY, declare_length=len(VLLM_BODY) + 500),
        "/truncated-mid-line": Route(body=VLLM_BODY[:-30]),
        "/truncated-at-line": Route(body=CUT_AT_LINE),
        "/not-utf8": Route(body=NOT_UTF8),
        "/duplicates": Route(body=DUPLICATES),
        "/nan-inf": Route(body=NAN_INF),
        "/future": Route(body=FUTURE),
        "/stall": Route(body=VLLM_BODY, stall_after=100),
    }
    lazy_routes = {
        "/endless": huge(1 << 60, declare_length=False),
        "/huge-chunked": huge(HUNDRED_MB, declare_length=False),
        "/huge-declared": huge(HUNDRED_MB, declare_length=True),
    }
    with serve(static_routes) as static, serve_lazily(lazy_routes) as lazy:

        def url_of(path: str) -> str:
            if path == "dns":
                return "http://metrics.perf-test.invalid:9100/metrics"  # RFC 6761: never resolves
            if path == "refused":
                return f"http://127.0.0.1:{closed_port()}/metrics"
            base = lazy.base_url if path in lazy_routes else static.base_url
            return base + path

        entries = [
            f"{{name: {name}, url: '{url_of(path)}', engine: {name.removeprefix('good-')}}}"
            for name, path in GOOD.items()
        ] + [
            f"{{name: {name}, url: '{url_of(f.path)}', engine: {f.engine}}}"
            for name, f in FAULTS.items()
        ]
        targets = write_targets(tmp_path_factory.mktemp("zoo") / "targets.yaml", entries)
        started = datetime.now(UTC)
        clock = time.perf_counter()
        result = materialize(
            [metric_snapshots, targets_reachable, snapshot_values_valid],
            resources={
                "database": DatabaseResource(url=url),
                "targets": TargetsResource(path=str(targets)),
                "scraper": ScraperResource(
                    timeout_s=TIMEOUT_S, samples=SAMPLES, interval_s=0.2, max_bytes=CAP
                ),
            },
        )
        elapsed = time.perf_counter() - clock
        finished = datetime.now(UTC)
    counts_after, earlier_after = _snapshot_state(url)
    engine = create_db_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(select(table).where(table.c.run_id == result.run_id)).all()
        duplicates = duplicate_snapshot_keys(connection)
    engine.dispose()
    return Zoo(
        url,
        result,
        started,
        finished,
        elapsed,
        {(r.target, r.sample_index): r for r in rows},
        counts_before,
        counts_after,
        earlier_before,
        earlier_after,
        duplicates,
    )


def test_nothing_is_lost_or_duplicated(zoo: Zoo) -> None:
    assert zoo.result.success
    targets = len(GOOD) + len(FAULTS)
    # Exactly one row per target and sample (every target here serves one model or none).
    assert len(zoo.rows) == targets * SAMPLES
    assert zoo.counts_after == {**zoo.counts_before, zoo.result.run_id: targets * SAMPLES}
    assert zoo.duplicates == []
    assert zoo.earlier_after == zoo.earlier_before  # an earlier run's rows are untouched
    (materialization,) = zoo.result.asset_materializations_for_node("metric_snapshots")
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    down = sum(f.down is not None for f in FAULTS.values())
    assert metadata["rows_inserted"] == targets * SAMPLES
    assert (metadata["targets_up"], metadata["targets_down"]) == (targets - down, down)
    checks = {e.asset_check_key.name: e for e in zoo.result.get_asset_check_evaluations()}
    assert not checks["targets_reachable"].passed  # a warning naming the down targets
    assert checks["targets_reachable"].metadata["targets_down"].value == down
    assert checks["snapshot_values_valid"].passed  # no NaN/Inf or negative value got through


def test_good_targets_are_unaffected(zoo: Zoo) -> None:
    _, (sglang,) = snapshots_from_text(SGLANG_BODY.decode(), None)
    for sample in range(SAMPLES):
        vllm = zoo.rows[("good-vllm", sample)]
        assert vllm.up and vllm.error is None and vllm.model == MODEL
        assert (vllm.requests_running, vllm.requests_waiting, vllm.preemptions_total) == (7, 2, 4)
        assert vllm.kv_cache_usage == pytest.approx(0.61)
        row = zoo.rows[("good-sglang", sample)]
        assert row.up and row.engine == "sglang" and row.model == sglang.model
        assert row.requests_running == sglang.requests_running
        assert row.generation_tokens_total == sglang.generation_tokens_total


def test_the_round_keeps_its_deadline(zoo: Zoo) -> None:
    # Stalled, endless and 100 MB bodies cost at most the per-target deadline per sample,
    # concurrently, never their sum: two samples of 2 s plus Dagster's own start-up.
    print(f"\nzoo run: {zoo.elapsed_s:.1f} s")
    assert zoo.elapsed_s < SAMPLES * TIMEOUT_S + 12, zoo.elapsed_s
    for sample in range(SAMPLES):
        assert zoo.rows[("stall-mid-body", sample)].scrape_ms < TIMEOUT_S * 1000 + 500
        for fault in ("endless-chunked", "100mb-chunked", "100mb-declared"):
            assert zoo.rows[(fault, sample)].scrape_ms < TIMEOUT_S * 1000


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_is_recorded_and_contained(zoo: Zoo, fault: str) -> None:
    expected = FAULTS[fault]
    for sample in range(SAMPLES):
        row = zoo.rows[(fault, sample)]
        assert zoo.started <= row.collected_at <= zoo.finished  # the agent's clock, always
        if expected.down is not None:
            assert not row.up and expected.down in (row.error or ""), row.error
            assert row.requests_running is None and row.ttft_seconds is None
            assert row.body_bytes is None
            continue
        assert row.up and row.error == REJECTED.get(fault) and row.model == MODEL, row.error
        _check_up(fault, row)


def _check_up(fault: str, row: Any) -> None:
    if fault == "truncated-at-line-end":
        # Cut between two families, the body is a valid smaller exposition: what is missing
        # is NULL ("not exported"), never 0.
        assert (row.requests_running, row.requests_waiting) == (7, 2)
        assert row.kv_cache_usage is None and row.preemptions_total is None
    elif fault == "duplicate-series":
        assert row.requests_running == 9  # the later sample of the same series
        assert row.preemptions_total == 4  # not summed with its duplicate
    elif fault == "nan-inf":
        # NaN and ±Inf are not measurements: NULL, like a value never exported. Before the fix
        # in storage/snapshots.py PostgreSQL refused the NaN histogram and the whole run failed.
        assert row.requests_running is None and row.requests_waiting is None
        assert row.kv_cache_usage is None and row.preemptions_total is None
        assert row.prompt_tokens_total == 5  # the finite values of the same body are kept
        assert row.ttft_seconds is None  # non-finite bucket counts: no usable histogram
        assert row.itl_seconds == {
            "bounds": [0.05],
            "cumulative": [3.0, 4.0],
            "sum": 0.1,
            "count": 4.0,
        }
    elif fault == "future-timestamps":
        # Sample timestamps are ignored: rows are stamped with the agent's clock (checked by
        # the caller), so they stay inside the analysis window. A start time in the future is
        # not a start time: NULL, with the reason in the row's error (REJECTED).
        assert row.requests_running == 7 and row.preemptions_total == 4
        assert row.process_start_time is None
    else:  # pragma: no cover - every "up" fault has its expectations above
        raise AssertionError(f"no expectation for {fault}")
