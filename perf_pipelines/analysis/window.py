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

# A gap between two successful samples longer than this many typical scrape intervals (of the
# sample's own run) is not observed time: the 5-minute pauses between cycles say nothing about
# what happened in them. See `time_weights` and docs/detection.md §2.
GAP_CAP_FACTOR = 2.0

# Each engine's name for the cap on concurrently running requests, in the order we look.
BATCH_LIMIT_SETTINGS = (
    "max_num_seqs",  # vLLM
    "max_running_requests",  # SGLang
    "max_batch_size",  # TGI
    "parallel",  # llama.cpp
)


@dataclass
class WindowStats:
    """Pure data: what one (target, model) showed in a window. Gauges are per successful sample,
    in time order; `sample_weights_s` says how many seconds of wall time each one stands for, so
    every "how long" and every mean here is a share of observed time, not of a sample count."""

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
    kv_capacity_tokens: float | None = None  # KV pool in tokens, as the server exports it
    # --- time (seconds) -----------------------------------------------------------------------
    # Seconds of wall time each successful sample stands for: the time to the next successful
    # sample, or the typical scrape interval of its run where that gap is longer than
    # GAP_CAP_FACTOR intervals (a pause between cycles, not observed) and for the last sample.
    sample_weights_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # Seconds of observed time between consecutive successful samples; 0 for an unobserved gap.
    interval_weights_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    observed_s: float = 0.0  # sum of sample_weights_s
    scrape_interval_s: float | None = None  # median gap between samples of one run
    # Increase of the preemption counter in each interval (reset-aware; NaN where not measured).
    preemption_increases: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # --- time-weighted means over the samples that carry the value; None when none does ------
    running_mean: float | None = None  # requests in the running batch
    waiting_mean: float | None = None  # requests queued (llama.cpp: requests_deferred)
    kv_usage_mean: float | None = None  # fraction 0-1 of the KV pool (or of the named proxy)
    # --- per-request and token figures the rules size steps from ------------------------------
    prompt_tokens_per_request: float | None = None  # prompt tokens / finished requests, window
    generation_tokens_per_request: float | None = None  # generated tokens / finished requests
    # prompt + generated tokens per finished request: the context a request reaches at its end
    context_tokens_per_request: float | None = None
    kv_tokens_in_use_mean: float | None = None  # kv_usage_mean × kv_capacity_tokens (real gauge)
    # TGI batches by tokens: its budget (--max-batch-total-tokens, tgi_batch_max_total_tokens)
    # and, per sample, the tokens the running batch reserves (tgi_batch_current_max_tokens).
    token_budget_tokens: float | None = None
    batch_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0))  # NaN: not exported
    batch_tokens_mean: float | None = None
    reserved_tokens_per_request: float | None = None  # batch tokens / running, time-weighted
    # llama.cpp: slots (--parallel) and the context each slot gets, as the server's /props
    # states them (settings `parallel`, `ctx_per_slot`), else from the targets file
    # (--ctx-size / --parallel when the KV cache is split per slot).
    slots: float | None = None
    ctx_per_slot_tokens: float | None = None

    @property
    def up_share(self) -> float:
        return self.up_samples / self.samples if self.samples else 0.0

    # Several rules read the gauges with missing samples as zero; cached because np.nan_to_num
    # per rule and target was a third of detect()'s time at 1,000 targets.
    @cached_property
    def running_or_zero(self) -> np.ndarray:
        zeroed: np.ndarray = np.nan_to_num(self.running, nan=0.0)
        return zeroed

    @cached_property
    def waiting_or_zero(self) -> np.ndarray:
        zeroed: np.ndarray = np.nan_to_num(self.waiting, nan=0.0)
        return zeroed


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
        seconds = ((times - times.min()) / pd.Timedelta(seconds=1)).to_numpy(dtype=float)
        order = kept[np.lexsort((seconds[kept], codes[kept]))]
        self.target_names = [str(name) for name in names]
        # row range of each target, in the order of `target_names`
        self.bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
        self.times = times.array[order]
        # seconds since the earliest row, whatever the datetime unit pandas chose
        self.seconds = seconds[order]
        runs = frame["run_id"] if "run_id" in frame.columns else pd.Series(0, index=frame.index)
        self.runs = pd.factorize(runs)[0][order]
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


