"""Tuning advice: from a window's bottlenecks to engine-native flag changes, with evidence.

Principles, in order:
1. No advice on thin or passing evidence: only for bottlenecks that were sustained in time, and
   never for a server that is down.
2. One ladder per bottleneck kind and engine (ladders.py), climbed from the cheapest rung; the
   rungs passed over and why are in the evidence. Steps are sized from the window's numbers
   (sizing.py), never fixed increments unless an input is missing — then the evidence says so.
3. One recommendation per (target, parameter), and never two that pull one knob in opposite
   directions: KV pressure or preemption forbids raising concurrency, a breached ITL SLO forbids
   raising the batch.
4. Every value is checked against the engine truth table (engines/truth.py) for the engine's
   version and GPU before it is proposed, and again before it is returned; a value that fails is
   dropped and logged with the reason, never written.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from perf_pipelines.analysis.window import WindowStats
from perf_pipelines.findings import BottleneckReport, Recommendation
from perf_pipelines.recommendations.ladders import (
    CONCURRENCY,
    LADDERS,
    LAST_RESORT,
    MAX_MEMORY_FRACTION,
    MEMORY_FRACTION,
    QUALITY_NOTE,
    Rung,
    Step,
)
from perf_pipelines.recommendations.situation import Situation
from perf_pipelines.targets import Target

__all__ = ["QUALITY_NOTE", "Advice", "advise", "contradictions", "recommend"]

log = logging.getLogger(__name__)

# The order ladders are climbed in: safety (memory, latency SLOs) before throughput.
KIND_ORDER = (
    "kv_cache_pressure",
    "preemption",
    "itl_slo_breach",
    "queue_saturation",
    "ttft_slo_breach",
)
DEPLOYMENT_PARAMETERS = {"replicas"}  # not an engine flag: no truth-table entry to check
FP8_VALUES = ("fp8", "w8a8_fp8")
RUNG_CONFIDENCE_DECAY = 0.05  # each rung passed over makes the next a little less certain


@dataclass
class Advice:
    recommendations: list[Recommendation] = field(default_factory=list)
    # (target, parameter, value, reason) of what the final check refused: must stay empty
    dropped: list[tuple[str, str, Any, str]] = field(default_factory=list)


def _sustained(report: BottleneckReport) -> bool:
    """Bursts are reported (at info level) but never advised on."""
    return report.evidence.get("sustained") is not False


def _forbidden(situation: Situation, found: dict[str, BottleneckReport]) -> dict[str, str]:
    """(parameter → why) for the directions this target's bottlenecks rule out."""
    rules: dict[str, str] = {}
    concurrency = CONCURRENCY.get(situation.engine)
    if concurrency is None:
        return rules
    if "kv_cache_pressure" in found or "preemption" in found:
        rules[f"{concurrency}:raise"] = "KV pressure: more concurrency would preempt more"
    if "itl_slo_breach" in found:
        rules[f"{concurrency}:raise"] = "ITL SLO breached: a larger batch slows every token"
    return rules


def _ttft_applies(found: dict[str, BottleneckReport]) -> bool:
    """The TTFT ladder (prefill budget, then faster weights) applies unless a capacity ladder
    (queue at the cap, KV pressure, preemption) already answers for the waiting."""
    capacity = ("queue_saturation", "kv_cache_pressure", "preemption")
    return "ttft_slo_breach" in found and not any(kind in found for kind in capacity)


def _climb(
    situation: Situation,
    report: BottleneckReport,
    rungs: Iterable[Rung],
    forbidden: dict[str, str],
    chosen: dict[str, Recommendation],
) -> Recommendation | None:
    passed_over: list[str] = []
    for index, rung in enumerate((*rungs, LAST_RESORT)):
        step = rung(situation, report)
        if isinstance(step, str):
            passed_over.append(step)
            continue
        reason = forbidden.get(f"{step.parameter}:{step.direction}")
        if reason is None and step.parameter in chosen:
            if chosen[step.parameter].recommended_value == step.value:
                return None  # the same advice already stands for another bottleneck
            reason = f"{step.parameter}: already advised for {chosen[step.parameter].report_kind}"
        if reason is None and step.parameter not in DEPLOYMENT_PARAMETERS:
            reason = situation.accepts(step.parameter, step.value)
        if reason is not None:
            passed_over.append(reason)
            continue
        return _recommendation(situation, report, step, passed_over, index)
    return None


