"""Statistics of one target × model over a window of `metric_snapshots` rows (pandas in, plain
dataclass out), shared by bottleneck detection and recommendations."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from perf_pipelines.analysis.promql import (
    counter_increase,
    histogram_delta,
    histogram_quantile,
    increases,
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

    # Several rules read the gauges with missing samples as zero; cached because np.nan_to_num
    # per rule and target was a third of detect()'s time at 1,000 targets.
    @cached_property
    def running_or_zero(self) -> np.ndarray:
        return np.nan_to_num(self.running, nan=0.0)

    @cached_property
    def waiting_or_zero(self) -> np.ndarray:
        return np.nan_to_num(self.waiting, nan=0.0)


_COUNTERS = {
    "preemptions": "preemptions_total",
    "prompt_tokens": "prompt_tokens_total",
    "generation_tokens": "generation_tokens_total",
    "finished": "requests_finished_total",
    "failed": "requests_failed_total",
    "prefix_queries": "prefix_cache_queries_total",
    "prefix_hits": "prefix_cache_hits_total",
}
_PREEMPTIONS = list(_COUNTERS).index("preemptions")
_HISTOGRAMS = {
    "ttft": "ttft_seconds",
    "itl": "itl_seconds",
    "e2e": "e2e_seconds",
    "queue": "queue_seconds",
}


def _floats(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A gauge column as floats; anything that is not a number becomes NaN."""
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


class _Rows:
    """The columns the analysis reads, as arrays whose rows are ordered by target, then time.

    Taking each column out of the frame once and slicing arrays per (target, model) costs
    microseconds; a pandas selection per group costs milliseconds, which at a thousand targets
    was most of the analysis.
    """

    def __init__(self, frame: pd.DataFrame) -> None:
        codes, names = pd.factorize(frame["target"], sort=True)  # NaN targets: -1, dropped
        times = pd.to_datetime(frame["collected_at"], utc=True)
        kept = np.flatnonzero(codes >= 0)
        # lexsort is stable: rows at the same instant keep the frame's order.
        order = kept[np.lexsort((times.array.asi8[kept], codes[kept]))]
        self.target_names = [str(name) for name in names]
        # row range of each target, in the order of `target_names`
        self.bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
        self.times = times.array[order]
        self.up = frame["up"].to_numpy()[order].astype(bool)
        self.engine = frame["engine"].to_numpy(dtype=object)[order]
        self.has_engine = pd.notna(self.engine)
        self.error = frame["error"].to_numpy(dtype=object)[order]
        model_codes, models = pd.factorize(frame["model"])
        # Models are strings; anything else (NULL) is no model. Codes rank them by name.
        named = sorted((m, code) for code, m in enumerate(models) if isinstance(m, str))
        rank = np.full(len(models) + 1, -1)  # the last slot is for factorize's -1 (missing)
        for position, (_, code) in enumerate(named):
            rank[code] = position
        self.model_names = [name for name, _ in named]
        self.model = rank[model_codes[order]]
        self.objects = {
            column: frame[column].to_numpy(dtype=object)[order]
            for column in ("settings", "extra", "kv_cache_capacity_tokens", *_HISTOGRAMS.values())
        }
        # where a histogram column holds something at all (only those can be dicts)
        self.filled = {column: pd.notna(self.objects[column]) for column in _HISTOGRAMS.values()}
        self.gauges = {
            column: _floats(frame, column)[order]
            for column in ("requests_running", "requests_waiting", "kv_cache_usage")
        }
        self.counters = np.column_stack(
            [
                frame[column].to_numpy(dtype=float, na_value=np.nan)[order]
                for column in _COUNTERS.values()
            ]
        )


def _histogram(value: Any) -> dict[str, Any] | None:
    """A histogram cell: a dict, or its stored JSON text (`load_snapshots(decode_histograms=
    False)`, so that only the histograms used here are decoded); anything else is none."""
    if isinstance(value, str):
        value = json.loads(value)
    return value if isinstance(value, dict) else None