def time_weights(
    times_s: np.ndarray, runs: np.ndarray | None = None, cap_factor: float = GAP_CAP_FACTOR
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Seconds of wall time each sample stands for, seconds of observed time in each interval
    between consecutive samples, and the typical scrape interval.

    A sample stands for the time to the next sample (the value is held until it is read again),
    unless that gap is longer than `cap_factor` × the typical interval of the sample's run: such
    a gap (the pause between two cycles) was not observed, and the sample then stands for one
    typical interval, as the last sample of the window does. The typical interval of a run is the
    median gap between its own samples; a run of one sample (or samples without run ids) takes the
    median over all runs. Whatever the scrape interval or the number of samples, the weights add
    up to the wall time actually watched.
    """
    n = len(times_s)
    if n < 2:
        return np.zeros(n), np.zeros(0), None
    gaps = np.clip(np.diff(times_s), 0.0, None)
    runs = np.zeros(n, dtype=int) if runs is None else runs
    same_run = runs[1:] == runs[:-1]
    within = gaps[same_run & (gaps > 0)]
    pool = within if len(within) else gaps[gaps > 0]
    if not len(pool):  # every sample at the same instant: no time observed
        return np.zeros(n), np.zeros(n - 1), None
    typical = float(np.median(pool))
    per_sample = np.full(n, typical)
    if len(within):
        starts = np.flatnonzero(np.concatenate(([True], ~same_run)))
        for start, stop in zip(starts, [*starts[1:], n], strict=True):
            own = gaps[start : stop - 1]
            own = own[own > 0]
            if len(own):
                per_sample[start:stop] = float(np.median(own))
    observed = gaps <= cap_factor * per_sample[:-1]
    intervals = np.where(observed, gaps, 0.0)
    samples = np.append(np.where(observed, gaps, per_sample[:-1]), per_sample[-1])
    return samples, intervals, typical


def aligned_increases(values: np.ndarray) -> np.ndarray:
    """The increase in each interval between consecutive samples (a reset counts its new value),
    NaN for an interval that does not end at a sample with a value. Where values are missing in
    between, the increase since the previous value is put on the interval that ends the gap."""
    result = np.full(max(len(values) - 1, 0), np.nan)
    present = np.flatnonzero(np.isfinite(values))
    if len(present) < 2:
        return result
    previous, current = values[present[:-1]], values[present[1:]]
    result[present[1:] - 1] = np.where(current >= previous, current - previous, current)
    return result


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float | None:
    """Mean of the finite values, each weighted by the seconds its sample stands for; None when
    no value is finite."""
    if len(values) != len(weights):
        return None
    present = np.isfinite(values)
    if not present.any():
        return None
    total = float(np.sum(weights[present]))
    if total <= 0:
        return float(np.mean(values[present]))
    return float(np.sum(values[present] * weights[present]) / total)


def _number(value: Any) -> float | None:
    """A positive finite number from a setting (targets file or server), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def _per_request(stats: WindowStats) -> None:
    finished = stats.increases.get("finished")
    prompt = stats.increases.get("prompt_tokens")
    generated = stats.increases.get("generation_tokens")
    if not finished or finished <= 0:
        return
    if prompt is not None:
        stats.prompt_tokens_per_request = prompt / finished
    if generated is not None:
        stats.generation_tokens_per_request = generated / finished
    if prompt is not None and generated is not None:
        stats.context_tokens_per_request = (prompt + generated) / finished


def _token_budget(stats: WindowStats, ratios: np.ndarray, capacities: np.ndarray) -> None:
    """TGI: the token budget and the tokens the running batch reserves, per sample."""
    budget = _number(stats.settings.get("max_batch_total_tokens"))
    if budget is None and np.isfinite(ratios).any():
        budget = stats.kv_capacity_tokens
    if budget is None:
        return
    stats.token_budget_tokens = budget
    scale = np.where(np.isfinite(capacities) & (capacities > 0), capacities, budget)
    stats.batch_tokens = ratios * scale
    weights = stats.sample_weights_s
    stats.batch_tokens_mean = weighted_mean(stats.batch_tokens, weights)
    busy = np.isfinite(stats.batch_tokens) & (np.nan_to_num(stats.running, nan=0.0) > 0)
    per_request = np.full(len(ratios), np.nan)
    per_request[busy] = stats.batch_tokens[busy] / stats.running[busy]
    stats.reserved_tokens_per_request = weighted_mean(per_request, weights)


def _slots(stats: WindowStats) -> None:
    """llama.cpp: slots and the context of each (not in /metrics; /props or the targets file)."""
    if stats.engine != "llamacpp":
        return
    slots = _number(stats.settings.get("parallel"))
    ctx = _number(stats.settings.get("ctx_size"))
    stats.slots = slots
    # The server's own figure is right whether its KV cache is split per slot or unified.
    stats.ctx_per_slot_tokens = _number(stats.settings.get("ctx_per_slot"))
    if stats.ctx_per_slot_tokens is None and slots is not None and ctx is not None:
        stats.ctx_per_slot_tokens = ctx / slots


def _time_fields(stats: WindowStats, seconds: np.ndarray, runs: np.ndarray) -> None:
    samples, intervals, typical = time_weights(seconds, runs)
    stats.sample_weights_s, stats.interval_weights_s = samples, intervals
    stats.observed_s, stats.scrape_interval_s = float(np.sum(samples)), typical
    stats.running_mean = weighted_mean(stats.running, samples)
    stats.waiting_mean = weighted_mean(stats.waiting, samples)
    stats.kv_usage_mean = weighted_mean(stats.kv_usage, samples)
    capacity, mean = stats.kv_capacity_tokens, stats.kv_usage_mean
    if stats.kv_usage_source == "kv_cache_usage" and capacity is not None and mean is not None:
        stats.kv_tokens_in_use_mean = mean * capacity


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
    ratios = np.array(
        [_reservation(extra) for extra in rows.objects["extra"][up]], dtype=float
    ).reshape(-1)
    if kv_source is None and np.isfinite(ratios).any():
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
        kv_capacity_tokens=_number(capacity),
    )
    _time_fields(stats, rows.seconds[up], rows.runs[up])
    capacities = np.array(
        [_number(c) or np.nan for c in rows.objects["kv_cache_capacity_tokens"][up]], dtype=float
    ).reshape(-1)
    _token_budget(stats, ratios, capacities)
    _slots(stats)
    if len(up) < 2 or span <= 0:
        return stats
    counters = rows.counters[up]
    for index, name in enumerate(_COUNTERS):
        increase = counter_increase(counters[:, index])
        stats.increases[name] = increase
        stats.rates[name] = None if increase is None else increase / span
    preemptions = increases(counters[:, _PREEMPTIONS])
    stats.preemption_increases = aligned_increases(counters[:, _PREEMPTIONS])
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
    _per_request(stats)
    return stats


def _reservation(extra: Any) -> float:
    """TGI's KV reservation ratio from a row's `extra`, NaN where there is none."""
    value = extra.get("kv_reservation_ratio") if isinstance(extra, dict) else None
    number = _number(value)
    if number is None and isinstance(value, int | float) and value == 0:
        return 0.0
    return np.nan if number is None else number


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
