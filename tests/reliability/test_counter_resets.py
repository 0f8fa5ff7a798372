"""Counters that go backwards (a server restarted between two cycles and again between two
samples of one run), through the real pipeline: loopback server → metric_snapshots →
bottleneck_reports on SQLite and PostgreSQL. The drop is read as a restart, as PromQL's
`increase()` does, so no rate is negative and no increase is inflated. The rule-level case is
tests/analysis/test_detection.py::test_counter_reset_is_not_read_as_negative_or_huge.
"""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dagster import materialize
from sqlalchemy import select

from perf_pipelines.dagster_defs.analysis import bottleneck_reports
from perf_pipelines.dagster_defs.resources import (
    AnalysisResource,
    DatabaseResource,
    ScraperResource,
    TargetsResource,
)
from perf_pipelines.dagster_defs.snapshots import metric_snapshots
from perf_pipelines.engines.canonical import CanonicalSnapshot
from perf_pipelines.storage.schema import bottleneck_reports as reports_table
from perf_pipelines.storage.schema import metric_snapshots as snapshots_table
from perf_pipelines.storage.snapshots import SnapshotRow, insert_snapshots
from tests.collection.test_collector import MODEL
from tests.reliability.support import duplicate_snapshot_keys, sequence, serve_lazily, write_targets

TARGET = "restarted-vllm"
L = f'{{engine="0",model_name="{MODEL}"}}'


def _body(preemptions: float, prompt_tokens: float) -> bytes:
    return "\n".join(
        [
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{L} 40",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{L} 0",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{L} 0.95",
            "# TYPE vllm:num_preemptions_total counter",
            f"vllm:num_preemptions_total{L} {preemptions}",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{L} {prompt_tokens}",
            "",
        ]
    ).encode()


def _seed_history(database_url: str) -> None:
    """The previous cycle: preemptions 100 → 120 → 140, 5 s apart, ending 10 s ago."""
    now = datetime.now(UTC)
    rows = [
        SnapshotRow(run_id="previous-cycle", sample_index=i, target=TARGET, engine="vllm",
                    model=MODEL, collected_at=now - timedelta(seconds=20 - 5 * i), up=True,
                    error=None, scrape_ms=3.0, body_bytes=400,
                    snapshot=CanonicalSnapshot(model=MODEL, requests_running=40.0,
                                               requests_waiting=0.0, kv_cache_usage=0.95,
                                               preemptions_total=100.0 + 20 * i,
                                               prompt_tokens_total=50_000.0 + 1000 * i))
        for i in range(3)
    ]  # fmt: skip
    with DatabaseResource(url=database_url).get_engine().begin() as connection:
        insert_snapshots(connection, rows)


def _numbers(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [float(value)]
    return []


def test_counters_that_go_backwards_are_read_as_restarts(tmp_path: Path, database_url: str) -> None:
    _seed_history(database_url)
    # The server restarted since: its counters start again from a few, and within this run
    # one more restart happens between the two samples (25 → 3).
    bodies = [_body(25, 800), _body(3, 100)]
    with serve_lazily({"/metrics": sequence(bodies)}) as server:
        targets = write_targets(
            tmp_path / "targets.yaml",
            [f"{{name: {TARGET}, url: '{server.base_url}/metrics', engine: vllm}}"],
        )
        result = materialize(
            [metric_snapshots, bottleneck_reports],
            resources={
                "database": DatabaseResource(url=database_url),
                "targets": TargetsResource(path=str(targets)),
                "scraper": ScraperResource(timeout_s=2, samples=2, interval_s=0.2),
                "analysis": AnalysisResource(window_minutes=5),
            },
        )
    assert result.success
    engine = DatabaseResource(url=database_url).get_engine()
    with engine.connect() as connection:
        reports = connection.execute(
            select(reports_table).where(reports_table.c.run_id == result.run_id)
        ).all()
        stored = connection.execute(
            select(snapshots_table.c.preemptions_total)
            .where(snapshots_table.c.target == TARGET)
            .order_by(snapshots_table.c.collected_at)
        ).scalars()
        assert list(stored) == [100, 120, 140, 25, 3]  # stored as scraped, nothing rewritten
        assert duplicate_snapshot_keys(connection) == []
    engine.dispose()

    by_kind = {r.kind: r for r in reports if r.target == TARGET}
    preemption = by_kind["preemption"]
    # 100→120→140 (+40), restart → 25 (+25 from zero), restart → 3 (+3): 68, never -137 or 0.
    assert preemption.evidence["preemptions"] == 68
    assert preemption.evidence["preemptions_per_s"] > 0
    for report in reports:
        assert all(n >= 0 for n in _numbers(report.evidence)), (report.kind, report.evidence)
        assert 0 <= report.score <= 1