def _first_and_last_histogram(values: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The first and the last histogram among `values`, if there are two."""
    for first in range(len(values)):
        earliest = _histogram(values[first])
        if earliest is not None:
            break
    else:
        return None
    for last in range(len(values) - 1, first, -1):
        latest = _histogram(values[last])
        if latest is not None:
            return earliest, latest
    return None


def _stats_for(
    key: tuple[str, str | None],
    rows: _Rows,
    up: np.ndarray,
    down: np.ndarray,
    target: Target | None,
    window_start: datetime,
    window_end: datetime,
) -> WindowStats:
    """Statistics of one (target, model): `up` are its successful scrapes, `down` the failed
    scrapes of its target, both as positions in `rows` in time order."""
    distinct: dict[Any, None] = {}  # the first five error texts, in order of appearance
    for error in rows.error[down]:
        if not pd.isna(error):
            distinct.setdefault(error)
            if len(distinct) == 5:
                break
    errors = [str(error) for error in distinct]
    span = (rows.times[up[-1]] - rows.times[up[0]]).total_seconds() if len(up) >= 2 else 0.0
    latest = up[-1] if len(up) else None
    settings: dict[str, Any] = (
        dict(rows.objects["settings"][latest] or {}) if latest is not None else {}
    )
    settings.update(target.config if target else {})
    kv_usage = rows.gauges["kv_cache_usage"][up]
    kv_source: str | None = (
        "kv_cache_usage" if len(kv_usage) and not np.isnan(kv_usage).all() else None
    )
    if kv_source is None and len(up):
        ratios = np.array(
            [
                (extra or {}).get("kv_reservation_ratio", np.nan)
                for extra in rows.objects["extra"][up]
            ],
            dtype=float,
        )
        if not np.isnan(ratios).all():
            kv_usage, kv_source = ratios, "kv_reservation_ratio (TGI: reserved, not used, tokens)"
    limit, limit_source = _batch_limit(target, settings)
    everything = np.sort(np.concatenate((up, down))) if len(down) else up
    engines = everything[rows.has_engine[everything]]
    capacity: Any = None if latest is None else rows.objects["kv_cache_capacity_tokens"][latest]
    stats = WindowStats(
        target=key[0],
        model=key[1],
        engine=rows.engine[engines[-1]] if len(engines) else None,
        window_start=window_start,
        window_end=window_end,
        samples=len(up) + len(down),
        up_samples=len(up),
        errors=errors,
        span_s=span,
        running=rows.gauges["requests_running"][up],
        waiting=rows.gauges["requests_waiting"][up],
        kv_usage=kv_usage,
        kv_usage_source=kv_source,
        batch_limit=limit,
        batch_limit_source=limit_source,
        settings=settings,
        kv_capacity_tokens=None if pd.isna(capacity) else float(capacity),
    )
    if len(up) < 2 or span <= 0:
        return stats
    counters = rows.counters[up]
    for index, name in enumerate(_COUNTERS):
        increase = counter_increase(counters[:, index])
        stats.increases[name] = increase
        stats.rates[name] = None if increase is None else increase / span
    preemptions = increases(counters[:, _PREEMPTIONS])
    stats.intervals = len(up) - 1
    stats.preemption_intervals_with_increase = int(np.count_nonzero(preemptions > 0))
    for name, column in _HISTOGRAMS.items():
        filled = up[rows.filled[column][up]]
        present = _first_and_last_histogram(rows.objects[column][filled])
        if present is None:
            stats.quantiles[f"{name}_p95"] = None
            continue
        delta = histogram_delta(*present)
        bounds = [float(b) for b in present[1]["bounds"]]
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
    """One `WindowStats` per (target, model) in the rows of `load_snapshots`, by target name,
    then model name.

    Rows of a failed scrape carry no model; they count towards every model of their target (a
    server that is down is down for all its models) or stand alone when the target never
    answered in the window.
    """
    if frame.empty:
        return []
    rows = _Rows(frame)
    results = []
    for index, target_name in enumerate(rows.target_names):
        positions = np.arange(rows.bounds[index], rows.bounds[index + 1])
        answered = rows.up[positions]
        up, down = positions[answered], positions[~answered]
        models = rows.model[positions]
        entries: list[tuple[str | None, np.ndarray]]
        if not len(up):  # never answered: one entry, under the model the targets file names
            named = models[models >= 0]
            entries = [(rows.model_names[named[0]] if len(named) else None, up)]
        else:
            up_models = models[answered]
            present = np.unique(up_models[up_models >= 0])  # ascending rank: sorted by name
            if len(present):
                entries = [(rows.model_names[m], up[up_models == m]) for m in present]
            else:
                entries = [(None, up)]
        for model, mine in entries:
            results.append(
                _stats_for(
                    (target_name, model),
                    rows,
                    mine,
                    down,
                    targets.get(target_name),
                    window_start,
                    window_end,
                )
            )
    return results


def finite(value: float | None) -> bool:
    return value is not None and not math.isnan(value)
