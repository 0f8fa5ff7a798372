"""The soak's second Dagster code location (bench/soak.py): the optimization cycle over part of
the simulated fleet, read through Prometheus, beside the main location (perf_pipelines.
definitions) that scrapes the rest of the fleet directly.

PROMETHEUS_URL is one setting for a whole code location, so Prometheus is in the soak's loop
as a location of its own over its own targets: a Prometheus restart then shows in that
location's rows while the directly scraped fleet carries on. Both locations share the daemon's
environment, so this one reads its differences from SOAK_PROMETHEUS_URL,
SOAK_PROMETHEUS_TARGETS and SOAK_PROMETHEUS_AGENT_ID. Only the cycle is defined here: the
health check, heartbeat sensor and retention of the agent run once, in the main location.
"""

from __future__ import annotations

import os

from dagster import Definitions

from perf_pipelines.dagster_defs.analysis import (
    bottleneck_reports,
    no_critical_bottlenecks,
    recommendations_consistent,
    tuning_recommendations,
)
from perf_pipelines.dagster_defs.jobs import optimization_cycle, optimization_cycle_schedule
from perf_pipelines.dagster_defs.outcomes import no_regressions, recommendation_outcomes
from perf_pipelines.dagster_defs.snapshots import (
    metric_snapshots,
    snapshot_values_valid,
    targets_reachable,
)
from perf_pipelines.definitions import build_resources
from perf_pipelines.settings import load_settings

settings = load_settings(
    prometheus_url=os.environ["SOAK_PROMETHEUS_URL"],
    perf_targets=os.environ["SOAK_PROMETHEUS_TARGETS"],
    agent_id=os.environ.get("SOAK_PROMETHEUS_AGENT_ID", "perf-soak-prometheus"),
)

defs = Definitions(
    assets=[metric_snapshots, bottleneck_reports, tuning_recommendations, recommendation_outcomes],
    asset_checks=[
        targets_reachable,
        snapshot_values_valid,
        no_critical_bottlenecks,
        recommendations_consistent,
        no_regressions,
    ],
    jobs=[optimization_cycle],
    schedules=[optimization_cycle_schedule(settings.optimization_cycle_cron)],
    resources=build_resources(settings),
)
