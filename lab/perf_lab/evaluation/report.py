"""docs/evaluation.md from one run of `perf-pipelines evaluate`."""

from __future__ import annotations

import platform
from datetime import UTC, datetime
from typing import Any

from perf_lab.evaluation.harness import EvaluationConfig
from perf_lab.evaluation.scoring import (
    GOAL_F1,
    GOAL_MEDIAN,
    GOAL_P10,
    TPE_TRIALS,
    ServerScore,
    ServerSet,
    summaries,
)
from perf_lab.simulator.settings import validate_settings
from perf_pipelines import __version__
from perf_pipelines.formatting import markdown_table


def _pct(value: float) -> str:
    return "–" if value != value else f"{value:.0%}"  # NaN: no server


def _changes(engine: str, before: dict[str, Any], after: dict[str, Any]) -> str:
    try:
        start, end = validate_settings(engine, before), validate_settings(engine, after)
    except ValueError:
        return ", ".join(f"{k}={v}" for k, v in after.items() if before.get(k) != v)
    return ", ".join(f"{k} {start[k]}→{v}" for k, v in end.items() if start[k] != v) or "–"


def engine_table(server_set: ServerSet) -> str:
    rows = []
    for s in summaries(server_set):
        rows.append(
            [
                s.label,
                len(s.scores),
                f"{s.advised}/{s.problems}",
                _pct(s.median),
                _pct(s.p10),
                " / ".join(_pct(s.peer_median(str(n))) for n in TPE_TRIALS),
                _pct(s.peer_p10(3)),
                _pct(s.peer_median("defaults")),
                f"{_pct(s.problem_mean)} / {_pct(s.problem_peer_mean(3))}",
                f"{s.f1:.2f}",
                s.invalid,
                s.burst_advice,
            ]
        )
    return markdown_table(
        [
            "engine",
            "servers",
            "problem servers advised",
            "agent median",
            "agent p10",
            "TPE 3 / 10 / 30 median",
            "TPE 3 p10",
            "defaults median",
            "problem servers: agent / TPE 3 mean",
            "detection F1",
            "invalid values",
            "advice on bursts",
        ],
        rows,
    )


def goals_table(server_set: ServerSet) -> str:
    rows = []
    sums = summaries(server_set)
    names = list(sums[0].goals())
    for goal in names:
        rows.append([goal] + ["met" if s.goals()[goal] else "**not met**" for s in sums])
    return markdown_table(["goal"] + [s.label for s in sums], rows)


def _advice(score: ServerScore) -> str:
    parts = []
    for index, it in enumerate(score.loop.iterations):
        for rec in it.recommendations:
            tag = ""
            if rec.parameter in it.invalid:
                tag = " (INVALID)"
            elif rec.parameter in it.unmodelled:
                tag = " (not modelled)"
            elif not it.applied:
                tag = " (not applied)"
            parts.append(
                f"{index}: {rec.engine_flag} {rec.current_value}→{rec.recommended_value}{tag}"
            )
    return "; ".join(parts) or "–"


def _archetype(score: ServerScore) -> str:
    fallback = score.server.facts.get("fell_back_from")
    return score.server.archetype + (f" (drawn as {fallback})" if fallback else "")


def server_table(server_set: ServerSet) -> str:
    rows = []
    for s in server_set.scores:
        spec = s.server.spec
        rows.append(
            [
                s.name,
                spec.version or "–",
                s.server.advertised_gpu + (f"×{spec.gpu_count}" if spec.gpu_count > 1 else ""),
                spec.model.split("/")[-1],
                s.server.workload_kind,
                _archetype(s),
                ", ".join(sorted(s.expected)) or "–",
                ", ".join(sorted(s.detected)) or "–",
                " → ".join(f"{g.goodput_rps:.2f}" for g in s.path),
                f"{s.oracle_top_rps:.2f}",
                _pct(s.share_of_oracle),
                " / ".join(_pct(s.share(s.tpe[n])) for n in TPE_TRIALS),
                _pct(s.share(s.defaults)),
                _advice(s),
            ]
        )
    return markdown_table(
        [
            "server",
            "version",
            "GPU (targets file)",
            "model",
            "workload",
            "archetype",
            "expected",
            "detected",
            "goodput start → steps",
            "oracle",
            "agent",
            "TPE 3/10/30",
            "defaults",
            "advice (window: flag change)",
        ],
        rows,
    )


def _stopped(score: ServerScore) -> str | None:
    """Why the loop ended short of the oracle: the last window's verdicts without advice."""
    iterations = score.loop.iterations
    if len(iterations) < 2 or iterations[-1].recommendations:
        return None
    last = iterations[-1]
    seen = ", ".join(f"{k} ({last.severities.get(k, '?')})" for k in last.detected) or "nothing"
    return f"no advice in window {len(iterations) - 1}, which showed {seen}"


