"""One real Prometheus for the whole session, scraping simulated fleets every second.

- `live`: one server per engine, warmed up for 5 simulated minutes, then in real time at
  speed 2 (what a deployment looks like: values move between scrapes);
- `frozen`: the same four servers on a virtual clock that never moves, so a direct scrape and
  Prometheus' scrape see identical values;
- `reset`: a llama.cpp server on a virtual clock that a test restarts (counters drop);
- `gone`: a job whose port nothing listens on (`up` = 0).

Prometheus hands new targets to its scrapers on a 5 s tick, so the first scrape comes ~5 s
after start: starting it once keeps the suite fast.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from perf_lab.simulator.fleet import Fleet, ServerSpec
from perf_lab.simulator.http import run_fleet_in_thread
from perf_lab.simulator.scenarios import mixed, targets_for
from perf_pipelines.sources.promapi import PrometheusConfig
from perf_pipelines.targets import Target, parse_targets
from tests.support.http_servers import closed_port
from tests.support.prometheus import PrometheusServer, prometheus_available, run_prometheus

ENGINE_SERVERS = (
    "vllm-llama70b-kv",
    "sglang-qwen7b-a100",
    "tgi-llama8b-a10g",
    "llamacpp-llama8b-l4",
)
WARMUP_S = 300.0
SPEED = 2.0


def _specs(prefix: str = "") -> list[ServerSpec]:
    chosen = [s for s in mixed() if s.name in ENGINE_SERVERS]
    return [dataclasses.replace(s, name=prefix + s.name) for s in chosen]


@dataclass
class PromFleet:
    prometheus: PrometheusServer
    live: Fleet
    frozen: Fleet
    reset: Fleet
    live_targets: list[Target]
    frozen_targets: list[Target]
    reset_target: Target
    gone_target: Target

    @property
    def config(self) -> PrometheusConfig:
        return PrometheusConfig(self.prometheus.url, timeout_s=5.0)

    @property
    def jobs(self) -> list[str]:
        targets = [*self.live_targets, *self.frozen_targets, self.reset_target, self.gone_target]
        return [t.name for t in targets]


@pytest.fixture(scope="session")
def prom_fleet() -> Iterator[PromFleet]:
    if not prometheus_available():
        pytest.skip("/usr/bin/prometheus is not installed")
    start = time.time() - WARMUP_S
    live = Fleet(_specs(), virtual=True, start=start)
    live.advance(WARMUP_S)
    live.switch_to_real_time()
    live.speed = SPEED
    frozen = Fleet(_specs("frozen-"), virtual=True, start=start)
    frozen.advance(WARMUP_S)
    reset_spec = dataclasses.replace(
        next(s for s in _specs() if s.engine == "llamacpp"), name="reset-llamacpp"
    )
    reset = Fleet([reset_spec], virtual=True, start=start)
    reset.advance(WARMUP_S)
    with (
        run_fleet_in_thread(live) as live_url,
        run_fleet_in_thread(frozen) as frozen_url,
        run_fleet_in_thread(reset) as reset_url,
    ):
        live_targets = parse_targets(targets_for(_specs(), live_url))
        frozen_targets = parse_targets(targets_for(_specs("frozen-"), frozen_url))
        (reset_target,) = parse_targets(targets_for([reset_spec], reset_url))
        gone_target = Target(
            name="gone", url=f"http://127.0.0.1:{closed_port()}/metrics", model="m", engine="vllm"
        )
        targets = [*live_targets, *frozen_targets, reset_target, gone_target]
        with run_prometheus({t.name: t.url for t in targets}) as prometheus:
            setup = PromFleet(
                prometheus,
                live,
                frozen,
                reset,
                live_targets,
                frozen_targets,
                reset_target,
                gone_target,
            )
            prometheus.wait_for_scrapes(setup.jobs, 3)
            yield setup
