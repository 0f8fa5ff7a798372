"""Did applied advice help? The window before a change against an equally long window after it.

Once the orchestrator marks a recommendation `applied`, the agent waits for the server to
restart and settle (`OUTCOME_SETTLE_MINUTES`), then for a full window of the same length as the
one before, and compares the two:

| figure | better when | counted as changed beyond |
|---|---|---|
| `slo_attainment` (share of requests with TTFT within the SLO) | higher | 0.05 absolute |
| `ttft_p95_ms`, `itl_p95_ms` | lower | 10 % and 5 ms |
| `preemptions_per_s` | lower | 50 % and 0.01/s |
| `waiting_mean` | lower | 25 % and 1 request |
| `finished_per_s` (only if requests waited before) | higher | 10 % |

Throughput is judged only when requests waited before the change: then it measured capacity;
otherwise it followed the load, which no setting changes.

A latency p95 with an SLO counts only where the SLO is at stake: worse when it ends above the
SLO, better when it started above it; a move that stays within the SLO is no change.

The first figure in this order that changed decides the outcome — the SLO first, as it decides
between throughput and latency elsewhere — so advice that removes preemptions but breaks the
TTFT SLO counts as a regression. Figures a server does not export are skipped; when none can be
compared, no outcome is set and the evidence says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from perf_pipelines.analysis.promql import histogram_delta
from perf_pipelines.analysis.window import WindowStats, finite, window_stats
from perf_pipelines.targets import Target

OUTCOMES = ("improved", "no_change", "regressed")


@dataclass(frozen=True)
class Criterion:
    name: str
    higher_is_better: bool
    relative: float  # a change smaller than this share of the before value is noise
    absolute: float  # …or smaller than this in the figure's own unit


CRITERIA = (
    Criterion("slo_attainment", True, 0.0, 0.05),
    Criterion("ttft_p95_ms", False, 0.10, 5.0),
    Criterion("itl_p95_ms", False, 0.10, 5.0),
    Criterion("preemptions_per_s", False, 0.50, 0.01),
    Criterion("waiting_mean", False, 0.25, 1.0),
    Criterion("finished_per_s", True, 0.10, 0.0),
)


@dataclass(frozen=True)
class Outcome:
    outcome: str | None  # None: not enough to compare
    evidence: dict[str, Any]


def fraction_at_or_below(bounds: list[float], cumulative: list[float], x: float) -> float | None:
    """Share of a histogram's observations ≤ x, interpolating linearly inside the bucket
    (the inverse of histogram_quantile)."""
    total = cumulative[-1] if cumulative else 0.0
    if total <= 0:
        return None
    below, lower = 0.0, 0.0
    for upper, count in zip(bounds, cumulative, strict=False):
        if x < upper:
            share = (x - lower) / (upper - lower) if upper > lower else 1.0
            return (below + max(0.0, share) * (count - below)) / total
        below, lower = count, upper
    return below / total  # x beyond the last finite bound: the +Inf bucket counts as above


def _slo_attainment(rows: pd.DataFrame, slo_ms: float | None) -> float | None:
    if slo_ms is None:
        return None
    present = [h for h in rows.loc[rows["up"].astype(bool), "ttft_seconds"] if isinstance(h, dict)]
    if len(present) < 2:
        return None
    delta = histogram_delta(present[0], present[-1])
    if not delta:
        return None
    return fraction_at_or_below([float(b) for b in present[-1]["bounds"]], delta, slo_ms / 1000)


def _figures(stats: WindowStats, attainment: float | None) -> dict[str, float | None]:
    def ms(name: str) -> float | None:
        value = stats.quantiles.get(name)
        return round(value * 1000, 1) if value is not None and finite(value) else None

    waiting = stats.waiting[~np.isnan(stats.waiting)] if len(stats.waiting) else stats.waiting
    kv = stats.kv_usage[~np.isnan(stats.kv_usage)] if len(stats.kv_usage) else stats.kv_usage
    return {
        "slo_attainment": None if attainment is None else round(attainment, 4),
        "ttft_p95_ms": ms("ttft_p95"),
        "itl_p95_ms": ms("itl_p95"),
        "preemptions_per_s": stats.rates.get("preemptions"),
        "waiting_mean": round(float(np.mean(waiting)), 2) if len(waiting) else None,
        "finished_per_s": stats.rates.get("finished"),
        "kv_usage_mean": round(float(np.mean(kv)), 4) if len(kv) else None,  # shown, not judged
        "up_samples": stats.up_samples,
        "span_s": round(stats.span_s, 1),
    }


def _verdict(criterion: Criterion, before: float, after: float, slo: float | None) -> int:
    """+1 better, -1 worse, 0 within noise (or within the SLO both times)."""
    change = after - before
    if abs(change) <= max(criterion.absolute, criterion.relative * abs(before)):
        return 0
    better = change > 0 if criterion.higher_is_better else change < 0
    if slo is not None and (after > slo if not better else before > slo):
        return 1 if better else -1
    if slo is not None:
        return 0
    return 1 if better else -1


def judge(
    before: dict[str, float | None],
    after: dict[str, float | None],
    slos_ms: Mapping[str, float | None] | None = None,
) -> tuple[str | None, dict[str, str]]:
    """The outcome and each figure's verdict; `slos_ms` maps a latency figure to its SLO."""
    slos_ms = slos_ms or {}
    verdicts: dict[str, str] = {}
    decided: str | None = None
    compared = 0
    for criterion in CRITERIA:
        b, a = before.get(criterion.name), after.get(criterion.name)
        if b is None or a is None:
            continue
        if criterion.name == "finished_per_s" and not (before.get("waiting_mean") or 0) > 0:
            continue  # nobody waited: throughput followed the load, not the settings
        compared += 1
        verdict = _verdict(criterion, float(b), float(a), slos_ms.get(criterion.name))
        verdicts[criterion.name] = {1: "better", -1: "worse", 0: "same"}[verdict]
        if decided is None and verdict:
            decided = "improved" if verdict > 0 else "regressed"
    if compared == 0:
        return None, verdicts
    return decided or "no_change", verdicts