def _recommendation(
    situation: Situation, report: BottleneckReport, step: Step, passed_over: list[str], rung: int
) -> Recommendation:
    current = situation.current(step.parameter)
    fact = situation.fact(step.parameter)
    confidence = step.base_confidence + 0.35 * report.score - RUNG_CONFIDENCE_DECAY * rung
    if not current.known:
        confidence *= 0.8
    if not step.sized:
        confidence *= 0.85
    rationale = f"{report.summary} {step.rationale}"
    if step.cost:
        rationale += f" Cost: {step.cost}."
    evidence = report.evidence | {
        "step": step.computation,
        "step_sized_from_evidence": step.sized,
        "rung": rung + 1,
        "passed_over": passed_over,
        "engine_version": situation.target.version if situation.target else None,
        "gpu": situation.gpu_label,
        "limits": situation.limits,
    }
    if fact is not None:
        evidence["flag_source"] = fact.source
    return Recommendation(
        situation.stats.target,
        situation.engine,
        situation.stats.model,
        step.capability,
        step.parameter,
        fact.flag if fact is not None else "(deployment) replicas",
        step.current if step.current is not None else current.value,
        step.value,
        rationale,
        evidence,
        step.effect,
        round(max(0.1, min(0.95, confidence)), 3),
        report.severity,
        report.kind,
        step.direction,
    )


def _advise_target(situation: Situation) -> list[Recommendation]:
    found = situation.reports
    forbidden = _forbidden(situation, found)
    chosen: dict[str, Recommendation] = {}
    for kind in KIND_ORDER:
        report = found.get(kind)
        if report is None or (kind == "ttft_slo_breach" and not _ttft_applies(found)):
            continue
        rungs = LADDERS[kind].get(situation.engine)
        if rungs is None:
            continue
        advice = _climb(situation, report, rungs, forbidden, chosen)
        if advice is not None:
            chosen[advice.parameter] = advice
    return list(chosen.values())


def final_check(situation: Situation, recommendation: Recommendation) -> str | None:
    """Why `recommendation` must not be written, or None. The ladders already check each value;
    this is the last line, independent of how a rung computed it."""
    parameter, value = recommendation.parameter, recommendation.recommended_value
    if parameter in DEPLOYMENT_PARAMETERS:
        return None
    refused = situation.accepts(parameter, value)
    if refused is not None:
        return refused
    if parameter == MEMORY_FRACTION.get(situation.engine) and float(value) > MAX_MEMORY_FRACTION:
        return f"{parameter} {value} is above the agent's cap of {MAX_MEMORY_FRACTION}"
    if str(value).startswith(FP8_VALUES) and situation.fp8 == "none":
        return f"{value} needs FP8 hardware; {situation.gpu_label} has none"
    return None


def advise(
    stats_list: list[WindowStats], reports: list[BottleneckReport], targets: dict[str, Target]
) -> Advice:
    """Advice for every target, consistent per target (see the module docstring)."""
    by_key: dict[tuple[str, str | None], dict[str, BottleneckReport]] = {}
    for report in reports:
        if _sustained(report):
            by_key.setdefault((report.target, report.model), {})[report.kind] = report
    advice = Advice()
    for stats in stats_list:
        found = by_key.get((stats.target, stats.model), {})
        down = found.get("target_down")
        if not found or (down is not None and down.severity == "critical"):
            continue
        situation = Situation(stats, targets.get(stats.target), found)
        for recommendation in _advise_target(situation):
            reason = final_check(situation, recommendation)
            if reason is None:
                advice.recommendations.append(recommendation)
                continue
            advice.dropped.append(
                (stats.target, recommendation.parameter, recommendation.recommended_value, reason)
            )
            log.warning(
                "recommendation dropped: %s %s=%s: %s",
                stats.target,
                recommendation.parameter,
                recommendation.recommended_value,
                reason,
            )
    return advice


def recommend(
    stats_list: list[WindowStats], reports: list[BottleneckReport], targets: dict[str, Target]
) -> list[Recommendation]:
    """The recommendations of `advise` (what the final check dropped is logged)."""
    return advise(stats_list, reports, targets).recommendations


def contradictions(recommendations: list[Recommendation]) -> list[str]:
    """Pairs of advice for one target that pull one parameter two ways (must be empty)."""
    seen: dict[tuple[str, str | None, str], Recommendation] = {}
    problems = []
    for rec in recommendations:
        key = (rec.target, rec.model, rec.parameter)
        other = seen.get(key)
        if other is not None and other.recommended_value != rec.recommended_value:
            values = f"{other.recommended_value} and {rec.recommended_value}"
            problems.append(f"{rec.target}: {rec.parameter} → {values}")
        seen[key] = rec
    return problems
