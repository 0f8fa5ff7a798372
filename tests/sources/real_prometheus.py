"""Scrape configs for the Prometheus-source faults: label sets (two jobs, replica labels on one
target) that `run_prometheus`'s one-job-per-target config cannot express. They run under
`tests.support.prometheus.prometheus_on`, whose TSDB directory the test owns, so that a
restart on the same data is a second `with` on the same folder.
"""

from __future__ import annotations

from typing import Any


def scrape_config(jobs: dict[str, list[tuple[str, dict[str, str]]]]) -> dict[str, Any]:
    """A 1 s scrape config: {job: [(host:port, target labels), ...]} of `/metrics` targets."""
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [
                    {"targets": [address], "labels": labels} for address, labels in entries
                ],
            }
            for job, entries in jobs.items()
        ],
    }