def evaluate_outcome(
    frame: pd.DataFrame,
    target: Target | None,
    target_name: str,
    model: str | None,
    applied_at: datetime,
    window: timedelta,
    settle: timedelta,
) -> Outcome:
    """Compare [applied_at − window, applied_at] with [applied_at + settle, … + window]."""
    before_start, after_start = applied_at - window, applied_at + settle
    after_end = after_start + window
    mine = frame[frame["target"] == target_name]
    if model is not None:
        mine = mine[(mine["model"] == model) | ~mine["up"].astype(bool)]
    targets: Mapping[str, Target] = {target_name: target} if target is not None else {}
    slo_ms = target.slo.ttft_p95_ms if target is not None else None
    slos = {
        "ttft_p95_ms": slo_ms,
        "itl_p95_ms": target.slo.itl_p95_ms if target is not None else None,
    }
    figures = {}
    for label, start, end in (
        ("before", before_start, applied_at),
        ("after", after_start, after_end),
    ):
        rows = mine[(mine["collected_at"] >= start) & (mine["collected_at"] <= end)]
        stats = window_stats(rows, targets, start, end)
        if not stats or stats[0].up_samples < 2:
            return Outcome(None, {"reason": f"too few successful samples {label} the change"})
        figures[label] = _figures(stats[0], _slo_attainment(rows, slo_ms))
    outcome, verdicts = judge(figures["before"], figures["after"], slos)
    evidence: dict[str, Any] = {
        "before": figures["before"],
        "after": figures["after"],
        "verdicts": verdicts,
        "windows": {
            "before": [before_start.isoformat(), applied_at.isoformat()],
            "after": [after_start.isoformat(), after_end.isoformat()],
        },
        "slo_ms": slos,
    }
    if outcome is None:
        evidence["reason"] = "no figure exported both before and after the change"
    return Outcome(outcome, evidence)
