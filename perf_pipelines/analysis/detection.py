"""Bottleneck rules over a window's statistics. Thresholds and their reasons: docs/detection.md.

Every rule looks for a *sustained* condition and reports the numbers that triggered it.
Sustained is measured in wall time, not in samples: a condition counts when it held for at least
`min_sustained_s` seconds and for at least `sustained_share` of the time the window actually
observed (`WindowStats.sample_weights_s`), whatever the scrape interval or the number of samples.
A shorter burst yields at most an `info` report whose evidence says `sustained: false`; the
recommender gives no advice on it. Where an engine does not export what a rule needs, the rule
does not guess: it records what could not be judged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from perf_pipelines.analysis.window import GAP_CAP_FACTOR, WindowStats, finite
from perf_pipelines.findings import BottleneckReport
from perf_pipelines.targets import Target

MIN_UP_SAMPLES = 3  # fewer successful scrapes: too thin to call anything but "down"
# Rates over a shorter span are noise. The old default run (3 samples 5 s apart) spans a nominal
# 10 s but measures a little less: the first round also opens the connections.
MIN_SPAN_S = 8.0
MIN_LATENCY_OBSERVATIONS = 20  # a p95 needs at least this many requests/tokens in the window
SUSTAINED_SHARE = 0.5  # a condition must hold for at least half of the observed time…
MIN_SUSTAINED_S = 30.0  # …and for at least 30 s of it: a 10 s burst never passes
MIN_HOLDING_SAMPLES = 2  # one reading is never a duration (nor a burst worth reporting)
KV_PRESSURE_USAGE = 0.90  # vLLM starts preempting when free blocks run out; 90 % leaves no headroom
KV_CRITICAL_USAGE = 0.97
PREEMPTION_CRITICAL_PER_S = 0.5
PREEMPTION_CRITICAL_SHARE = 0.05  # …or one preemption per twenty finished requests
BATCH_LIMIT_NEAR = 0.95  # running at ≥ 95 % of the cap counts as "at the limit"
# TGI: the batch is at its token budget when what is left of it would not hold one more request
# of the batch's own average reservation, or less than 5 % of the budget is left.
TOKEN_BUDGET_NEAR = 0.95
UNDERUSED_RUNNING_SHARE = 0.10  # at most 10 % of the batch cap in use…
# …and at most two requests at a time on average: a continuous-batching engine serving fewer is
# reading its weights for one or two sequences per step, its GPU mostly idle. A server with a
# modest steady load (say 20 of 256 slots) is not idle just because its cap is generous.
UNDERUSED_RUNNING_MEAN = 2.0
UNDERUSED_KV = 0.30  # …and under 30 % of KV, with nobody waiting
UNDERUSED_TIME_SHARE = 0.8  # idle for at least 80 % of the observed time
SLO_CRITICAL_FACTOR = 2.0
# A TTFT breach is caused by queueing when the queue time p95 is at least half the TTFT p95.
QUEUE_SHARE_OF_TTFT = 0.5
# llama.cpp does not export --parallel; its default (-1 = auto) gives 4 slots (1 before 2025).
LLAMACPP_DEFAULT_SLOTS = 4

TIME_BASED_KINDS = ("kv_cache_pressure", "preemption", "queue_saturation", "underutilization")


@dataclass(frozen=True)
class DetectionConfig:
    """Every threshold detection uses; the defaults are the documented module constants.

    `sustained_share` and `min_sustained_s` are operator settings (DETECTION_SUSTAINED_SHARE,
    DETECTION_MIN_SUSTAINED_S); the rest are engine facts and stay at their defaults in service.
    """

    sustained_share: float = SUSTAINED_SHARE
    min_sustained_s: float = MIN_SUSTAINED_S
    min_holding_samples: int = MIN_HOLDING_SAMPLES
    min_up_samples: int = MIN_UP_SAMPLES
    min_span_s: float = MIN_SPAN_S
    min_latency_observations: int = MIN_LATENCY_OBSERVATIONS
    kv_pressure_usage: float = KV_PRESSURE_USAGE
    kv_critical_usage: float = KV_CRITICAL_USAGE
    preemption_critical_per_s: float = PREEMPTION_CRITICAL_PER_S
    preemption_critical_share: float = PREEMPTION_CRITICAL_SHARE
    batch_limit_near: float = BATCH_LIMIT_NEAR
    token_budget_near: float = TOKEN_BUDGET_NEAR
    underused_running_share: float = UNDERUSED_RUNNING_SHARE
    underused_running_mean: float = UNDERUSED_RUNNING_MEAN
    underused_kv: float = UNDERUSED_KV
    underused_time_share: float = UNDERUSED_TIME_SHARE
    slo_critical_factor: float = SLO_CRITICAL_FACTOR
    queue_share_of_ttft: float = QUEUE_SHARE_OF_TTFT

    def __post_init__(self) -> None:
        if not 0 < self.sustained_share <= 1:
            raise ValueError(f"sustained_share must be in (0, 1], got {self.sustained_share}")
        if not self.min_sustained_s >= 0:
            raise ValueError(f"min_sustained_s must be ≥ 0, got {self.min_sustained_s}")
        if self.min_holding_samples < 1 or self.min_up_samples < 1:
            raise ValueError("min_holding_samples and min_up_samples must be ≥ 1")


DEFAULT_CONFIG = DetectionConfig()


@dataclass
class Detection:
    reports: list[BottleneckReport] = field(default_factory=list)
    not_judged: dict[str, list[str]] = field(default_factory=dict)  # target -> reasons


@dataclass(frozen=True)
class Held:
    """How long a condition held: seconds of observed wall time, out of the seconds observed."""

    held_s: float
    observed_s: float
    samples: int  # samples (or, for a counter, intervals) in which it held

    @property
    def share(self) -> float:
        return self.held_s / self.observed_s if self.observed_s > 0 else 0.0

    def sustained(self, config: DetectionConfig) -> bool:
        return (
            self.samples >= config.min_holding_samples
            and self.held_s >= config.min_sustained_s
            and self.share >= config.sustained_share
        )

    def burst(self, config: DetectionConfig) -> bool:
        return self.samples >= config.min_holding_samples and not self.sustained(config)

    def evidence(self, config: DetectionConfig) -> dict[str, Any]:
        return {
            "sustained": self.sustained(config),
            "held_s": round(self.held_s, 1),
            "observed_s": round(self.observed_s, 1),
            "share_of_time": round(self.share, 4),
            "min_sustained_s": config.min_sustained_s,
            "sustained_share": config.sustained_share,
        }


def gauge_held(condition: np.ndarray, present: np.ndarray, weights: np.ndarray) -> Held:
    """A gauge condition: each sample where it holds counts for the seconds it stands for;
    samples without the gauge are not observed."""
    if len(condition) != len(weights) or not len(weights):
        return Held(0.0, 0.0, 0)
    holding = condition & present
    return Held(
        float(np.sum(weights[holding])),
        float(np.sum(weights[present])),
        int(np.count_nonzero(holding)),
    )


def counter_held(increases: np.ndarray, weights: np.ndarray) -> Held:
    """A counter that keeps rising: the observed seconds from the first to the last interval in
    which it rose (events are sparse: a steady 0.1/s leaves many 5 s intervals empty, yet it is
    sustained; a burst rises in a few adjacent intervals only). Unobserved gaps count nothing."""
    if len(increases) != len(weights) or not len(weights):
        return Held(0.0, 0.0, 0)
    observed = np.isfinite(increases) & (weights > 0)
    rising = np.flatnonzero(observed & (np.nan_to_num(increases, nan=0.0) > 0))
    total = float(np.sum(weights[observed]))
    if not len(rising):
        return Held(0.0, total, 0)
    spanned = weights[rising[0] : rising[-1] + 1] * observed[rising[0] : rising[-1] + 1]
    return Held(float(np.sum(spanned)), total, len(rising))


def _r(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _report(
    stats: WindowStats,
    kind: str,
    severity: str,
    score: float,
    evidence: dict[str, Any],
    summary: str,
) -> BottleneckReport:
    return BottleneckReport(
        stats.target,
        stats.engine,
        stats.model,
        stats.window_start,
        stats.window_end,
        kind,
        severity,
        max(0.0, min(1.0, score)) if math.isfinite(score) else 0.0,
        evidence,
        summary,
    )


def _timed_report(
    stats: WindowStats,
    kind: str,
    held: Held,
    config: DetectionConfig,
    finding: tuple[str, float, dict[str, Any], str],
) -> BottleneckReport | None:
    """The report of a time-based condition: as found when sustained, an `info` burst report
    (no advice) when it held in a few samples only, nothing when it never held."""
    severity, score, evidence, summary = finding
    evidence = {**evidence, **held.evidence(config)}
    if held.sustained(config):
        return _report(stats, kind, severity, score, evidence, summary)
    if not held.burst(config):
        return None
    evidence["burst"] = "burst, not sustained"
    return _report(
        stats,
        kind,
        "info",
        min(score, 0.2),
        evidence,
        f"Burst, not sustained: {summary} Held {held.held_s:.0f} s of {held.observed_s:.0f} s "
        f"observed; sustained needs ≥ {config.min_sustained_s:.0f} s and "
        f"≥ {config.sustained_share:.0%} of the time.",
    )


def _target_down(stats: WindowStats) -> BottleneckReport | None:
    down = stats.samples - stats.up_samples
    if down == 0:
        return None
    share = down / stats.samples
    severity = "critical" if stats.up_samples == 0 else "warning"
    evidence = {"down_samples": down, "samples": stats.samples, "errors": stats.errors}
    return _report(
        stats,
        "target_down",
        severity,
        share,
        evidence,
        f"{stats.target} failed {down} of {stats.samples} scrapes"
        + (f" ({stats.errors[0]})" if stats.errors else "")
        + ".",
    )


def _kv_held(stats: WindowStats, config: DetectionConfig) -> Held | None:
    usage = stats.kv_usage
    present = np.isfinite(usage) if len(usage) else np.zeros(0, dtype=bool)
    if int(np.count_nonzero(present)) < config.min_up_samples:
        return None
    high = np.nan_to_num(usage, nan=0.0) >= config.kv_pressure_usage
    return gauge_held(high, present, stats.sample_weights_s)


def _preemption_evidence(stats: WindowStats, held: Held | None) -> dict[str, Any]:
    return {
        "preemptions_per_s": _r(stats.rates.get("preemptions")),
        "preemptions": stats.increases.get("preemptions"),
        "finished_requests": stats.increases.get("finished"),
        "preemption_held_s": None if held is None else round(held.held_s, 1),
        "intervals_with_preemption": stats.preemption_intervals_with_increase,
        "intervals": stats.intervals,
    }


def _kv_evidence(stats: WindowStats, config: DetectionConfig) -> dict[str, Any]:
    usage = stats.kv_usage[np.isfinite(stats.kv_usage)] if len(stats.kv_usage) else np.zeros(0)
    return {
        "kv_usage_mean": _r(stats.kv_usage_mean),
        "kv_usage_max": _r(float(np.max(usage))) if len(usage) else None,
        "threshold": config.kv_pressure_usage,
        "source": stats.kv_usage_source,
        "kv_capacity_tokens": stats.kv_capacity_tokens,
        "kv_tokens_in_use_mean": _r(stats.kv_tokens_in_use_mean, 0),
        "running_mean": _r(stats.running_mean, 2),
        "waiting_mean": _r(stats.waiting_mean, 2),
        "context_tokens_per_request": _r(stats.context_tokens_per_request, 1),
    }


def _kv_pressure(
    stats: WindowStats, held: Held, preemptions: Held | None, config: DetectionConfig
) -> BottleneckReport | None:
    mean = stats.kv_usage_mean or 0.0
    preempting = (stats.rates.get("preemptions") or 0) > 0
    severity = "critical" if mean >= config.kv_critical_usage or preempting else "warning"
    evidence = _kv_evidence(stats, config) | _preemption_evidence(stats, preemptions)
    evidence["preempting"] = preempting
    summary = (
        f"KV cache at {mean:.0%} on average, ≥ {config.kv_pressure_usage:.0%} for "
        f"{held.held_s:.0f} s ({held.share:.0%} of the observed time)"
        + (f", {stats.increases.get('preemptions') or 0:.0f} preemptions." if preempting else ".")
    )
    return _timed_report(
        stats, "kv_cache_pressure", held, config, (severity, held.share * mean, evidence, summary)
    )


def _preemption(
    stats: WindowStats, held: Held, kv: Held | None, config: DetectionConfig
) -> BottleneckReport | None:
    rate = stats.rates.get("preemptions") or 0.0
    finished = stats.increases.get("finished") or 0.0
    preempted = stats.increases.get("preemptions") or 0.0
    critical = rate >= config.preemption_critical_per_s or (
        finished > 0 and preempted / finished >= config.preemption_critical_share
    )
    evidence = _preemption_evidence(stats, held) | _kv_evidence(stats, config)
    if kv is None:
        evidence["kv_high"] = None
        evidence["why_not_kv_pressure"] = "KV-cache use is not exported"
        cause = "KV-cache use is not exported"
    else:
        evidence["kv_high"] = False
        evidence["kv_share_of_time_at_or_above"] = _r(kv.share)
        evidence["why_not_kv_pressure"] = (
            f"KV use ≥ {config.kv_pressure_usage:.0%} for {kv.held_s:.0f} s only "
            f"({kv.share:.0%} of the time): not sustained"
        )
        cause = f"KV use {stats.kv_usage_mean or 0:.0%} on average, not sustained high"
    return _timed_report(
        stats,
        "preemption",
        held,
        config,
        (
            "critical" if critical else "warning",
            min(1.0, 0.5 + rate),
            evidence,
            f"{preempted:.0f} requests preempted in {stats.span_s:.0f} s ({rate:.2f}/s) "
            f"while {cause}.",
        ),
    )


def _memory_findings(stats: WindowStats, config: DetectionConfig) -> list[BottleneckReport]:
    """KV pressure and preemption, never both sustained: KV pressure when KV use is high for
    long enough (preemptions then are its evidence), preemption only without it."""
    kv = _kv_held(stats, config)
    has_counter = stats.increases.get("preemptions") is not None
    preemptions = (
        counter_held(stats.preemption_increases, stats.interval_weights_s) if has_counter else None
    )
    found: list[BottleneckReport | None] = []
    if kv is not None:
        found.append(_kv_pressure(stats, kv, preemptions, config))  # or a burst at most
    if preemptions is not None and not (kv is not None and kv.sustained(config)):
        found.append(_preemption(stats, preemptions, kv, config))
    return [report for report in found if report is not None]


def _limit(stats: WindowStats, running: np.ndarray) -> tuple[float | None, bool]:
    if stats.batch_limit is not None:
        return stats.batch_limit, False
    plateau = float(np.max(running)) if len(running) else 0.0
    return (plateau, True) if plateau > 0 else (None, True)  # a plateau: the best guess of the cap


def _request_cap_queue(stats: WindowStats, config: DetectionConfig) -> BottleneckReport | None:
    present = np.isfinite(stats.running)
    if int(np.count_nonzero(present)) < config.min_up_samples:
        return None
    running, waiting = stats.running_or_zero, stats.waiting_or_zero
    limit, inferred = _limit(stats, running[present])
    if limit is None:
        return None
    held = gauge_held(
        (running >= config.batch_limit_near * limit) & (waiting > 0),
        present,
        stats.sample_weights_s,
    )
    mean_waiting = stats.waiting_mean or 0.0
    evidence: dict[str, Any] = {
        "limit_kind": "requests",
        "waiting_mean": _r(mean_waiting, 2),
        "running_mean": _r(stats.running_mean, 2),
        "batch_limit": limit,
        "batch_limit_source": stats.batch_limit_source or "inferred from the running plateau",
        "limit_inferred": inferred,
        "kv_usage_mean": _r(stats.kv_usage_mean),
        "kv_capacity_tokens": stats.kv_capacity_tokens,
        "context_tokens_per_request": _r(stats.context_tokens_per_request, 1),
        "queue_p95_ms": _ms(stats.quantiles.get("queue_p95")),
    }
    if stats.engine == "llamacpp":
        evidence |= {
            "deferred_mean": _r(mean_waiting, 2),
            "slots": stats.slots,
            "ctx_per_slot_tokens": stats.ctx_per_slot_tokens,
        }
    return _timed_report(
        stats,
        "queue_saturation",
        held,
        config,
        (
            "critical" if mean_waiting >= limit else "warning",
            held.share * min(1.0, mean_waiting / max(limit, 1.0) + 0.5),
            evidence,
            f"{mean_waiting:.0f} requests wait on average while {limit:.0f} run at the batch "
            "limit.",
        ),
    )


def _token_budget_queue(stats: WindowStats, config: DetectionConfig) -> BottleneckReport | None:
    """TGI batches by tokens: a queue behind a batch whose reservation fills the token budget
    (--max-batch-total-tokens) is saturated whatever the number of requests running."""
    budget, tokens = stats.token_budget_tokens, stats.batch_tokens
    if budget is None or len(tokens) != len(stats.running):
        return None
    present = np.isfinite(tokens)
    if int(np.count_nonzero(present)) < config.min_up_samples:
        return None
    running = np.maximum(stats.running_or_zero, 1.0)
    room = budget - np.nan_to_num(tokens, nan=0.0)
    per_request = np.nan_to_num(tokens, nan=0.0) / running
    at_budget = room < np.maximum(per_request, (1.0 - config.token_budget_near) * budget)
    held = gauge_held(at_budget & (stats.waiting_or_zero > 0), present, stats.sample_weights_s)
    mean_waiting, mean_running = stats.waiting_mean or 0.0, stats.running_mean or 0.0
    in_use = stats.batch_tokens_mean or 0.0
    evidence = {
        "limit_kind": "token_budget",
        "token_budget_tokens": budget,
        "batch_tokens_mean": _r(in_use, 0),
        "token_budget_use_mean": _r(in_use / budget),
        "reserved_tokens_per_request": _r(stats.reserved_tokens_per_request, 1),
        "context_tokens_per_request": _r(stats.context_tokens_per_request, 1),
        "waiting_mean": _r(mean_waiting, 2),
        "running_mean": _r(mean_running, 2),
        "batch_limit": stats.batch_limit,
        "batch_limit_source": stats.batch_limit_source,
        "limit_inferred": False,
        "queue_p95_ms": _ms(stats.quantiles.get("queue_p95")),
        "source": "tgi_batch_current_max_tokens / tgi_batch_max_total_tokens",
    }
    return _timed_report(
        stats,
        "queue_saturation",
        held,
        config,
        (
            "critical" if mean_waiting >= max(mean_running, 1.0) else "warning",
            held.share * min(1.0, mean_waiting / max(mean_running, 1.0) + 0.5),
            evidence,
            f"{mean_waiting:.0f} requests wait on average while the running batch reserves "
            f"{in_use:.0f} of its {budget:.0f}-token budget.",
        ),
    )


def _queue_saturation(stats: WindowStats, config: DetectionConfig) -> BottleneckReport | None:
    """The token budget (TGI) when it is what holds the queue, else the request cap."""
    by_tokens = _token_budget_queue(stats, config)
    if by_tokens is not None and by_tokens.evidence["sustained"]:
        return by_tokens
    by_requests = _request_cap_queue(stats, config)
    if by_requests is not None and by_requests.evidence["sustained"]:
        return by_requests
    return by_tokens or by_requests


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None or not finite(seconds) else round(seconds * 1000, 1)


def _queue_cause(
    stats: WindowStats, metric: str, p95_ms: float, config: DetectionConfig
) -> dict[str, Any]:
    """Whether a latency breach comes with a queue (capacity advice) or with an empty one
    (prefill, batch or quantization advice)."""
    present = np.isfinite(stats.waiting)
    queue = gauge_held(stats.waiting_or_zero > 0, present, stats.sample_weights_s)
    queue_ms = _ms(stats.quantiles.get("queue_p95"))
    queueing = queue.sustained(config)
    if metric == "ttft" and queue_ms is not None:
        queueing = queueing or queue_ms >= config.queue_share_of_ttft * p95_ms
    return {
        "queue_p95_ms": queue_ms,
        "waiting_mean": _r(stats.waiting_mean, 2),
        "running_mean": _r(stats.running_mean, 2),
        "share_of_time_with_queue": _r(queue.share),
        "queue_empty": not queueing,
        "cause": "queueing" if queueing else "not_queueing",
    }


def _slo_breach(
    stats: WindowStats, kind: str, metric: str, slo_ms: float | None, config: DetectionConfig
) -> BottleneckReport | None:
    if slo_ms is None:
        return None
    p95 = stats.quantiles.get(f"{metric}_p95")
    if not finite(p95) or stats.observations.get(metric, 0.0) < config.min_latency_observations:
        return None
    assert p95 is not None
    p95_ms = p95 * 1000
    if p95_ms <= slo_ms:
        return None
    ratio = p95_ms / slo_ms
    evidence = {
        f"{metric}_p95_ms": round(p95_ms, 1),
        f"{metric}_p50_ms": _ms(stats.quantiles.get(f"{metric}_p50")),
        "slo_ms": slo_ms,
        "observations": stats.observations.get(metric),
    } | _queue_cause(stats, metric, p95_ms, config)
    label = "TTFT" if metric == "ttft" else "inter-token latency"
    with_queue = "with a queue" if evidence["cause"] == "queueing" else "with an empty queue"
    # The histograms' delta counts every request from the first sample to the last, so the p95
    # stands for that span of wall time: shorter than the sustained minimum, it is a burst.
    span = Held(stats.span_s, stats.span_s, stats.up_samples)
    return _timed_report(
        stats,
        kind,
        span,
        config,
        (
            "critical" if ratio >= config.slo_critical_factor else "warning",
            min(1.0, ratio - 1.0 + 0.3),
            evidence,
            f"{label} p95 {p95_ms:.0f} ms exceeds the SLO of {slo_ms:.0f} ms ({ratio:.1f}×), "
            f"{with_queue}.",
        ),
    )


def _idle_limit(stats: WindowStats) -> tuple[float | None, str]:
    if stats.batch_limit is not None:
        return stats.batch_limit, stats.batch_limit_source or "known"
    if stats.engine == "llamacpp":
        return (
            float(LLAMACPP_DEFAULT_SLOTS),
            f"llama.cpp default --parallel ({LLAMACPP_DEFAULT_SLOTS} slots; not exported)",
        )
    return None, (
        "not known (not exported, not in the targets file): judged on "
        f"≤ {UNDERUSED_RUNNING_MEAN:g} running on average, nobody waiting and KV use low"
    )


def _underutilization(stats: WindowStats, config: DetectionConfig) -> BottleneckReport | None:
    present = np.isfinite(stats.running)
    if int(np.count_nonzero(present)) < config.min_up_samples:
        return None
    running = stats.running_or_zero
    limit, limit_source = _idle_limit(stats)
    few = running <= config.underused_running_share * limit if limit else np.ones_like(present)
    held = gauge_held(few & (stats.waiting_or_zero == 0), present, stats.sample_weights_s)
    kv = stats.kv_usage[np.isfinite(stats.kv_usage)] if len(stats.kv_usage) else np.zeros(0)
    mean = stats.running_mean or 0.0
    if (
        held.share < config.underused_time_share
        or held.held_s < config.min_sustained_s
        or held.samples < config.min_holding_samples
        or mean > config.underused_running_mean
        or (len(kv) and float(np.max(kv)) >= config.underused_kv)
    ):
        return None
    evidence = {
        "running_mean": _r(mean, 2),
        "waiting_mean": _r(stats.waiting_mean, 2),
        "batch_limit": limit,
        "batch_limit_source": limit_source,
        "batch_limit_known": stats.batch_limit is not None,
        "kv_usage_max": _r(float(np.max(kv))) if len(kv) else None,
        "kv_usage_mean": _r(stats.kv_usage_mean),
        "requests_per_s": _r(stats.rates.get("finished")),
    } | held.evidence(config)
    of_limit = f" of {limit:.0f}" if limit else ""
    return _report(
        stats,
        "underutilization",
        "info",
        held.share * 0.5,
        evidence,
        f"On average {mean:.1f}{of_limit} request slots in use and nobody waiting for "
        f"{held.share:.0%} of the observed time: the server has spare capacity.",
    )


def _not_judged(stats: WindowStats, target: Target | None) -> list[str]:
    reasons = []
    engine = stats.engine or "this server"
    if stats.kv_usage_source is None:
        reasons.append(f"kv_cache_pressure: {engine} exports no KV-cache usage gauge")
    elif stats.kv_usage_source != "kv_cache_usage":
        reasons.append(f"kv_cache_pressure judged on a proxy: {stats.kv_usage_source}")
    if stats.up_samples >= 2 and stats.increases.get("preemptions") is None:
        why = (
            " (TGI reserves each request's full length at admission and never preempts)"
            if stats.engine == "tgi"
            else ""
        )
        reasons.append(f"preemption: {engine} exports no preemption counter{why}")
    slo = target.slo if target else None
    for metric, kind in (("ttft", "ttft_slo_breach"), ("itl", "itl_slo_breach")):
        wanted = getattr(slo, f"{metric}_p95_ms", None) if slo else None
        if wanted is None:
            reasons.append(f"{kind}: no {metric}_p95_ms SLO in the targets file")
        elif stats.quantiles.get(f"{metric}_p95") is None:
            reasons.append(f"{kind}: no {metric.upper()} histogram from {engine}")
    if stats.batch_limit is None:
        reasons.append(
            "queue_saturation: batch limit not known (set it in the targets file config); "
            "inferred from the running plateau"
        )
    return reasons


def _thin(stats: WindowStats, config: DetectionConfig) -> str | None:
    if stats.up_samples < config.min_up_samples or stats.span_s < config.min_span_s:
        return (
            f"thin data: {stats.up_samples} successful samples over {stats.span_s:.0f} s "
            f"(need {config.min_up_samples} over {config.min_span_s:.0f} s); only target_down "
            "is judged"
        )
    return None


def _short(stats: WindowStats, config: DetectionConfig) -> str | None:
    if stats.observed_s >= config.min_sustained_s:
        return None
    return (
        f"sustained conditions: only {stats.observed_s:.0f} s of the window observed "
        f"({stats.up_samples} samples, scrape interval {stats.scrape_interval_s or 0:.0f} s); "
        f"a condition must hold ≥ {config.min_sustained_s:.0f} s to count, so at most bursts "
        "are reported"
    )


def _findings(
    stats: WindowStats, target: Target | None, config: DetectionConfig
) -> list[BottleneckReport]:
    slo = target.slo if target else None
    candidates = [
        *_memory_findings(stats, config),
        _queue_saturation(stats, config),
        _slo_breach(stats, "ttft_slo_breach", "ttft", slo.ttft_p95_ms if slo else None, config),
        _slo_breach(stats, "itl_slo_breach", "itl", slo.itl_p95_ms if slo else None, config),
    ]
    found = [report for report in candidates if report is not None]
    for report in found:
        if report.kind == "kv_cache_pressure" and any(_at_token_budget(r) for r in found):
            # TGI's token budget is its KV budget: both are reported (an orchestrator reading
            # either kind sees the server), the KV one says it is the same budget.
            report.evidence["same_budget_as"] = "queue_saturation (token budget)"
    # Never "idle" beside a real bottleneck (a burst does not make a server busy).
    if not any(is_sustained(report) for report in found):
        idle = _underutilization(stats, config)
        if idle is not None:
            found.append(idle)
    return found


def _at_token_budget(report: BottleneckReport) -> bool:
    return (
        report.kind == "queue_saturation"
        and report.evidence.get("limit_kind") == "token_budget"
        and is_sustained(report)
    )


def is_sustained(report: BottleneckReport) -> bool:
    """False for an info burst report (`evidence.sustained` is false): no advice on it."""
    return report.evidence.get("sustained") is not False


def detect(
    stats_list: list[WindowStats],
    targets: dict[str, Target],
    config: DetectionConfig = DEFAULT_CONFIG,
) -> Detection:
    detection = Detection()
    for stats in stats_list:
        target = targets.get(stats.target)
        down = _target_down(stats)
        if down is not None:
            detection.reports.append(down)
        thin = _thin(stats, config)
        if thin is not None:
            detection.not_judged[stats.target] = [thin]
            if down is not None:
                down.evidence["not_judged"] = [thin]
            continue
        found = _findings(stats, target, config)
        detection.reports.extend(found)
        reasons = [r for r in (_short(stats, config),) if r] + _not_judged(stats, target)
        if reasons:
            detection.not_judged[stats.target] = reasons
            for report in found:
                report.evidence["not_judged"] = reasons
    return detection


def config_evidence(config: DetectionConfig) -> dict[str, Any]:
    """The thresholds in force, for metadata and reports."""
    return {**asdict(config), "gap_cap_factor": GAP_CAP_FACTOR}


__all__ = [
    "DEFAULT_CONFIG",
    "Detection",
    "DetectionConfig",
    "Held",
    "counter_held",
    "detect",
    "gauge_held",
    "is_sustained",
]
