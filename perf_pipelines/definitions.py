"""The Dagster code location `perf_pipelines`: `dagster dev -m perf_pipelines.definitions`,
`dg dev`, or workspace.yaml.

Secrets reach the resources only as `EnvVar`: Dagster then stores the variable's name in run
snapshots and shows it in the UI, never the value.
"""

from __future__ import annotations

import os
from typing import Any

from dagster import Definitions, EnvVar
from pydantic import SecretStr

from perf_pipelines.dagster_defs.analysis import (
    bottleneck_reports,
    no_critical_bottlenecks,
    recommendations_consistent,
    tuning_recommendations,
)
from perf_pipelines.dagster_defs.catalog import on_schedule
from perf_pipelines.dagster_defs.health import (
    HealthResource,
    agent_health,
    health_check,
    health_check_schedule,
    orchestrator_events,
)
from perf_pipelines.dagster_defs.jobs import optimization_cycle, optimization_cycle_schedule
from perf_pipelines.dagster_defs.outcomes import no_regressions, recommendation_outcomes
from perf_pipelines.dagster_defs.resources import (
    AgentResource,
    AnalysisResource,
    DatabaseResource,
    ScraperResource,
    TargetsResource,
)
from perf_pipelines.dagster_defs.retention import (
    RetentionResource,
    retention,
    retention_schedule,
)
from perf_pipelines.dagster_defs.sensors import orchestrator_heartbeat_sensor
from perf_pipelines.dagster_defs.snapshots import (
    metric_snapshots,
    snapshot_values_valid,
    targets_reachable,
)
from perf_pipelines.settings import Settings, load_settings


def _secret(variable: str, value: SecretStr | str | None) -> Any:
    """The secret as `EnvVar(variable)`, whatever its source (the environment, `.env`, an
    override): Dagster resolves an EnvVar when the run starts, and writes only the variable's name
    into the run's snapshot, the config shown in the UI and the event log.

    EnvVar resolves from the process environment only, and pydantic-settings reads `.env` without
    setting it there, so the value the settings resolved is exported into this process's
    environment. A run worker imports this module again (and so exports again); a subprocess
    started from here inherits it.
    """
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if not text:
        return None
    os.environ[variable] = text
    return EnvVar(variable)


def _database_url(settings: Settings) -> Any:
    """DATABASE_URL carries the database's password: an EnvVar, like the other secrets. The
    default (a SQLite file under PERF_HOME) holds none and is passed as it is."""
    if settings.database_url:
        return _secret("DATABASE_URL", settings.database_url)
    return settings.resolved_database_url


def build_resources(settings: Settings) -> dict[str, object]:
    return {
        "database": DatabaseResource(url=_database_url(settings)),
        "targets": TargetsResource(
            path=str(settings.perf_targets) if settings.perf_targets else None
        ),
        "scraper": ScraperResource(
            timeout_s=settings.scrape_timeout_s,
            concurrency=settings.scrape_concurrency,
            max_bytes=settings.scrape_max_bytes,
            max_series=settings.scrape_max_series,
            max_models=settings.scrape_max_models,
            max_label_bytes=settings.scrape_max_label_bytes,
            samples=settings.scrape_samples,
            interval_s=settings.scrape_interval_s,
            prometheus_url=settings.prometheus_url,
            prometheus_token=_secret("PROMETHEUS_TOKEN", settings.prometheus_token),
            prometheus_username=settings.prometheus_username,
            prometheus_password=_secret("PROMETHEUS_PASSWORD", settings.prometheus_password),
            prometheus_timeout_s=settings.prometheus_query_timeout_s,
            prometheus_cycle_timeout_s=settings.prometheus_cycle_timeout_s,
            prometheus_dedup_labels=settings.prometheus_dedup_labels,
            prometheus_backfill_minutes=settings.prometheus_backfill_minutes,
            prometheus_backfill_step_s=settings.prometheus_backfill_step_s,
        ),
        "analysis": AnalysisResource(
            window_minutes=settings.analysis_window_minutes,
            sustained_share=settings.detection_sustained_share,
            min_sustained_s=settings.detection_min_sustained_s,
            outcome_settle_minutes=settings.outcome_settle_minutes,
            recommendation_ttl_minutes=settings.recommendation_ttl_minutes,
        ),
        "agent": AgentResource(
            agent_id=settings.agent_id,
            agent_type=settings.agent_type,
            environment=settings.environment,
            orchestrator_url=settings.orchestrator_url,
            orchestrator_register_endpoint=settings.orchestrator_register_endpoint,
            orchestrator_heartbeat_endpoint=settings.orchestrator_heartbeat_endpoint,
            orchestrator_heartbeat_interval=settings.orchestrator_heartbeat_interval,
            orchestrator_token=_secret("ORCHESTRATOR_TOKEN", settings.orchestrator_token),
            sidecar_url=settings.advertised_sidecar_url,
            redis_url=_secret("REDIS_URL", settings.redis_url),  # redis://:password@host
        ),
        "retention": RetentionResource(days=settings.retention_days),
        "health": HealthResource(optimization_cycle_cron=settings.optimization_cycle_cron),
    }


def build_definitions(settings: Settings) -> Definitions:
    return Definitions(
        assets=[
            # Each with the freshness of the schedule that materializes it.
            *on_schedule(
                [
                    metric_snapshots,
                    bottleneck_reports,
                    tuning_recommendations,
                    recommendation_outcomes,
                ],
                settings.optimization_cycle_cron,
            ),
            *on_schedule([agent_health], settings.health_check_cron),
            orchestrator_events,
        ],
        asset_checks=[
            targets_reachable,
            snapshot_values_valid,
            no_critical_bottlenecks,
            recommendations_consistent,
            no_regressions,
        ],
        jobs=[optimization_cycle, health_check, retention],
        schedules=[
            optimization_cycle_schedule(settings.optimization_cycle_cron),
            health_check_schedule(settings.health_check_cron),
            retention_schedule(settings.retention_cron),
        ],
        sensors=[orchestrator_heartbeat_sensor(settings.orchestrator_heartbeat_interval)],
        resources=build_resources(settings),
    )


defs = build_definitions(load_settings())
