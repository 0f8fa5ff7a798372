"""The Dagster code location: `dagster dev -m perf_pipelines.definitions`."""

from __future__ import annotations

from dagster import Definitions, EnvVar

from perf_pipelines.dagster_defs.analysis import (
    bottleneck_reports,
    no_critical_bottlenecks,
    recommendations_consistent,
    tuning_recommendations,
)
from perf_pipelines.dagster_defs.jobs import optimization_cycle, optimization_cycle_schedule
from perf_pipelines.dagster_defs.resources import (
    AgentResource,
    AnalysisResource,
    DatabaseResource,
    ScraperResource,
    TargetsResource,
)
from perf_pipelines.dagster_defs.snapshots import (
    metric_snapshots,
    snapshot_values_valid,
    targets_reachable,
)
from perf_pipelines.settings import Settings, load_settings


def build_resources(settings: Settings) -> dict[str, object]:
    return {
        "database": DatabaseResource(url=settings.resolved_database_url),
        "targets": TargetsResource(
            path=str(settings.perf_targets) if settings.perf_targets else None
        ),
        "scraper": ScraperResource(
            timeout_s=settings.scrape_timeout_s,
            concurrency=settings.scrape_concurrency,
            max_bytes=settings.scrape_max_bytes,
            samples=settings.scrape_samples,
            interval_s=settings.scrape_interval_s,
        ),
        "analysis": AnalysisResource(window_minutes=settings.analysis_window_minutes),
        "agent": AgentResource(
            agent_id=settings.agent_id,
            agent_type=settings.agent_type,
            orchestrator_url=settings.orchestrator_url,
            orchestrator_register_endpoint=settings.orchestrator_register_endpoint,
            orchestrator_heartbeat_endpoint=settings.orchestrator_heartbeat_endpoint,
            orchestrator_heartbeat_interval=settings.orchestrator_heartbeat_interval,
            # EnvVar keeps the token's value out of the run config shown in the Dagster UI.
            orchestrator_token=EnvVar("ORCHESTRATOR_TOKEN") if settings.token else None,
            sidecar_url=f"http://{settings.host}:{settings.port}",
            redis_url=settings.redis_url,
        ),
    }


def build_definitions(settings: Settings) -> Definitions:
    return Definitions(
        assets=[metric_snapshots, bottleneck_reports, tuning_recommendations],
        asset_checks=[
            targets_reachable,
            snapshot_values_valid,
            no_critical_bottlenecks,
            recommendations_consistent,
        ],
        jobs=[optimization_cycle],
        schedules=[optimization_cycle_schedule(settings.optimization_cycle_cron)],
        resources=build_resources(settings),
    )


defs = build_definitions(load_settings())
