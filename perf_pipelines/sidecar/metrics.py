"""`GET /metrics`: the agent's own figures, read from its tables at scrape time.

A custom collector on a private registry (with the process, platform and GC collectors): every
scrape calls `fleet_summary()` once, so the figures always match the heartbeat summary and the
health check. When the database cannot be read the scrape still succeeds, with
``perf_agent_database_up 0`` and without the figures that come from the database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from perf_pipelines.logs import redact_and_clip
from perf_pipelines.storage.schema import RECOMMENDATION_OUTCOMES, SEVERITIES
from perf_pipelines.storage.summary import FleetSummary

log = logging.getLogger(__name__)

RECOMMENDATION_CAPABILITIES = (
    "kv_cache_optimization",
    "quantization_optimization",
    "batch_size_tuning",
)


class FleetCollector(Collector):
    """Yields the `perf_agent_*` families from one `fleet_summary()` per scrape."""

    def __init__(
        self,
        read_summary: Callable[[], FleetSummary],
        version: str,
        agent_id: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._read_summary = read_summary
        self._version = version
        self._agent_id = agent_id
        self._clock = clock

    def describe(self) -> list[Metric]:
        # Registering must not query the database (the default would call collect()).
        return []

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily("perf_agent", "The performance agent's identity.")
        info.add_metric([], {"version": self._version, "agent_id": self._agent_id})
        yield info
        started = time.perf_counter()
        try:
            summary = self._read_summary()
        except Exception as exc:
            log.warning(
                "metrics: database not readable: %s: %s",
                type(exc).__name__,
                redact_and_clip(str(exc), 240),
            )
            summary = None
        query_s = time.perf_counter() - started
        yield GaugeMetricFamily(
            "perf_agent_database_up",
            "1 when the agent's database answered this scrape's summary query, else 0.",
            value=0 if summary is None else 1,
        )
        yield GaugeMetricFamily(
            "perf_agent_summary_query_seconds",
            "Time this scrape spent reading the summary from the database.",
            value=query_s,
        )
        if summary is not None:
            yield from self._figures(summary)

    def _figures(self, summary: FleetSummary) -> Iterator[Metric]:
        now = self._clock()
        targets = GaugeMetricFamily(
            "perf_agent_targets",
            "Targets in the latest collection run, by state (up when any sample was up).",
            labels=["state"],
        )
        targets.add_metric(["up"], summary.targets_up)
        targets.add_metric(["down"], summary.targets - summary.targets_up)
        yield targets

        errors = GaugeMetricFamily(
            "perf_agent_scrape_errors",
            "Targets down in the latest collection run, by error (first 80 characters).",
            labels=["error"],
        )
        for error, count in sorted(summary.scrape_errors.items()):
            errors.add_metric([error], count)
        yield errors

        open_recs = GaugeMetricFamily(
            "perf_agent_open_recommendations",
            "Open tuning recommendations by capability and severity.",
            labels=["capability", "severity"],
        )
        combos = {(c, s): 0 for c in RECOMMENDATION_CAPABILITIES for s in SEVERITIES}
        combos.update(summary.open_recommendations)
        for (capability, severity), count in sorted(combos.items()):
            open_recs.add_metric([capability, severity], count)
        yield open_recs

        outcomes = GaugeMetricFamily(
            "perf_agent_recommendation_outcomes",
            "Applied recommendations by measured outcome (regressed = the change made it worse).",
            labels=["outcome"],
        )
        for outcome in RECOMMENDATION_OUTCOMES:
            outcomes.add_metric([outcome], summary.outcomes.get(outcome, 0))
        yield outcomes

        if summary.last_collection_at is not None:
            yield GaugeMetricFamily(
                "perf_agent_last_collection_age_seconds",
                "Seconds since the newest metric snapshot was collected.",
                value=max(0.0, (now - summary.last_collection_at).total_seconds()),
            )
        if summary.last_analysis_at is not None:
            yield GaugeMetricFamily(
                "perf_agent_last_analysis_age_seconds",
                "Seconds since the newest bottleneck report was written.",
                value=max(0.0, (now - summary.last_analysis_at).total_seconds()),
            )
        yield GaugeMetricFamily(
            "perf_agent_critical_bottlenecks",
            "Critical bottleneck reports in the latest analysis run.",
            value=summary.critical_bottlenecks,
        )
        failures = CounterMetricFamily(
            "perf_agent_orchestrator_failures",
            "Failed orchestrator attempts recorded, by kind (registration, heartbeat, ...).",
            labels=["kind"],
        )
        for kind, count in sorted(summary.orchestrator_failures.items()):
            failures.add_metric([kind], count)
        yield failures


def build_registry(collector: FleetCollector) -> CollectorRegistry:
    """A private registry: the fleet figures plus the process, platform and GC collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
