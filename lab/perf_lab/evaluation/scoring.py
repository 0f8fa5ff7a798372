"""Score the closed loop per server: detection against the scenario's ground truth, goodput of
every settings point the loop reached against the oracle's, and regressions."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from perf_lab.evaluation.closed_loop import Iteration, LoopResult, run_closed_loop
from perf_lab.evaluation.harness import (
    EvaluationConfig,
    Goodput,
    measure_goodput,
    oracle,
)
from perf_lab.simulator.scenarios import SCENARIOS
from perf_lab.simulator.settings import validate_settings

from perf_pipelines import __version__
from perf_pipelines.formatting import markdown_table

# Scenarios the evaluation runs by default: every named one except the 1,000-server `scale`.
DEFAULT_SCENARIOS = tuple(name for name in SCENARIOS if name != "scale")
REGRESSION_TOLERANCE = 0.05  # a step that loses more than 5 % of goodput is a regression
GOAL_F1 = 0.95
GOAL_SHARE_OF_ORACLE = 0.95


@dataclass
class ServerScore:
    scenario: str
    loop: LoopResult
    expected: set[str]
    detected: set[str]
    path: list[Goodput]  # start, then the settings after each applied step
    oracle_best: Goodput
    oracle_points: int

    @property
    def name(self) -> str:
        return self.loop.spec.name

    @property
    def true_positives(self) -> int:
        return len(self.expected & self.detected)

    @property
    def false_positives(self) -> int:
        return len(self.detected - self.expected)

    @property
    def false_negatives(self) -> int:
        return len(self.expected - self.detected)

    @property
    def steps(self) -> int:
        return len(self.path) - 1

    @property
    def final(self) -> Goodput:
        return self.path[-1]

    @property
    def share_of_oracle(self) -> float:
        best = self.oracle_best.goodput_rps
        return 1.0 if best <= 0 else self.final.goodput_rps / best

    @property
    def outcome_agreement(self) -> list[tuple[str | None, str]]:
        """Per applied step: the agent's outcome verdict from metrics, and the truth from
        goodput (improved / regressed beyond the tolerance, else no_change)."""
        pairs = []
        iterations = self.loop.iterations
        applied = [k for k, it in enumerate(iterations) if it.applied]
        for index, k in enumerate(applied, start=1):
            if k + 1 >= len(iterations):
                break  # applied in the last window: nothing measured after it
            verdict = iterations[k + 1].outcome_of_previous_step
            before, after = self.path[index - 1].goodput_rps, self.path[index].goodput_rps
            if after > (1 + REGRESSION_TOLERANCE) * before:
                truth = "improved"
            elif after < (1 - REGRESSION_TOLERANCE) * before:
                truth = "regressed"
            else:
                truth = "no_change"
            pairs.append((verdict, truth))
        return pairs

    @property
    def regressions(self) -> list[int]:
        """Steps (1-based) whose settings lost more than the tolerance against the step before."""
        return [
            index
            for index in range(1, len(self.path))
            if self.path[index].goodput_rps
            < (1 - REGRESSION_TOLERANCE) * self.path[index - 1].goodput_rps
        ]


@dataclass
class Evaluation:
    config: EvaluationConfig
    scores: list[ServerScore] = field(default_factory=list)

    def _sum(self, attribute: str) -> int:
        return sum(getattr(score, attribute) for score in self.scores)

    @property
    def precision(self) -> float:
        found = self._sum("true_positives") + self._sum("false_positives")
        return 1.0 if found == 0 else self._sum("true_positives") / found

    @property
    def recall(self) -> float:
        present = self._sum("true_positives") + self._sum("false_negatives")
        return 1.0 if present == 0 else self._sum("true_positives") / present

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 0.0 if p + r == 0 else 2 * p * r / (p + r)

    @property
    def outcome_pairs(self) -> list[tuple[str | None, str]]:
        return [pair for score in self.scores for pair in score.outcome_agreement]

    @property
    def goals_met(self) -> dict[str, bool]:
        return {
            f"detection F1 ≥ {GOAL_F1}": self.f1 >= GOAL_F1,
            f"≥ {GOAL_SHARE_OF_ORACLE:.0%} of the oracle's goodput within "
            f"{self.config.max_iterations} iterations": all(
                s.share_of_oracle >= GOAL_SHARE_OF_ORACLE for s in self.scores
            ),
            f"no step loses more than {REGRESSION_TOLERANCE:.0%} of goodput": not any(
                s.regressions for s in self.scores
            ),
        }


def evaluate(scenarios: Sequence[str], config: EvaluationConfig) -> Evaluation:
    evaluation = Evaluation(config)
    oracle_cache: dict[str, tuple[Goodput, int]] = {}
    for scenario in scenarios:
        specs = SCENARIOS[scenario]()
        for loop in run_closed_loop(specs, config):
            spec = loop.spec
            if spec.name not in oracle_cache:  # the same server appears in several scenarios
                result = oracle(spec, config)
                oracle_cache[spec.name] = (result.best, result.evaluated)
            best, points = oracle_cache[spec.name]
            settings_path = [spec.settings] + [
                it.settings | it.applied for it in loop.iterations if it.applied
            ]
            evaluation.scores.append(
                ServerScore(
                    scenario=scenario,
                    loop=loop,
                    expected=set(spec.expected_bottlenecks),
                    detected=set(loop.iterations[0].detected),
                    path=[measure_goodput(spec, s, config) for s in settings_path],
                    oracle_best=best,
                    oracle_points=points,
                )
            )
    return evaluation


def _verdict_after(iterations: list[Iteration], index: int) -> str:
    if not iterations[index].applied:
        return "–"
    if index + 1 >= len(iterations):
        return "not measured (last window)"
    return iterations[index + 1].outcome_of_previous_step or "not judged"


def _changes(engine: str, before: dict[str, Any], after: dict[str, Any]) -> str:
    start, end = validate_settings(engine, before), validate_settings(engine, after)
    return ", ".join(f"{k} {start[k]}→{v}" for k, v in end.items() if start[k] != v) or "–"


def to_markdown(evaluation: Evaluation, command: str) -> str:
    config = evaluation.config
    scores = evaluation.scores
    detection_rows = [
        [
            s.scenario,
            s.name,
            ", ".join(sorted(s.expected)) or "–",
            ", ".join(sorted(s.detected)) or "–",
            s.true_positives,
            s.false_positives,
            s.false_negatives,
        ]
        for s in scores
    ]
    goodput_rows = []
    for s in scores:
        steps = " → ".join(f"{g.goodput_rps:.2f}" for g in s.path)
        goodput_rows.append(
            [
                s.scenario,
                s.name,
                f"{s.loop.spec.workload.rate_rps:g}",
                steps,
                f"{s.oracle_best.goodput_rps:.2f}",
                f"{s.share_of_oracle:.0%}",
                s.steps,
                ", ".join(map(str, s.regressions)) or "none",
            ]
        )
    advice_rows = []
    for s in scores:
        for index, it in enumerate(s.loop.iterations):
            for rec in it.recommendations:
                advice_rows.append(
                    [
                        s.name,
                        index,
                        ", ".join(it.detected) or "–",
                        rec.engine_flag,
                        f"{rec.current_value} → {rec.recommended_value}",
                        f"{rec.confidence:.2f}",
                        "applied" if it.applied else ("refused" if it.rejected else "not applied"),
                        _verdict_after(s.loop.iterations, index),
                    ]
                )
    oracle_rows = [
        [
            s.name,
            s.oracle_points,
            _changes(s.loop.spec.engine, s.loop.spec.settings, s.oracle_best.settings),
            _changes(s.loop.spec.engine, s.loop.spec.settings, s.final.settings),
        ]
        for s in scores
    ]
    goodput_table = markdown_table(
        [
            "scenario",
            "server",
            "offered rps",
            "start → each step",
            "oracle",
            "share of oracle",
            "steps",
            "regressions",
        ],
        goodput_rows,
    )
    detection_table = markdown_table(
        ["scenario", "server", "expected", "detected", "TP", "FP", "FN"], detection_rows
    )
    advice_table = markdown_table(
        [
            "server",
            "iteration",
            "detected",
            "flag",
            "change",
            "confidence",
            "outcome",
            "agent's verdict after",
        ],
        advice_rows,
    )
    oracle_table = markdown_table(
        ["server", "points tried", "oracle's settings", "agent's final settings"], oracle_rows
    )
    pairs = evaluation.outcome_pairs
    matching = sum(1 for verdict, truth in pairs if verdict == truth)
    disagreements = "; ".join(f"said {v or 'nothing'}, truth {t}" for v, t in pairs if v != t)
    agreement = f"{matching} of {len(pairs)} steps judged as the goodput moved" + (
        f" ({disagreements})" if disagreements else ""
    )
    goals = "\n".join(
        f"- {'met' if met else '**not met**'}: {goal}" for goal, met in evaluation.goals_met.items()
    )
    return f"""# Closed-loop evaluation