def why(score: ServerScore) -> list[str]:
    """What went wrong on one server, as concretely as the run shows it."""
    reasons = []
    if score.error:
        reasons.append(f"the agent raised: {score.error.strip().splitlines()[-1]}")
    missed, extra = score.expected - score.detected, score.detected - score.expected
    if missed:
        reasons.append(f"not detected: {', '.join(sorted(missed))}")
    if extra:
        reasons.append(f"detected without being there: {', '.join(sorted(extra))}")
    for index, it in enumerate(score.loop.iterations):
        for parameter, reason in it.invalid.items():
            reasons.append(f"window {index}: invalid {parameter} {reason}")
        if it.unmodelled:
            reasons.append(f"window {index}: advised {', '.join(it.unmodelled)} (not simulated)")
    if score.burst_advice:
        reasons.append(f"advice on a short burst: {_advice(score)}")
    if score.is_problem and not score.advised:
        reasons.append("a problem server without advice")
    if score.share_of_oracle < GOAL_P10:
        spec = score.server.spec
        reasons.append(
            f"ended at {score.share_of_oracle:.0%} of the oracle: agent "
            f"{_changes(spec.engine, spec.settings, score.final.settings)}; oracle "
            f"{_changes(spec.engine, spec.settings, score.oracle_best.settings)}"
        )
        stopped = _stopped(score)
        if stopped:
            reasons.append(stopped)
    if score.regressions:
        reasons.append(f"step(s) {score.regressions} lost more than 5 % of goodput")
    return reasons


def shortfalls(server_set: ServerSet) -> str:
    lines = []
    for s in server_set.scores:
        reasons = why(s)
        if reasons:
            spec = s.server.spec
            head = (
                f"- `{s.name}` ({spec.engine} {spec.version}, {s.server.advertised_gpu}, "
                f"{_archetype(s)}, {s.server.workload_kind})"
            )
            lines.append(head + ": " + "; ".join(reasons) + ".")
    return "\n".join(lines) or "- none"


def outcome_tracking(sets: list[ServerSet]) -> str:
    pairs = []
    for server_set in sets:
        for s in server_set.scores:
            applied = [k for k, it in enumerate(s.loop.iterations) if it.applied]
            for index, k in enumerate(applied, start=1):
                if k + 1 >= len(s.loop.iterations) or index >= len(s.path):
                    break
                verdict = s.loop.iterations[k + 1].outcome_of_previous_step
                before, after = s.path[index - 1].goodput_rps, s.path[index].goodput_rps
                truth = (
                    "improved"
                    if after > 1.05 * before
                    else "regressed"
                    if after < 0.95 * before
                    else "no_change"
                )
                pairs.append((verdict, truth))
    matching = sum(1 for verdict, truth in pairs if verdict == truth)
    wrong: dict[str, int] = {}
    for verdict, truth in pairs:
        if verdict != truth:
            key = f"said {verdict or 'nothing'}, truth {truth}"
            wrong[key] = wrong.get(key, 0) + 1
    detail = "; ".join(f"{k} ×{n}" for k, n in sorted(wrong.items()))
    return f"{matching} of {len(pairs)} steps judged as the goodput moved" + (
        f" ({detail})" if detail else ""
    )


