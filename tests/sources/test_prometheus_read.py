"""Reading the canonical series through a real Prometheus gives what direct scraping gives."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from perf_pipelines.analysis.promql import histogram_quantile
from perf_pipelines.collection.collector import ScrapeLimits, ScrapeResult, collect
from perf_pipelines.collection.rounds import rows_from_rounds
from perf_pipelines.engines.canonical import HISTOGRAM_FIELDS, CanonicalSnapshot
from perf_pipelines.sources import prometheus as source
from perf_pipelines.sources.promapi import PrometheusClient, PrometheusError
from perf_pipelines.sources.prometheus import read_recent, rows_from_reads
from perf_pipelines.targets import Target
from tests.sources.conftest import PromFleet

COUNTERS = (
    "prompt_tokens_total",
    "generation_tokens_total",
    "preemptions_total",
    "requests_finished_total",
    "requests_failed_total",
    "prefix_cache_queries_total",
    "prefix_cache_hits_total",
)
GAUGES = ("requests_running", "requests_waiting", "kv_cache_usage")
# Row fields that differ by construction: who read it, when, and how long the read took.
_PER_READ = {"run_id", "sample_index", "collected_at", "scrape_ms", "body_bytes"}


def _scrape(targets: list[Target]) -> list[ScrapeResult]:
    (results,) = asyncio.run(collect(targets, ScrapeLimits(timeout_s=5)))
    assert all(r.up for r in results), [r.error for r in results]
    return results


def _records(result: ScrapeResult) -> list[dict[str, Any]]:
    rows = rows_from_rounds("r", [[result]])
    return [{k: v for k, v in row.as_record().items() if k not in _PER_READ} for row in rows]


def test_frozen_servers_read_through_prometheus_give_identical_rows(prom_fleet: PromFleet) -> None:
    """Prometheus stores what it scraped: with the servers' clock stopped, every canonical
    value (gauges, counters, every histogram bucket, settings) is equal, not just close."""
    targets = prom_fleet.frozen_targets
    direct = _scrape(targets)
    reads = asyncio.run(read_recent(prom_fleet.config, targets, 2, 1.0))
    for read, scraped in zip(reads, direct, strict=True):
        assert read.selector is not None and read.selector.by_scrape_url
        assert [r.up for r in read.results] == [True, True], read.results[-1].error
        assert read.latest.engine == scraped.engine
        assert read.latest.snapshots == scraped.snapshots
        assert _records(read.latest) == _records(scraped)
        assert not read.warnings


def _bracketed(low: float | None, value: float | None, high: float | None) -> bool:
    if low is None or high is None:
        return value is None
    return value is not None and low <= value <= high


def _p95(snapshot: CanonicalSnapshot) -> float | None:
    for name in HISTOGRAM_FIELDS:
        histogram = getattr(snapshot, name)
        if histogram is not None and histogram.count > 0:
            return histogram_quantile(0.95, histogram.bounds, histogram.cumulative)
    return None


def test_live_servers_agree_with_direct_scrapes(
    prom_fleet: PromFleet, record_property: pytest.RecordProperty
) -> None:
    """Servers moving in real time (speed 2): a Prometheus sample taken between two direct
    scrapes lies between them for every counter and every cumulative bucket (exact); gauges are
    within what a server changes in ~1 s (KV use ±0.1, requests ±max(5, 50 %); exact equality
    of gauges is the frozen test's job); p95 from the cumulative histograms agrees within 10 %."""
    targets = prom_fleet.live_targets
    first = _scrape(targets)
    after_first = time.time()
    time.sleep(1.6)  # at least one Prometheus scrape (every 1 s) in between
    before_second = time.time()
    second = _scrape(targets)
    reads = asyncio.run(read_recent(prom_fleet.config, targets, 3, 1.0, now=before_second))
    worst: dict[str, float] = {}
    for read, d1, d2 in zip(reads, first, second, strict=True):
        inside = [
            r
            for r in read.results
            if r.up and after_first <= r.collected_at.timestamp() <= before_second - 0.05
        ]
        assert inside, f"{read.target.name}: no Prometheus scrape between the direct scrapes"
        p = inside[-1].snapshots[0]
        a, b = d1.snapshots[0], d2.snapshots[0]
        for name in COUNTERS:
            low, value, high = (getattr(s, name) for s in (a, p, b))
            assert _bracketed(low, value, high), (read.target.name, name, low, value, high)
        for name in HISTOGRAM_FIELDS:
            ha, hp, hb = (getattr(s, name) for s in (a, p, b))
            assert (ha is None) == (hp is None) == (hb is None)
            if hp is not None:
                assert ha.bounds == hp.bounds == hb.bounds
                for low, value, high in zip(
                    ha.cumulative, hp.cumulative, hb.cumulative, strict=True
                ):
                    assert low <= value <= high, (read.target.name, name)
        for name in GAUGES:
            value, values = getattr(p, name), [getattr(s, name) for s in (a, b)]
            if value is None:
                assert values == [None, None]
                continue
            # A gauge may move either way between scrapes: measure its distance to the nearer
            # direct scrape relative to the server's scale (KV use is a fraction already).
            nearest = min(abs(value - v) for v in values)
            if name == "kv_cache_usage":
                assert nearest <= 0.1, (read.target.name, name, value, values)
            else:  # request counts swing by a few within a second at speed 2 (measured ≤ 5)
                assert nearest <= max(5.0, 0.5 * max(values)), (read.target.name, name)
            worst[name] = max(worst.get(name, 0.0), nearest)
        p95_prom, p95_direct = _p95(p), _p95(b)
        if p95_direct is not None:
            error = abs(p95_prom - p95_direct) / p95_direct
            worst["p95"] = max(worst.get("p95", 0.0), error)
            assert error <= 0.10, (read.target.name, p95_prom, p95_direct)
    for name, value in worst.items():
        record_property(f"worst_{name}", round(value, 4))


def test_several_samples_per_run_are_distinct_scrapes(prom_fleet: PromFleet) -> None:
    now = time.time()
    reads = asyncio.run(read_recent(prom_fleet.config, prom_fleet.live_targets, 3, 1.0, now=now))
    for read in reads:
        stamps = [r.collected_at.timestamp() for r in read.results]
        assert len(stamps) == 3, read.warnings
        # Stamped with the time of the scrape the values come from, not the evaluation step.
        raw = prom_fleet.prometheus.api(
            "/api/v1/query", query=f'up{{job="{read.target.name}"}}[10s]', time=f"{now:.3f}"
        )
        scraped_at = {round(float(t), 3) for t, _ in raw["data"]["result"][0]["values"]}
        assert {round(s, 3) for s in stamps} <= scraped_at
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert all(0.5 <= gap <= 1.5 for gap in gaps), gaps
        generated = [r.snapshots[0].generation_tokens_total for r in read.results]
        assert generated == sorted(generated) and generated[-1] > generated[0]
        # Prometheus' own scrape duration becomes scrape_ms.
        assert all(0 < r.scrape_ms < 1000 for r in read.results)
    rows = rows_from_reads("run-1", reads)
    assert sorted({r.sample_index for r in rows}) == [0, 1, 2]
    assert all(r.run_id == "run-1" and r.up for r in rows)


def test_a_target_prometheus_cannot_scrape_is_a_down_row_with_its_error(
    prom_fleet: PromFleet,
) -> None:
    (read,) = asyncio.run(read_recent(prom_fleet.config, [prom_fleet.gone_target], 2, 1.0))
    assert read.results and not any(r.up for r in read.results)
    error = read.latest.error or ""
    assert error.startswith("Prometheus could not scrape the target (up=0)")
    assert "connection refused" in error
    (row, *_) = rows_from_reads("r", [read])
    assert row.model == "m" and row.engine == "vllm" and not row.up


def test_a_target_prometheus_does_not_scrape_is_unknown_and_says_so(prom_fleet: PromFleet) -> None:
    """Prometheus has nothing on it: that says nothing about the server (unknown, not down)."""
    stranger = Target(name="stranger", url="http://127.0.0.1:1/metrics", engine="auto")
    (read,) = asyncio.run(read_recent(prom_fleet.config, [stranger], 3, 1.0))
    assert not read.results and read.failed is None
    assert read.unknown and read.unknown.startswith(
        'no samples in Prometheus for {instance="127.0.0.1:1"}'
    )


def test_without_the_targets_api_series_are_matched_by_instance(
    prom_fleet: PromFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fallback (e.g. Thanos without /api/v1/targets): `instance` = host:port. The simulated
    servers share one port, so that is ambiguous and said so; a server alone on its port is
    read normally."""

    async def unavailable(self: PrometheusClient) -> None:
        raise PrometheusError("Prometheus answered HTTP 404")

    monkeypatch.setattr(PrometheusClient, "active_targets", unavailable)
    targets = [prom_fleet.live_targets[0], prom_fleet.reset_target]
    shared, alone = asyncio.run(read_recent(prom_fleet.config, targets, 1, 1.0))
    assert not shared.selector.by_scrape_url
    assert not shared.latest.up
    assert "Prometheus jobs" in shared.latest.error and "cannot tell" in shared.latest.error
    assert alone.latest.up, alone.latest.error
    assert alone.latest.snapshots[0].generation_tokens_total is not None


def test_a_restart_shows_as_a_counter_drop_as_when_scraping(prom_fleet: PromFleet) -> None:
    fleet, target = prom_fleet.reset, prom_fleet.reset_target
    prom_fleet.prometheus.wait_for_scrapes([target.name], 8)
    before = _scrape([target])[0].snapshots[0].generation_tokens_total
    fleet.apply_settings(target.name, {"parallel": 8})  # restarts: counters start again at 0
    fleet.advance(30)
    after = _scrape([target])[0].snapshots[0]
    scrapes = prom_fleet.prometheus.scrapes_of(target.name)
    prom_fleet.prometheus.wait_for_scrapes([target.name], scrapes + 2)
    (read,) = asyncio.run(read_recent(prom_fleet.config, [target], 8, 1.0))
    generated = [r.snapshots[0].generation_tokens_total for r in read.results if r.up]
    assert generated[0] == before and generated[-1] == after.generation_tokens_total < before
    assert read.latest.snapshots[0] == after


def test_selectors_quote_label_values_and_escape_instance_regexes() -> None:
    target = Target(name="t", url="https://vllm-a.internal/metrics", engine="vllm")
    selectors, _ = source.resolve_selectors([target], None)
    assert selectors["t"].promql() == 'instance=~"vllm-a\\\\.internal(?::443)?"'
    with_port = Target(name="u", url="http://[::1]:8000/metrics")
    selectors, _ = source.resolve_selectors([with_port], [])
    assert selectors["u"].promql() == 'instance="[::1]:8000"'
    quoted = source.Selector((("job", "=", 'a"b\\c'),), frozenset(), True)
    assert quoted.promql() == 'job="a\\"b\\\\c"'
