"""What in-process tests of the optimization cycle share: its assets with their checks, and the
resources that run them against a database and a targets file."""

from pathlib import Path

from perf_pipelines.dagster_defs.analysis import (
    bottleneck_reports,
    no_critical_bottlenecks,
    recommendations_consistent,
    tuning_recommendations,
)
from perf_pipelines.dagster_defs.resources import (
    AnalysisResource,
    DatabaseResource,
    ScraperResource,
    TargetsResource,
)
from perf_pipelines.dagster_defs.snapshots import metric_snapshots

# Scrape → detect → recommend, with the checks that judge each step.
CYCLE = [
    metric_snapshots,
    bottleneck_reports,
    tuning_recommendations,
    no_critical_bottlenecks,
    recommendations_consistent,
]


def cycle_resources(
    database_url: str,
    targets: Path,
    *,
    samples: int,
    interval_s: float,
    timeout_s: float = 2.0,
    window_minutes: float = 15,
    min_sustained_s: float | None = None,
) -> dict[str, object]:
    """`min_sustained_s` lowers DETECTION_MIN_SUSTAINED_S for tests whose history is seconds."""
    analysis = AnalysisResource(window_minutes=window_minutes)
    if min_sustained_s is not None:
        analysis = AnalysisResource(window_minutes=window_minutes, min_sustained_s=min_sustained_s)
    return {
        "database": DatabaseResource(url=database_url),
        "targets": TargetsResource(path=str(targets)),
        "scraper": ScraperResource(timeout_s=timeout_s, samples=samples, interval_s=interval_s),
        "analysis": analysis,
    }