def to_markdown(
    sets: list[ServerSet], config: EvaluationConfig, command: str, seconds: float
) -> str:
    servers = sum(len(s.scores) for s in sets)
    set_lines = "\n".join(
        f"- **{s.name}** set: seed {s.seed}, {len(s.scores)} servers"
        + (
            " (fixed; rules may be tuned on it)"
            if s.name == "tuning"
            else " (fresh; never tune on it)"
        )
        for s in sets
    )
    sections = []
    for s in sets:
        sections.append(
            f"""## {s.name.capitalize()} set (seed {s.seed})

### Per engine

Shares are of the oracle's goodput on each server; medians and 10th percentiles over the
servers. TPE's columns give its best after 3, 10 and 30 trials.

{engine_table(s)}

### Goals

{goals_table(s)}

### What falls short, server by server

{shortfalls(s)}

### Servers

{server_table(s)}
"""
        )
    body = "\n".join(sections)
    return f"""# Closed-loop evaluation

Generated by `{command}` on {datetime.now(UTC):%Y-%m-%d} ({platform.machine()}, Python
{platform.python_version()}, perf_pipelines {__version__}): {servers} servers in
{seconds / 60:.1f} minutes with {config.workers} worker processes.

{set_lines}

Reproduce the report set with `--report-seed <its seed>`; the simulator itself is seeded
(seed {config.seed}), so the same seeds give the same servers and the same numbers.

## Method

**Servers, generated from a seed** (`perf_lab/simulator/generator.py`). Each set spreads its
servers over the four engines in turn (vLLM 0.8.5 / 0.11.0 / 0.33.0 — 0.8.5 serves the V0-era
metric names —, SGLang 0.4.6 / 0.5.2, TGI 2.4.1 / 3.3.6, llama.cpp b4600 / b6500), GPUs (T4,
A10, A100 80 GB, L4, L40S, H100, H200, MI300X, and "NVIDIA RTX PRO 6000 Blackwell", a name no
hardware table knows, simulated with an L40S profile), models (Llama 3.1 8B and 70B, Qwen2.5
7B, Mixtral 8x7B, 1–4 GPUs) and traffic (chat; long-context RAG; bursty: a healthy server
with one 8–15 s burst at 2.5–4× its rate; diurnal: the daily peak or trough). Each server gets
an archetype: healthy, burst, diurnal, idle, queue (batch cap too low), KV (memory fraction too
low for the KV its load needs), token budget (TGI's max_batch_total_tokens), ITL (a large
batch reading too many bytes per step for the inter-token SLO), TTFT (long prompts whose
prefill is too slow). Loads come from the simulator's roofline; the SLO from what a
better-configured twin of the server achieves. **Ground truth** is then read off the
simulator's state over exactly the window the agent sees first (KV use, running, waiting,
preemptions every {config.scrape_interval_s:g} s; TTFT and inter-token p95 from its own
histograms): a condition counts when it holds in ≥ 65 % of the samples (p95 ≥ 1.2× the SLO),
is absent under 35 % (≤ 0.85×), and a server with anything in between, or whose archetype did
not show, is drawn again; after 12 draws a slot falls back to a healthy server. Conditions an
engine's metrics cannot show are not expected (llama.cpp: no KV gauge, preemption counter or
latency histograms; TGI: no TTFT histogram).

**The loop.** As in production on a virtual clock: the collector scrapes the server over HTTP
every {config.scrape_interval_s:g} s for {config.window_s:g} s, detection and recommendation run
on that window, the advice is checked and applied through the simulator's control API (a
restart), the server settles for {config.warmup_s:g} s, and the loop repeats — at most
{config.max_iterations} applied steps (restarts), ending when the agent has nothing more to say.
The targets file names the GPU as above (so the agent must treat the unknown one as unknown)
and carries the engine version once the targets file has a field for it.

**Goodput** is requests per second that finish within the server's SLO (TTFT and mean time per
output token). Every settings point — the start, each step, each grid point, each TPE trial,
the defaults — is scored the same way: a fresh server with the same arrivals,
{config.warmup_s:g} s warm-up, then a window of at least {config.window_s:g} s and
{config.min_requests} requests (at most {config.max_window_s:g} s). A configuration the engine
would refuse — a value it does not accept, or one the GPU cannot run (FP8 weights below compute
capability 8.0, Marlin kernels on AMD, …: `perf_lab/simulator/settings.py`, with the engines'
source files and tags) — scores 0, and an agent step that proposes one is *invalid*: it counts
against the agent, scores 0 and ends that server's loop. Advice the simulator cannot apply (another
replica, a flag it has no model of) is listed as "not simulated", not applied, and not counted
as invalid.

**Peers**, on the same servers and the same goodput: the engine defaults (version- and
GPU-derived where the engine derives them; the deployment — model file, quantized checkpoint,
tensor parallelism — kept); Optuna's TPE (seeded per server) over the same settings space as
the grid with 3 trials (as many restarts as the agent may use), 10 and 30; and the exhaustive
grid, the oracle: memory fraction, batch cap (×¼…×4), prefill budget, KV dtype (FP8 where the
GPU has FP8 compute), quantization (FP8 on FP8 GPUs, else the INT8 checkpoint each engine
really serves: vLLM compressed-tensors, SGLang w8a8_int8, TGI eetq), llama.cpp slots, KV type
and model file.

**Goals** per engine and overall: median ≥ {GOAL_MEDIAN:.0%} and 10th percentile ≥
{GOAL_P10:.0%} of the oracle within {config.max_iterations} restarts; ahead of TPE at 3 trials (its
mean share of the oracle over the servers with something to fix: on the others every peer is
at 100 %);
0 invalid values; 0 advice on bursts (an info-level report on a burst is allowed and not
counted as a detection); detection F1 ≥ {GOAL_F1} on the report set.

{body}
## Outcome tracking

The agent's own verdict on each applied step (from metrics alone) against the goodput the
harness measured: {outcome_tracking(sets)}.

## What this does not show

- The simulator is the judge: a step that helps here helps on hardware only as far as the
  simulator's roofline and scheduler are right ([simulator.md](simulator.md) says where they
  are coarse; e.g. the prefill chunk size barely changes its TTFT).
- The oracle searches a moderate grid; the agent can land off the grid, above it (a share over
  100 %). TPE searches the same space, so it never beats the oracle.
- Ground truth is read from the simulator's state, with margins around every threshold, and the
  SLO is set from a twin of the server: a real fleet has borderline servers this set leaves out.
- Quantization changes output quality, which no metric here shows; the agent advises it with a
  note to validate quality first, the oracle and TPE pick it freely.
"""
