"""Faults of Prometheus as the source (issue #21, class 9), each against a real Prometheus
where one can show it, and a scripted one for a server that never answers:

- Prometheus unreachable: a source failure (the servers' state is unknown), not every server down;
- one server scraped by two jobs, or by two HA replicas: counted once, not twice;
- a target removed and Prometheus restarted (no staleness markers): its old series are not
  read as current;
- a frozen Prometheus: one deadline for the whole cycle, not one slow query per target.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import materialize
from sqlalchemy import func, select

from perf_pipelines.collection.collector import ScrapeLimits, collect
from perf_pipelines.dagster_defs.resources import DatabaseResource, ScraperResource, TargetsResource
from perf_pipelines.dagster_defs.snapshots import metric_snapshots, targets_reachable
from perf_pipelines.sources.cycle import read_cycle
from perf_pipelines.sources.discovery import discover
from perf_pipelines.sources.promapi import PrometheusClient, PrometheusConfig, PrometheusError
from perf_pipelines.sources.prometheus import read_recent
from perf_pipelines.storage.db import create_db_engine
from perf_pipelines.storage.schema import metric_snapshots as table
from perf_pipelines.targets import Target, dump_targets
from tests.sources.fake_prometheus import (
    Reply,
    Request,
    fake_prometheus,
    matrix_from_exposition,
    ok,
)
from tests.sources.real_prometheus import scrape_config
from tests.support.http_servers import Route, closed_port, serve
from tests.support.prometheus import PrometheusServer, prometheus_available, prometheus_on

FIXTURES = Path(__file__).parents[1] / "fixtures" / "expositions"
VLLM_TEXT = (FIXTURES / "vllm_v1_0_33.txt").read_text()
needs_prometheus = pytest.mark.skipif(
    not prometheus_available(), reason="/usr/bin/prometheus is not installed"
)


def _static_vllm():  # type: ignore[no-untyped-def]
    return serve({"/metrics": Route(body=VLLM_TEXT.encode())})


def _wait(condition, what: str, timeout_s: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s}s")
        time.sleep(0.2)


def _series_count(prometheus: PrometheusServer, promql: str) -> int:
    return len(prometheus.api("/api/v1/query", query=promql)["data"]["result"])


# -- 1. Prometheus itself unreachable -------------------------------------------------------


def _materialize(  # type: ignore[no-untyped-def]
    targets: list[Target], tmp_path: Path, database_url: str, url: str, timeout_s: float = 0.5
):
    path = tmp_path / "targets.yaml"
    path.write_text(dump_targets(targets))
    return materialize(
        [metric_snapshots, targets_reachable],
        resources={
            "database": DatabaseResource(url=database_url),
            "targets": TargetsResource(path=str(path)),
            "scraper": ScraperResource(
                samples=2,
                interval_s=1.0,
                prometheus_url=url,
                prometheus_timeout_s=timeout_s,
                prometheus_cycle_timeout_s=max(2.0, 2 * timeout_s),
                prometheus_backfill_minutes=0,
            ),
        },
        raise_on_error=False,
    )


def _failure_text(result) -> str:  # type: ignore[no-untyped-def]
    texts = []
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        if data.user_failure_data is not None:
            texts.append(data.user_failure_data.description or "")
        if data.error is not None:
            texts.append(data.error.message)
    return " | ".join(texts)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("connection-refused", "cannot reach Prometheus at http://127.0.0.1:"),
        ("accepts-never-answers", "Prometheus did not answer /api/v1/targets within 0.5s"),
        ("html-page", "with HTTP 200 and an HTML page"),
        ("bad-url", "PROMETHEUS_URL must be an http(s) URL with a host"),
    ],
)
def test_a_prometheus_outage_is_a_source_failure_not_every_server_down(
    case: str, reason: str, tmp_path: Path, sqlite_url: str
) -> None:
    targets = [
        Target(name=f"vllm-{i}", url=f"http://10.0.0.{i}:8000/metrics", engine="vllm")
        for i in range(1, 4)
    ]
    started = time.monotonic()
    if case == "connection-refused":
        result = _materialize(targets, tmp_path, sqlite_url, f"http://127.0.0.1:{closed_port()}")
    elif case == "bad-url":
        result = _materialize(targets, tmp_path, sqlite_url, "ftp://prometheus")
    else:
        reply = (
            Reply(hang=True)
            if case == "accepts-never-answers"
            else Reply(b"<html><h1>Grafana</h1></html>", 200, "text/html; charset=utf-8")
        )
        routes = {"/api/v1/targets": reply, "/api/v1/query_range": reply}
        with fake_prometheus(routes) as fake:
            result = _materialize(targets, tmp_path, sqlite_url, fake.url)
    elapsed = time.monotonic() - started
    assert not result.success, "the run succeeded: the outage was stored as servers' state"
    text = _failure_text(result)
    assert reason in text, text
    assert "state is unknown" in text and "nothing stored" in text, text
    with create_db_engine(sqlite_url).connect() as connection:
        stored = connection.execute(select(func.count()).select_from(table)).scalar()
    assert stored == 0, f"{stored} rows stored for servers whose state is unknown"
    # one failed call to the source, not one per target (the Dagster run itself takes ~2 s here)
    assert elapsed < 15, elapsed


# -- 2. one server scraped twice ------------------------------------------------------------


@dataclass
class TwiceScraped:
    prometheus: PrometheusServer
    ha_server: Target  # one job, two targets differing only in a `replica` label
    two_jobs: Target  # two jobs scraping the same URL


@pytest.fixture(scope="module")
def twice_scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwiceScraped]:
    if not prometheus_available():
        pytest.skip("/usr/bin/prometheus is not installed")
    with _static_vllm() as ha, _static_vllm() as shared:
        ha_address, shared_address = ha.base_url[7:], shared.base_url[7:]
        config = scrape_config(
            {
                "ha": [(ha_address, {"replica": "a"}), (ha_address, {"replica": "b"})],
                "two-a": [(shared_address, {})],
                "two-b": [(shared_address, {})],
            }
        )
        with prometheus_on(config, tmp_path_factory.mktemp("twice")) as prometheus:
            _wait(
                lambda: _series_count(prometheus, "count_over_time(up[1m]) >= 3") == 4,
                "3 scrapes of each of the 4 scrape targets",
            )
            yield TwiceScraped(
                prometheus,
                Target(name="ha-server", url=f"{ha.base_url}/metrics", engine="vllm"),
                Target(name="two-jobs", url=f"{shared.base_url}/metrics", engine="vllm"),
            )


@pytest.mark.parametrize("matching", ["by-scrape-url", "by-instance"])
def test_a_server_scraped_by_two_jobs_or_two_replicas_is_counted_once(
    twice_scraped: TwiceScraped, matching: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prometheus = twice_scraped.prometheus
    # The fault is there: every engine series exists twice in Prometheus.
    assert _series_count(prometheus, 'vllm:num_requests_running{job="ha"}') == 4
    assert _series_count(prometheus, 'vllm:num_requests_running{job=~"two-.*"}') == 4
    if matching == "by-instance":  # e.g. Thanos Query: no /api/v1/targets

        async def unavailable(self: PrometheusClient) -> None:
            raise PrometheusError("Prometheus answered HTTP 404")

        monkeypatch.setattr(PrometheusClient, "active_targets", unavailable)
    targets = [twice_scraped.ha_server, twice_scraped.two_jobs]
    (direct,) = asyncio.run(collect(targets, ScrapeLimits(timeout_s=5)))
    config = PrometheusConfig(prometheus.url, timeout_s=5.0)
    reads = asyncio.run(read_recent(config, targets, 2, 1.0))
    for read, scraped in zip(reads, direct, strict=True):
        assert read.results, f"{read.target.name}: nothing read ({read.unknown})"
        assert [r.up for r in read.results] == [True, True], read.results[-1].error
        # The very values the server exports: 40 + 38 running requests, not twice that.
        running = [s.requests_running for s in read.latest.snapshots]
        assert running == [78.0], f"{read.target.name}: requests_running {running}"
        assert read.latest.snapshots == scraped.snapshots, read.target.name


def test_discovery_lists_a_server_scraped_by_two_jobs_once(twice_scraped: TwiceScraped) -> None:
    """Two entries for one server would make it two targets: the fleet would count it twice."""
    config = PrometheusConfig(twice_scraped.prometheus.url, timeout_s=5.0)
    servers = asyncio.run(discover(config))
    urls = sorted(s.url for s in servers)
    assert urls == sorted([twice_scraped.ha_server.url, twice_scraped.two_jobs.url]), urls
    jobs = {s.url: s.jobs for s in servers}
    assert jobs[twice_scraped.two_jobs.url] == ["two-a", "two-b"], jobs
    assert all(s.up for s in servers)


def test_a_target_without_current_samples_is_unknown_in_the_run_not_down(
    twice_scraped: TwiceScraped, tmp_path: Path, sqlite_url: str
) -> None:
    """Prometheus answers, but has nothing on one target: the others are stored, that one is
    counted and named as unknown, not stored down (so nothing reports it down)."""
    stranger = Target(name="stranger", url="http://127.0.0.1:1/metrics", engine="vllm")
    targets = [twice_scraped.ha_server, stranger]
    result = _materialize(targets, tmp_path, sqlite_url, twice_scraped.prometheus.url, 5.0)
    assert result.success, _failure_text(result)
    with create_db_engine(sqlite_url).connect() as connection:
        stored = connection.execute(select(table.c.target, table.c.up)).all()
    assert sorted(stored) == [("ha-server", True)] * 2, stored
    (materialization,) = result.asset_materializations_for_node("metric_snapshots")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    counts = [metadata.get(k) for k in ("targets_up", "targets_down", "targets_unknown")]
    assert counts == [1, 0, 1], metadata
    assert "no samples in Prometheus" in metadata["unknown"]["stranger"], metadata["unknown"]
    # The check warns about it as unknown, neither down nor "answered".
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed and "1 target(s) unknown (no row): stranger" in (
        check.description or ""
    ), check.description
    assert check.metadata["targets_down"].value == 0, check.metadata


# -- 3. a removed target after a restart ----------------------------------------------------


@needs_prometheus
def test_a_removed_target_is_not_read_as_current_after_a_restart(tmp_path: Path) -> None:
    with _static_vllm() as kept, _static_vllm() as removed:
        target = Target(name="removed", url=f"{removed.base_url}/metrics", engine="vllm")
        both = scrape_config(
            {"kept": [(kept.base_url[7:], {})], "removed": [(removed.base_url[7:], {})]}
        )
        with prometheus_on(both, tmp_path) as prometheus:
            prometheus.wait_for_scrapes(["kept", "removed"], 3)
            port = int(prometheus.url.rsplit(":", 1)[1])
        # The target leaves the config; Prometheus restarts on the same TSDB. A restart writes
        # no staleness markers, so an instant query returns its last sample for 5 minutes.
        only_kept = scrape_config({"kept": [(kept.base_url[7:], {})]})
        with prometheus_on(only_kept, tmp_path, port=port) as prometheus:
            last = _wait(
                lambda: prometheus.api("/api/v1/query", query='timestamp(up{job="removed"})'),
                "the removed target's series queryable",
            )
            (sample,) = last["data"]["result"]
            last_scrape = float(sample["value"][1])
            restarted = prometheus.scrapes_of("kept")
            prometheus.wait_for_scrapes(["kept"], restarted + 3)
            _wait(lambda: time.time() - last_scrape > 6, "the removed target's scrape 6 s old")
            still = prometheus.api("/api/v1/query", query='up{job="removed"}')["data"]["result"]
            assert still, "Prometheus wrote staleness markers: the fault was not reproduced"
            (read,) = asyncio.run(
                read_recent(PrometheusConfig(prometheus.url, timeout_s=5.0), [target], 2, 1.0)
            )
    age = time.time() - last_scrape
    seen = [(r.up, r.collected_at.isoformat()) for r in read.results]
    assert not read.results, f"read as current ({age:.0f} s old): {seen}"
    assert read.unknown is not None and "old" in read.unknown, read.unknown


# -- 4. a frozen Prometheus -----------------------------------------------------------------


def test_a_frozen_prometheus_costs_one_cycle_deadline_not_one_query_per_target() -> None:
    """Prometheus answers the targets list, then accepts every query and never answers."""
    targets = [
        Target(name=f"vllm-{i}", url=f"http://10.0.0.{i}:8000/metrics", engine="vllm")
        for i in range(1, 25)
    ]
    active = ok(
        {
            "activeTargets": [
                {
                    "scrapeUrl": t.url,
                    "labels": {"job": t.name, "instance": t.url[7:-8]},
                    "scrapeInterval": "1s",
                    "health": "up",
                    "lastError": "",
                }
                for t in targets
            ]
        }
    )
    routes = {"/api/v1/targets": active, "/api/v1/query_range": Reply(hang=True)}
    with fake_prometheus(routes) as fake:
        config = PrometheusConfig(fake.url, timeout_s=1.0, concurrency=2, cycle_timeout_s=2.0)
        started = time.monotonic()
        cycle = read_cycle(
            config,
            targets,
            "run-1",
            samples=2,
            interval_s=1.0,
            backfill_targets={t.name for t in targets},
            backfill_minutes=1.0,
            backfill_step_s=1.0,
        )
        elapsed = time.monotonic() - started
    # 24 queries two at a time would be 12 per-query deadlines (12 s); the cycle has 2 s.
    assert elapsed < 2.0 + 1.5, f"the read took {elapsed:.1f}s"
    assert not cycle.rows and not cycle.backfill_rows
    assert cycle.source_error is not None
    assert "PROMETHEUS_CYCLE_TIMEOUT_S" in cycle.source_error, cycle.source_error


def test_a_query_that_hangs_costs_its_own_deadline_and_the_others_are_read() -> None:
    """Per-query deadlines inside the cycle's: two of four targets hang; the other two are
    read, the two are unknown after one query timeout, well inside the cycle deadline."""
    targets = [
        Target(name=f"vllm-{i}", url=f"http://10.0.0.{i}:8000/metrics", engine="vllm")
        for i in range(1, 5)
    ]
    active = ok(
        {
            "activeTargets": [
                {
                    "scrapeUrl": t.url,
                    "labels": {"job": t.name, "instance": t.url[7:-8]},
                    "scrapeInterval": "1s",
                    "health": "up",
                    "lastError": "",
                }
                for t in targets
            ]
        }
    )
    now = time.time()

    def query_range(request: Request) -> Reply:
        promql = request.form["query"][0]
        target = next(t for t in targets if f'job="{t.name}"' in promql)
        if target.name in ("vllm-2", "vllm-4"):
            return Reply(hang=True)
        instance = target.url[7:-8]
        return ok(matrix_from_exposition(VLLM_TEXT, [now - 1, now], target.name, instance))

    routes = {"/api/v1/targets": active, "/api/v1/query_range": query_range}
    with fake_prometheus(routes) as fake:
        config = PrometheusConfig(fake.url, timeout_s=1.0)  # the cycle's deadline: 60 s
        started = time.monotonic()
        cycle = read_cycle(
            config,
            targets,
            "run-1",
            samples=2,
            interval_s=1.0,
            backfill_targets=set(),
            backfill_minutes=0,
            backfill_step_s=1.0,
            now=now,
        )
        elapsed = time.monotonic() - started
    stored = sorted({(row.target, row.up) for row in cycle.rows})
    assert stored == [("vllm-1", True), ("vllm-3", True)], stored
    assert elapsed < 1.0 + 1.5, f"the read took {elapsed:.1f}s"
    assert cycle.source_error is None
    assert sorted(cycle.unknown) == ["vllm-2", "vllm-4"]
    for reason in cycle.unknown.values():
        assert "within 1s (PROMETHEUS_QUERY_TIMEOUT_S)" in reason, reason
