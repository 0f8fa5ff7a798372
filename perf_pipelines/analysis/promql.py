"""The two PromQL semantics the analysis relies on: `increase()` with counter resets, and
`histogram_quantile()` over bucket deltas, reproduced so that our numbers match what a user
sees in Grafana for the same window."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def increases(values: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """The increase of each consecutive pair of present samples (a reset counts its new value).

    Missing samples (None or NaN) are skipped, not read as zero.
    """
    samples = np.asarray(values, dtype=float)
    present = samples[~np.isnan(samples)]
    previous, current = present[:-1], present[1:]
    steps: np.ndarray = np.where(current >= previous, current - previous, current)
    return steps


def counter_increase(values: Sequence[float | None] | np.ndarray) -> float | None:
    """Total increase of a counter over consecutive samples, treating a drop as a restart.

    Like PromQL `increase()` without extrapolation: after a reset the new value counts from 0.
    None where the counter was never exported.
    """
    steps = increases(values)
    if len(steps) == 0:
        return None
    # cumsum adds left to right, as a loop would: np.sum pairs terms and can round differently.
    return float(np.cumsum(steps)[-1])


def interval_increases(values: Sequence[float | None] | np.ndarray) -> list[float]:
    """The increase of each consecutive pair (a reset counts its new value)."""
    return [float(value) for value in increases(values)]


def histogram_delta(
    first: dict[str, Any] | None, last: dict[str, Any] | None
) -> list[float] | None:
    """Cumulative bucket counts observed between two scrapes of one histogram.

    If the server restarted in between (a count went down) or the layout changed, the later
    histogram alone is the best estimate, as PromQL's `increase()` would take it.
    """
    if last is None:
        return None
    later = [float(c) for c in last["cumulative"]]
    if first is None or first["bounds"] != last["bounds"]:
        return later
    earlier = [float(c) for c in first["cumulative"]]
    if any(b < a for a, b in zip(earlier, later, strict=True)):
        return later
    return [b - a for a, b in zip(earlier, later, strict=True)]


def histogram_quantile(
    q: float, bounds: Sequence[float], cumulative: Sequence[float]
) -> float | None:
    """Prometheus `histogram_quantile`: linear interpolation inside the bucket that holds rank q.

    `cumulative` has one more entry than `bounds` (the +Inf bucket). A rank in the +Inf bucket
    returns the highest finite bound; the first bucket interpolates from 0 unless its upper
    bound is ≤ 0. None when nothing was observed.
    """
    if not 0 <= q <= 1:
        raise ValueError("quantile must be within [0, 1]")
    total = cumulative[-1] if cumulative else 0.0
    if total <= 0:
        return None
    rank = q * total
    index = next(i for i, count in enumerate(cumulative) if count >= rank)
    if index == len(bounds):  # +Inf bucket
        return bounds[-1] if bounds else None
    upper = bounds[index]
    if index == 0:
        if upper <= 0:
            return upper
        lower, below = 0.0, 0.0
    else:
        lower, below = bounds[index - 1], cumulative[index - 1]
    in_bucket = cumulative[index] - below
    if in_bucket <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / in_bucket
