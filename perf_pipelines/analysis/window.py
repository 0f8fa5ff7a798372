"""Statistics of one target × model over a window of `metric_snapshots` rows (pandas in, plain
dataclass out), shared by bottleneck detection and recommendations."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from perf_pipelines.analysis.promql import (
    counter_increase,
    histogram_delta,
    histogram_quantile,
    interval_increases,
)
from perf_pipelines.targets import Target

# Each engine's name for the cap on concurrently running requests, in the order we look.
BATCH_LIMIT_SETTINGS = (
    "max_num_seqs",  # vLLM
    "max_running_requests",  # SGLang
    "max_batch_size",  # TGI
    "parallel",  # llama.cpp
)


@dataclass
class WindowStats:
    target: str
    model: str | None
    engine: str | None
    window_start: datetime
    window_end: datetime
    samples: int  # rows in the window, up or down
    up_samples: int
    errors: list[str]
    span_s: float  # first to last successful sample
    running: np.ndarray
    waiting: np.ndarray
    kv_usage: np.ndarray  # NaN where not exported
    kv_usage_source: str | None  # "kv_cache_usage" or a proxy such as TGI's reservation ratio
    batch_limit: float | None
    batch_limit_source: str | None
    rates: dict[str, float | None] = field(default_factory=dict)  # per second
    increases: dict[str, float | None] = field(default_factory=dict)
    preemption_intervals_with_increase: int = 0
    intervals: int = 0
    quantiles: dict[str, float | None] = field(default_factory=dict)  # seconds
    observations: dict[str, float] = field(default_factory=dict)  # histogram counts in window
    settings: dict[str, Any] = field(default_factory=dict)
    kv_capacity_tokens: float | None = None

    @property
    def up_share(self) -> float:
        return self.up_samples / self.samples if self.samples else 0.0


_COUNTERS = {
    "preemptions": "preemptions_total",
    "prompt_tokens": "prompt_tokens_total",
    "generation_tokens": "generation_tokens_total",
    "finished": "requests_finished_total",
    "failed": "requests_failed_total",
    "prefix_queries": "prefix_cache_queries_total",
    "prefix_hits": "prefix_cache_hits_total",
}
_HISTOGRAMS = {
    "ttft": "ttft_seconds",
    "itl": "itl_seconds",
    "e2e": "e2e_seconds",
    "queue": "queue_seconds",
}


def _floats(frame: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)


def _batch_limit(
    target: Target | None, settings: Mapping[str, Any]
) -> tuple[float | None, str | None]:
    config = target.config if target else {}
    for name in BATCH_LIMIT_SETTINGS:
        for source, values in (("targets file", config), ("server settings", settings)):
            value = values.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                return float(value), f"{name} from {source}"
    return None, None


def _stats_for(
    key: tuple[str, str | None],
    rows: pd.DataFrame,
    target: Target | None,
    window_start: datetime,
    window_end: datetime,
) -> WindowStats:
    up = rows[rows["up"].astype(bool)]
    errors = [str(e) for e in rows.loc[~rows["up"].astype(bool), "error"].dropna().unique()[:5]]
    times = up["collected_at"]
    span = (times.iloc[-1] - times.iloc[0]).total_seconds() if len(up) >= 2 else 0.0
    latest = up.iloc[-1] if len(up) else None
    settings: dict[str, Any] = dict(latest["settings"] or {}) if latest is not None else {}
    settings.update(target.config if target else {})
    kv_usage = _floats(up, "kv_cache_usage") if len(up) else np.array([])
    kv_source: str | None = (
        "kv_cache_usage" if len(kv_usage) and not np.isnan(kv_usage).all() else None
    )
    if kv_source is None and len(up):
        ratios = np.array(
            [(extra or {}).get("kv_reservation_ratio", np.nan) for extra in up["extra"]],
            dtype=float,
        )
        if not np.isnan(ratios).all():
            kv_usage, kv_source = ratios, "kv_reservation_ratio (TGI: reserved, not used, tokens)"
    limit, limit_source = _batch_limit(target, settings)
    stats = WindowStats(
        target=key[0],
        model=key[1],
        engine=(rows["engine"].dropna().iloc[-1] if rows["engine"].notna().any() else None),
        window_start=window_start,
        window_end=window_end,
        samples=len(rows),
        up_samples=len(up),
        errors=errors,
        span_s=span,
        running=_floats(up, "requests_running") if len(up) else np.array([]),
        waiting=_floats(up, "requests_waiting") if len(up) else np.array([]),
        kv_usage=kv_usage,
        kv_usage_source=kv_source,
        batch_limit=limit,
        batch_limit_source=limit_source,
        settings=settings,
        kv_capacity_tokens=(
            None
            if latest is None or pd.isna(latest["kv_cache_capacity_tokens"])
            else float(latest["kv_cache_capacity_tokens"])
        ),
    )
    if len(up) < 2 or span <= 0:
        return stats
    for name, column in _COUNTERS.items():
        values = [None if pd.isna(v) else float(v) for v in up[column]]
        increase = counter_increase(values)
        stats.increases[name] = increase
        stats.rates[name] = None if increase is None else increase / span
    preemptions = interval_increases(
        [None if pd.isna(v) else float(v) for v in up["preemptions_total"]]
    )
    stats.intervals = len(up) - 1
    stats.preemption_intervals_with_increase = sum(1 for d in preemptions if d > 0)
    for name, column in _HISTOGRAMS.items():
        present = [h for h in up[column] if isinstance(h, dict)]
        if len(present) < 2:
            stats.quantiles[f"{name}_p95"] = None
            continue
        delta = histogram_delta(present[0], present[-1])
        bounds = [float(b) for b in present[-1]["bounds"]]
        stats.observations[name] = delta[-1] if delta else 0.0
        for q in (0.5, 0.95):
            stats.quantiles[f"{name}_p{round(q * 100)}"] = (
                histogram_quantile(q, bounds, delta) if delta else None
            )
    hits, queries = stats.increases.get("prefix_hits"), stats.increases.get("prefix_queries")
    stats.rates["prefix_hit_rate"] = hits / queries if hits is not None and queries else None
    return stats


def window_stats(
    frame: pd.DataFrame,
    targets: Mapping[str, Target],
    window_start: datetime,
    window_end: datetime,
) -> list[WindowStats]:
    """One `WindowStats` per (target, model) in the rows of `load_snapshots`.

    Rows of a failed scrape carry no model; they count towards every model of their target (a
    server that is down is down for all its models) or stand alone when the target never
    answered in the window.
    """
    if frame.empty:
        return []
    frame = frame.sort_values("collected_at")
    results = []
    for target_name, rows in frame.groupby("target", sort=True):
        down_rows = rows[~rows["up"].astype(bool)]
        up_rows = rows[rows["up"].astype(bool)]
        if up_rows.empty:  # never answered: one entry, under the model the targets file names
            models: list[str | None] = [
                next((m for m in rows["model"] if isinstance(m, str)), None)
            ]
        else:
            models = sorted({m for m in up_rows["model"] if isinstance(m, str)}) or [None]
        for model in models:
            mine = up_rows if model is None else up_rows[up_rows["model"] == model]
            combined = pd.concat([mine, down_rows]).sort_values("collected_at")
            results.append(
                _stats_for(
                    (str(target_name), model),
                    combined,
                    targets.get(str(target_name)),
                    window_start,
                    window_end,
                )
            )
    return results


def finite(value: float | None) -> bool:
    return value is not None and not math.isnan(value)
