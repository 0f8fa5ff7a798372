"""Dagster resources: the database, the targets file and the scraper's limits.

Built from `Settings` in `perf_pipelines.definitions`; tests construct them directly.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr
from sqlalchemy import Engine

from perf_pipelines.analysis.detection import MIN_SUSTAINED_S, SUSTAINED_SHARE, DetectionConfig
from perf_pipelines.sources.promapi import PrometheusConfig, label_list
from perf_pipelines.storage.db import create_db_engine, ensure_schema
from perf_pipelines.targets import Target, load_targets


class DatabaseResource(ConfigurableResource["DatabaseResource"]):
    """The agent's SQL database; migrations are applied on first use.

    The engine (and its pool of connections) lives for one run: Dagster sets up a copy of the
    resource per run and tears it down afterwards, which disposes of the pool. Without that, a
    run worker's pooled PostgreSQL connections stayed open until the process exited, and a
    process running many runs (tests, `execute_in_process`) kept one pool per run.
    """

    url: str

    _engine: Engine | None = PrivateAttr(default=None)

    def get_engine(self) -> Engine:
        if self._engine is None:
            engine = create_db_engine(self.url)
            ensure_schema(engine)
            self._engine = engine
        return self._engine

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        self.dispose()

    def dispose(self) -> None:
        """Close every pooled connection; the next `get_engine` opens a new pool."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


class TargetsResource(ConfigurableResource["TargetsResource"]):
    """The inference servers to watch, from the targets file (PERF_TARGETS).

    Read once per run: each of the cycle's four assets asks for the targets, and parsing a
    10,000-entry file takes ~1.9 s. Dagster sets a resource up afresh for every run, so the next
    run reads the file again and sees any change to it.
    """

    path: str | None = None

    _loaded: list[Target] | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        # Dagster sets up a fresh copy per run; clearing anyway keeps "once per run" true even
        # for a copy made from an object that was already used.
        self._loaded = None

    def load(self) -> list[Target]:
        """The targets; a file that cannot be used raises `TargetsError` (and is not cached)."""
        if not self.path:
            return []
        if self._loaded is None:
            self._loaded = load_targets(Path(self.path))
        return list(self._loaded)  # a copy: one asset's list cannot change another's

    def by_name(self) -> dict[str, Target]:
        return {target.name: target for target in self.load()}


class ScraperResource(ConfigurableResource["ScraperResource"]):
    """Limits of one scrape round; see the SCRAPE_* settings.

    With `prometheus_url` set, samples are read from that Prometheus instead of scraped
    (PROMETHEUS_* settings, docs/prometheus.md).
    """

    timeout_s: float = 5.0
    concurrency: int = 64
    max_bytes: int = 16 * 1024 * 1024
    max_series: int = 50_000
    max_models: int = 256
    max_label_bytes: int = 8 * 1024 * 1024
    samples: int = 8
    interval_s: float = 5.0
    prometheus_url: str | None = None
    prometheus_token: str | None = None
    prometheus_username: str | None = None
    prometheus_password: str | None = None
    prometheus_timeout_s: float = 10.0
    prometheus_cycle_timeout_s: float = 60.0
    prometheus_dedup_labels: str = "job,replica,prometheus_replica,prometheus,__replica__"
    prometheus_backfill_minutes: float = 60.0
    prometheus_backfill_step_s: float = 15.0

    def prometheus_config(self) -> PrometheusConfig:
        return PrometheusConfig(
            url=self.prometheus_url or "",
            token=self.prometheus_token,
            username=self.prometheus_username,
            password=self.prometheus_password,
            timeout_s=self.prometheus_timeout_s,
            cycle_timeout_s=self.prometheus_cycle_timeout_s,
            dedup_labels=label_list(self.prometheus_dedup_labels),
            max_bytes=self.max_bytes,
            # Prometheus is one shared server: far fewer parallel queries than scrapes.
            concurrency=min(self.concurrency, 8),
        )


class AnalysisResource(ConfigurableResource["AnalysisResource"]):
    """How much history bottleneck detection looks at (ANALYSIS_WINDOW_MINUTES), how long a
    condition must hold to count as sustained (DETECTION_SUSTAINED_SHARE of the observed time and
    DETECTION_MIN_SUSTAINED_S seconds), how long a server settles after applied advice before its
    outcome is measured (OUTCOME_SETTLE_MINUTES), and how long open advice lives without being
    given again (RECOMMENDATION_TTL_MINUTES)."""

    window_minutes: float = 15.0
    sustained_share: float = SUSTAINED_SHARE
    min_sustained_s: float = MIN_SUSTAINED_S
    outcome_settle_minutes: float = 2.0
    recommendation_ttl_minutes: float = 60.0

    def detection_config(self) -> DetectionConfig:
        return DetectionConfig(
            sustained_share=self.sustained_share, min_sustained_s=self.min_sustained_s
        )


class AgentResource(ConfigurableResource["AgentResource"]):
    """Who the agent is and how it reaches the orchestrator (ORCHESTRATOR_* settings)."""

    agent_id: str = "performance-agent-001"
    agent_type: str = "performance"
    environment: str = "development"
    orchestrator_url: str | None = None
    orchestrator_register_endpoint: str = "/api/v1/agents/register"
    orchestrator_heartbeat_endpoint: str = "/api/v1/agents/{agent_id}/heartbeat"
    orchestrator_heartbeat_interval: float = 30.0
    orchestrator_token: str | None = None
    orchestrator_timeout_s: float = 5.0
    sidecar_url: str = "http://127.0.0.1:8002"
    redis_url: str | None = None

    @cached_property
    def heartbeat_path(self) -> str:
        return self.orchestrator_heartbeat_endpoint.replace("{agent_id}", self.agent_id)
