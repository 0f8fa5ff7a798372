"""Build `load_snapshots`-shaped DataFrames from canonical values, for rule tests; and scrape a
simulated fleet over HTTP on loopback into the same shape, on the fleet's virtual clock."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from perf_pipelines.collection.collector import ScrapeLimits, collect
from perf_pipelines.collection.rounds import rows_from_rounds
from perf_pipelines.engines.canonical import CanonicalSnapshot, Histogram
from perf_pipelines.storage.snapshots import SnapshotRow
from perf_pipelines.targets import Target

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
ITL_BOUNDS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2)


def itl_histogram(count: float, at_bucket: int) -> Histogram:
    """`count` observations all in bucket `at_bucket` (cumulative counts)."""
    cumulative = (*tuple(0.0 if i < at_bucket else count for i in range(len(ITL_BOUNDS))), count)
    return Histogram(ITL_BOUNDS, cumulative, sum=count * ITL_BOUNDS[at_bucket], count=count)


def snapshot_frame(rows: list[SnapshotRow]) -> pd.DataFrame:
    """Rows as `load_snapshots` returns them."""
    frame = pd.DataFrame([row.as_record() for row in rows])
    frame["collected_at"] = pd.to_datetime(frame["collected_at"], utc=True)
    return frame


def frame(
    samples: list[dict[str, Any]],
    target: str = "vllm-a",
    engine: str = "vllm",
    model: str | None = "meta-llama/Llama-3.1-8B-Instruct",
    step_s: float = 15.0,
    *,
    offsets_s: Sequence[float] | None = None,
    samples_per_run: int = 4,
) -> pd.DataFrame:
    """One row per dict: canonical field values, or {"down": "reason"} for a failed scrape.

    Samples are `step_s` apart unless `offsets_s` gives each one's time (seconds after T0); runs
    (`run_id`) hold `samples_per_run` consecutive samples, as one cycle of the collector does.
    """
    times = list(offsets_s) if offsets_s is not None else [step_s * i for i in range(len(samples))]
    if len(times) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(times)} offsets")
    rows = []
    for index, values in enumerate(samples):
        values = dict(values)
        down = values.pop("down", None)
        snapshot = None if down else CanonicalSnapshot(model=model, **values)
        rows.append(
            SnapshotRow(
                run_id=f"run-{index // samples_per_run}",
                sample_index=index % samples_per_run,
                target=target,
                engine=engine,
                model=model,
                collected_at=T0 + timedelta(seconds=times[index]),
                up=down is None,
                error=down,
                scrape_ms=5.0,
                body_bytes=1000,
                snapshot=snapshot,
            )
        )
    return snapshot_frame(rows)


def cycles(samples: int, interval_s: float, every_s: float, count: int) -> list[float]:
    """Sample times of `count` collector cycles of `samples` samples `interval_s` apart, one
    cycle every `every_s` seconds (the default schedule: 8 samples 5 s apart every 300 s)."""
    return [c * every_s + i * interval_s for c in range(count) for i in range(samples)]


def window_bounds(data: pd.DataFrame) -> tuple[datetime, datetime]:
    return data["collected_at"].min().to_pydatetime(), data["collected_at"].max().to_pydatetime()


def scrape_fleet(
    fleet: Any, targets: list[Target], samples: int, interval_s: float, label: str = "sim"
) -> pd.DataFrame:
    """`samples` scrapes of every target over HTTP, `interval_s` apart on the fleet's virtual
    clock (no sleeping: the clock is advanced), each row stamped with the simulated time; one
    run, as one collector cycle."""
    limits = ScrapeLimits(timeout_s=10.0, concurrency=16)
    rows: list[SnapshotRow] = []
    for index in range(samples):
        if index:
            fleet.advance(interval_s)
        simulated_at = datetime.fromtimestamp(fleet.now(), UTC)
        (results,) = asyncio.run(collect(targets, limits, samples=1))
        rows.extend(
            dataclasses.replace(row, run_id=label, sample_index=index, collected_at=simulated_at)
            for row in rows_from_rounds(f"{label}-{index}", [results])
        )
    return snapshot_frame(rows)