Generated by `{command}` on {datetime.now(UTC):%Y-%m-%d} ({platform.machine()},
Python {platform.python_version()}, perf_pipelines {__version__}); reproducible: the simulator
and the oracle are seeded (seed {config.seed}).

For each scenario of the fleet simulator the agent runs as in production, on a virtual clock:
the collector scrapes every server over HTTP every {config.scrape_interval_s:g} s for
{config.window_s:g} s, detection and recommendation run on that window, the advice is applied
through the simulator's control API (a restart with the new flags), the server settles for
{config.warmup_s:g} s, and the loop repeats — at most {config.max_iterations} applied steps,
ending early when the agent has nothing more to say. Goodput is requests per second that finish
within the server's SLO (TTFT and mean time per output token). Every settings point (the start,
each step, each oracle candidate) is scored the same way: a fresh server with the same arrivals,
{config.warmup_s:g} s warm-up, then a window of at least {config.window_s:g} s and
{config.min_requests} requests. The oracle grid-searches the settings the rules can change
(memory fraction, batch limit, prefill budget, KV dtype, quantization where the GPU allows).

## Goals

{goals}

Detection over all servers: precision **{evaluation.precision:.2f}**, recall
**{evaluation.recall:.2f}**, F1 **{evaluation.f1:.2f}** (ground truth: each scenario's
`expected_bottlenecks`, scored on the first window, before any change).

Outcome tracking (the agent's own verdict on each applied step, from metrics alone, against the
goodput the harness measured): {agreement}.

## Goodput (requests/s within the SLO)

{goodput_table}

## Detection

{detection_table}

## What the agent advised

{advice_table}

## Oracle against the agent

{oracle_table}

## What this does not show

- The simulator is the judge: a step that helps here helps on hardware only as far as the
  simulator's roofline and scheduler are right ([simulator.md](simulator.md) says where they
  are coarse; e.g. the prefill chunk size barely changes its TTFT, so raising it is scored as
  neither help nor harm).
- Each scenario has one root cause. In most of them the oracle's ceiling is the offered load
  (every request within the SLO), so "100 %" means the agent got there, not that it found a
  global optimum; where the ceiling is below the load (the long-prompt TTFT scenario) the
  oracle is the real bar.
- Ground truth lists the conditions the scenario produces, including consequences (a TTFT
  breach behind a runaway queue), as checked in the simulator's state; it was not derived
  independently of the metrics the agent reads.
- The oracle may pick quantization, whose effect on output quality no metric shows; the agent
  only advises it with a note to validate quality first.
"""
