"""Bottleneck rules over a window's statistics. Thresholds and their reasons: docs/detection.md.

Every rule looks for a *sustained* condition (a share of samples, or of scrape intervals), never
a single spike, and reports the numbers that triggered it. Where an engine does not export what
a rule needs, the rule does not guess: it records what could not be judged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from perf_pipelines.analysis.window import WindowStats, finite
from perf_pipelines.findings import BottleneckReport
from perf_pipelines.targets import Target

MIN_UP_SAMPLES = 3  # fewer successful scrapes: too thin to call anything but "down"
# Rates over a shorter span are noise. The default run (3 samples 5 s apart) spans a nominal 10 s
# but measures a little less: the first round also opens the connections.
MIN_SPAN_S = 8.0
MIN_LATENCY_OBSERVATIONS = 20  # a p95 needs at least this many requests/tokens in the window
SUSTAINED_SHARE = 0.5  # a condition must hold in at least half of the samples
KV_PRESSURE_USAGE = 0.90  # vLLM starts preempting when free blocks run out; 90 % leaves no headroom
KV_CRITICAL_USAGE = 0.97
PREEMPTION_CRITICAL_PER_S = 0.5
BATCH_LIMIT_NEAR = 0.95  # running at ≥ 95 % of the cap counts as "at the limit"
UNDERUSED_RUNNING_SHARE = 0.10  # at most 10 % of the batch cap in use…
# …and at most two requests at a time on average: a continuous-batching engine serving fewer is
# reading its weights for one or two sequences per step, its GPU mostly idle. A server with a
# modest steady load (say 20 of 256 slots) is not idle just because its cap is generous.
UNDERUSED_RUNNING_MEAN = 2.0
UNDERUSED_KV = 0.30  # …and under 30 % of KV, with nobody waiting
SLO_CRITICAL_FACTOR = 2.0


@dataclass
class Detection:
    reports: list[BottleneckReport] = field(default_factory=list)
    not_judged: dict[str, list[str]] = field(default_factory=dict)  # target -> reasons


def _share(mask: np.ndarray) -> float:
    return float(np.mean(mask)) if len(mask) else 0.0


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


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
        max(0.0, min(1.0, score)),
        evidence,
        summary,
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


def _kv_pressure(stats: WindowStats) -> BottleneckReport | None:
    usage = stats.kv_usage[~np.isnan(stats.kv_usage)] if len(stats.kv_usage) else stats.kv_usage
    if len(usage) < MIN_UP_SAMPLES:
        return None
    share = _share(usage >= KV_PRESSURE_USAGE)
    if share < SUSTAINED_SHARE:
        return None
    mean = float(np.mean(usage))
    severity = (
        "critical"
        if mean >= KV_CRITICAL_USAGE or (stats.rates.get("preemptions") or 0) > 0
        else "warning"
    )
    evidence = {
        "kv_usage_mean": _r(mean),
        "kv_usage_max": _r(float(np.max(usage))),
        "share_of_samples_at_or_above": _r(share),
        "threshold": KV_PRESSURE_USAGE,
        "source": stats.kv_usage_source,
        "kv_capacity_tokens": stats.kv_capacity_tokens,
    }
    return _report(
        stats,
        "kv_cache_pressure",
        severity,
        share * mean,
        evidence,
        f"KV cache at {mean:.0%} on average, ≥ {KV_PRESSURE_USAGE:.0%} in {share:.0%} of samples.",
    )


def _preemption(stats: WindowStats) -> BottleneckReport | None:
    rate = stats.rates.get("preemptions")
    if rate is None or rate <= 0 or stats.intervals == 0:
        return None
    sustained = stats.preemption_intervals_with_increase / stats.intervals
    if sustained < SUSTAINED_SHARE and stats.preemption_intervals_with_increase < 2:
        return None
    finished = stats.increases.get("finished") or 0.0
    preempted = stats.increases.get("preemptions") or 0.0
    severity = (
        "critical"
        if rate >= PREEMPTION_CRITICAL_PER_S or (finished and preempted / finished >= 0.05)
        else "warning"
    )
    evidence = {
        "preemptions_per_s": _r(rate),
        "preemptions": preempted,
        "finished_requests": finished,
        "intervals_with_preemption": stats.preemption_intervals_with_increase,
        "intervals": stats.intervals,
    }
    return _report(
        stats,
        "preemption",
        severity,
        min(1.0, 0.5 + rate),
        evidence,
        f"{preempted:.0f} requests preempted in {stats.span_s:.0f} s ({rate:.2f}/s): "
        "KV cache runs out during decode.",
    )


def _queue_saturation(stats: WindowStats) -> BottleneckReport | None:
    if len(stats.running) < MIN_UP_SAMPLES:
        return None
    waiting, running = stats.waiting_or_zero, stats.running_or_zero
    limit, inferred = stats.batch_limit, False
    if limit is None:
        limit, inferred = float(np.max(running)), True  # a plateau is the best guess of the cap
        if limit <= 0:
            return None
    at_limit = (running >= BATCH_LIMIT_NEAR * limit) & (waiting > 0)
    share = _share(at_limit)
    if share < SUSTAINED_SHARE:
        return None
    mean_waiting = float(np.mean(waiting))
    severity = "critical" if mean_waiting >= limit else "warning"
    evidence = {
        "waiting_mean": _r(mean_waiting, 2),
        "running_mean": _r(float(np.mean(running)), 2),
        "batch_limit": limit,
        "batch_limit_source": stats.batch_limit_source or "inferred from the running plateau",
        "share_of_samples_at_limit_with_queue": _r(share),
        "limit_inferred": inferred,
    }
    return _report(
        stats,
        "queue_saturation",
        severity,
        share * min(1.0, mean_waiting / max(limit, 1.0) + 0.5),
        evidence,
        f"{mean_waiting:.0f} requests wait on average while {limit:.0f} run at the batch limit.",
    )


def _slo_breach(
    stats: WindowStats, target: Target | None, kind: str, metric: str, slo_ms: float | None
) -> BottleneckReport | None:
    if slo_ms is None:
        return None
    p95 = stats.quantiles.get(f"{metric}_p95")
    if not finite(p95) or stats.observations.get(metric, 0.0) < MIN_LATENCY_OBSERVATIONS:
        return None
    assert p95 is not None
    p95_ms = p95 * 1000
    if p95_ms <= slo_ms:
        return None
    ratio = p95_ms / slo_ms
    evidence = {
        f"{metric}_p95_ms": round(p95_ms, 1),
        f"{metric}_p50_ms": _r((stats.quantiles.get(f"{metric}_p50") or 0) * 1000, 1),
        "slo_ms": slo_ms,
        "observations": stats.observations.get(metric),
        "queue_p95_ms": _r((stats.quantiles.get("queue_p95") or 0) * 1000, 1)
        if stats.quantiles.get("queue_p95") is not None
        else None,
    }
    label = "TTFT" if metric == "ttft" else "inter-token latency"
    return _report(
        stats,
        kind,
        "critical" if ratio >= SLO_CRITICAL_FACTOR else "warning",
        min(1.0, ratio - 1.0 + 0.3),
        evidence,
        f"{label} p95 {p95_ms:.0f} ms exceeds the SLO of {slo_ms:.0f} ms ({ratio:.1f}×).",
    )


def _underutilization(stats: WindowStats) -> BottleneckReport | None:
    if len(stats.running) < MIN_UP_SAMPLES or stats.batch_limit is None:
        return None
    running, waiting = stats.running_or_zero, stats.waiting_or_zero
    kv = stats.kv_usage[~np.isnan(stats.kv_usage)] if len(stats.kv_usage) else np.array([])
    idle = (running <= UNDERUSED_RUNNING_SHARE * stats.batch_limit) & (waiting == 0)
    share = _share(idle)
    if (
        share < 0.8
        or float(np.mean(running)) > UNDERUSED_RUNNING_MEAN
        or (len(kv) and float(np.max(kv)) >= UNDERUSED_KV)
    ):
        return None
    evidence = {
        "running_mean": _r(float(np.mean(running)), 2),
        "batch_limit": stats.batch_limit,
        "kv_usage_max": _r(float(np.max(kv))) if len(kv) else None,
        "share_of_samples_idle": _r(share),
        "requests_per_s": _r(stats.rates.get("finished")),
    }
    return _report(
        stats,
        "underutilization",
        "info",
        share * 0.5,
        evidence,
        f"On average {np.mean(running):.1f} of {stats.batch_limit:.0f} request slots in use and "
        "nobody waiting: the server has spare capacity.",
    )


def _not_judged(stats: WindowStats, target: Target | None) -> list[str]:
    reasons = []
    if stats.kv_usage_source is None:
        reasons.append(
            f"kv_cache_pressure: {stats.engine or 'this server'} exports no KV-cache usage gauge"
        )
    elif stats.kv_usage_source != "kv_cache_usage":
        reasons.append(f"kv_cache_pressure judged on a proxy: {stats.kv_usage_source}")
    slo = target.slo if target else None
    for metric, kind in (("ttft", "ttft_slo_breach"), ("itl", "itl_slo_breach")):
        wanted = getattr(slo, f"{metric}_p95_ms", None) if slo else None
        if wanted is None:
            reasons.append(f"{kind}: no {metric}_p95_ms SLO in the targets file")
        elif stats.quantiles.get(f"{metric}_p95") is None:
            reasons.append(
                f"{kind}: no {metric.upper()} histogram from {stats.engine or 'this server'}"
            )
    if stats.batch_limit is None:
        reasons.append("underutilization: batch limit unknown (set it in the targets file config)")
    return reasons


def detect(stats_list: list[WindowStats], targets: dict[str, Target]) -> Detection:
    detection = Detection()
    for stats in stats_list:
        target = targets.get(stats.target)
        down = _target_down(stats)
        if down is not None:
            detection.reports.append(down)
        if stats.up_samples < MIN_UP_SAMPLES or stats.span_s < MIN_SPAN_S:
            detection.not_judged[stats.target] = [
                f"thin data: {stats.up_samples} successful samples over {stats.span_s:.0f} s "
                f"(need {MIN_UP_SAMPLES} over {MIN_SPAN_S:.0f} s)"
            ]
            continue
        slo = target.slo if target else None
        candidates = (
            _kv_pressure(stats),
            _preemption(stats),
            _queue_saturation(stats),
            _slo_breach(stats, target, "ttft_slo_breach", "ttft", slo.ttft_p95_ms if slo else None),
            _slo_breach(stats, target, "itl_slo_breach", "itl", slo.itl_p95_ms if slo else None),
            _underutilization(stats),
        )
        found = [report for report in candidates if report is not None]
        if any(r.kind != "underutilization" for r in found):
            found = [
                r for r in found if r.kind != "underutilization"
            ]  # never "idle" and "saturated"
        detection.reports.extend(found)
        reasons = _not_judged(stats, target)
        if reasons:
            detection.not_judged[stats.target] = reasons
            for report in found:
                report.evidence["not_judged"] = reasons
    return detection
