"""Build `load_snapshots`-shaped DataFrames from canonical values, for rule tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from perf_lab.evaluation.closed_loop import snapshot_frame
from perf_pipelines.engines.canonical import CanonicalSnapshot, Histogram
from perf_pipelines.storage.snapshots import SnapshotRow

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
ITL_BOUNDS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2)


def itl_histogram(count: float, at_bucket: int) -> Histogram:
    """`count` observations all in bucket `at_bucket` (cumulative counts)."""
    cumulative = (*tuple(0.0 if i < at_bucket else count for i in range(len(ITL_BOUNDS))), count)
    return Histogram(ITL_BOUNDS, cumulative, sum=count * ITL_BOUNDS[at_bucket], count=count)


def frame(
    samples: list[dict[str, Any]],
    target: str = "vllm-a",
    engine: str = "vllm",
    model: str | None = "meta-llama/Llama-3.1-8B-Instruct",
    step_s: float = 15.0,
) -> pd.DataFrame:
    """One row per dict: canonical field values, or {"down": "reason"} for a failed scrape."""
    rows = []
    for index, values in enumerate(samples):
        values = dict(values)
        down = values.pop("down", None)
        snapshot = None if down else CanonicalSnapshot(model=model, **values)
        rows.append(
            SnapshotRow(
                run_id=f"run-{index // 4}",
                sample_index=index % 4,
                target=target,
                engine=engine,
                model=model,
                collected_at=T0 + timedelta(seconds=step_s * index),
                up=down is None,
                error=down,
                scrape_ms=5.0,
                body_bytes=1000,
                snapshot=snapshot,
            )
        )
    return snapshot_frame(rows)


def window_bounds(data: pd.DataFrame) -> tuple[datetime, datetime]:
    return data["collected_at"].min().to_pydatetime(), data["collected_at"].max().to_pydatetime()
