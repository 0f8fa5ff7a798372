"""The closed loop, run the way it runs in production but on a virtual clock: scrape a simulated
server over HTTP with the real collector, detect, recommend, apply the advice through the
simulator's control API (a restart with new flags), let the server settle, and repeat.

Each server runs on its own fleet and clock (servers are evaluated in parallel processes); its
targets-file entry names the GPU as the generator chose to name it, which for the unknown GPU is
not the profile the simulator runs. Rows carry the simulated time of their scrape, so rates and
quantiles come out as they would over a real window of the same length.

Before anything is applied, each recommendation is checked as the engine would check it: a value
the engine does not accept, or one this hardware cannot run, is *invalid*: the step is recorded
with a goodput of 0 (the engine would not start) and the loop for that server ends. A setting the
simulator does not model is recorded as such and not applied.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pandas as pd

from perf_lab.evaluation.harness import EvaluationConfig, advance, refusal
from perf_lab.simulator.fleet import Fleet, ServerSpec
from perf_lab.simulator.generator import GeneratedServer, WindowPlan
from perf_lab.simulator.http import run_fleet_in_thread
from perf_lab.simulator.scenarios import targets_for
from perf_lab.simulator.settings import SCHEMAS
from perf_pipelines.analysis.detection import detect
from perf_pipelines.analysis.outcomes import evaluate_outcome
from perf_pipelines.analysis.window import window_stats
from perf_pipelines.collection.collector import ScrapeLimits, collect
from perf_pipelines.collection.rounds import rows_from_rounds
from perf_pipelines.findings import Recommendation
from perf_pipelines.recommendations.rules import recommend
from perf_pipelines.storage.snapshots import SnapshotRow
from perf_pipelines.targets import Target, parse_targets

# llama.cpp sets the K and V cache types with two flags; the advice names them together.
_PAIRED_SETTINGS = {"cache_type_k": ("cache_type_k", "cache_type_v")}
LOOP_START = WindowPlan().start


@dataclass
class Iteration:
    """One pass of the loop: what was seen in the window and what was applied."""

    settings: dict[str, Any]
    detected: list[str]
    severities: dict[str, str]
    recommendations: list[Recommendation]
    observed_goodput_rps: float  # measured in the loop's own window (one random draw)
    applied: dict[str, Any] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # setting -> why the server refused
    invalid: dict[str, str] = field(default_factory=dict)  # parameter -> why the engine would
    unmodelled: list[str] = field(default_factory=list)  # parameters the simulator has no model of
    # The agent's own verdict (outcome tracking) on the step applied in the iteration before,
    # judged from this window against the one before the change.
    outcome_of_previous_step: str | None = None

    @property
    def attempted(self) -> dict[str, Any]:
        """The settings the advice asked for (applied or not)."""
        changes: dict[str, Any] = {}
        for rec in self.recommendations:
            for name in _PAIRED_SETTINGS.get(rec.parameter, (rec.parameter,)):
                changes[name] = _plain(rec.recommended_value)
        return changes


@dataclass
class LoopResult:
    spec: ServerSpec
    iterations: list[Iteration]

    @property
    def final_settings(self) -> dict[str, Any]:
        return self.iterations[-1].settings


def snapshot_frame(rows: list[SnapshotRow]) -> pd.DataFrame:
    """Rows as `load_snapshots` returns them."""
    frame = pd.DataFrame([row.as_record() for row in rows])
    frame["collected_at"] = pd.to_datetime(frame["collected_at"], utc=True)
    return frame


def scrape_window(
    fleet: Fleet, targets: list[Target], samples: int, interval_s: float, label: str
) -> list[SnapshotRow]:
    """`samples` scrapes over HTTP, `interval_s` apart on the fleet's virtual clock; each row
    carries the simulated time of its scrape."""
    limits = ScrapeLimits(timeout_s=10.0, concurrency=16)
    rows: list[SnapshotRow] = []
    for index in range(samples):
        if index:
            advance(fleet, interval_s)
        simulated_at = datetime.fromtimestamp(fleet.now(), UTC)
        (results,) = asyncio.run(collect(targets, limits, samples=1))
        rows.extend(
            dataclasses.replace(row, collected_at=simulated_at)
            for row in rows_from_rounds(f"{label}-{index}", [results])
        )
    return rows


def _plain(value: Any) -> Any:
    """numpy scalars as Python values (they go out as JSON)."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def check_advice(
    spec: ServerSpec, current: dict[str, Any], recommendations: list[Recommendation]
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """The changes to apply, the invalid ones (parameter -> reason), the unmodelled ones."""
    schema = SCHEMAS[spec.engine]
    changes: dict[str, Any] = {}
    invalid: dict[str, str] = {}
    unmodelled: list[str] = []
    for rec in recommendations:
        names = _PAIRED_SETTINGS.get(rec.parameter, (rec.parameter,))
        if any(name not in schema for name in names):
            unmodelled.append(rec.parameter)
            continue
        value = _plain(rec.recommended_value)
        problem = refusal(spec, current | dict.fromkeys(names, value))
        if problem is not None:
            invalid[rec.parameter] = f"{value!r}: {problem}"
        changes.update(dict.fromkeys(names, value))
    return changes, invalid, unmodelled


def _apply(
    client: httpx.Client, name: str, changes: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Apply all advice for one server in one restart, as an operator would roll it out."""
    response = client.put(f"/control/servers/{name}/settings", json=changes)
    if response.status_code == 200:
        return changes, {}
    reason = response.json().get("error", response.text)
    return {}, dict.fromkeys(changes, reason)


class _Loop:
    """One server's loop: its fleet, HTTP client and targets-file entry."""

    def __init__(self, server: GeneratedServer, config: EvaluationConfig) -> None:
        self.server, self.config = server, config
        self.spec = dataclasses.replace(server.spec, settings=dict(server.spec.settings))
        self.fleet = Fleet(
            [self.spec], virtual=True, tick=config.tick_s, seed=config.seed, start=LOOP_START
        )
        self.samples = int(config.window_s // config.scrape_interval_s) + 1
        self.changed_at: tuple[pd.DataFrame, datetime] | None = None
        self.last_frame = pd.DataFrame()

    def window(self, client: httpx.Client, targets: list[Target], index: int) -> Iteration:
        name = self.spec.name
        advance(self.fleet, self.config.warmup_s)
        before = _state(client, name)
        rows = scrape_window(
            self.fleet, targets, self.samples, self.config.scrape_interval_s, f"it{index}"
        )
        after = _state(client, name)
        frame = snapshot_frame(rows)
        target_map = {t.name: t for t in targets}
        stats = window_stats(
            frame, target_map, frame["collected_at"].min(), frame["collected_at"].max()
        )
        detection = detect(stats, target_map)
        reports = [r for r in detection.reports if r.target == name]
        step = Iteration(
            settings=dict(self.fleet.server(name).settings),
            detected=sorted({r.kind for r in reports}),
            severities={r.kind: r.severity for r in reports},
            recommendations=[
                r for r in recommend(stats, detection.reports, target_map) if r.target == name
            ],
            observed_goodput_rps=_goodput(before, after),
        )
        if self.changed_at is not None:
            earlier, applied_at = self.changed_at
            window, settle = (
                timedelta(seconds=self.config.window_s),
                timedelta(seconds=self.config.warmup_s),
            )
            step.outcome_of_previous_step = evaluate_outcome(
                pd.concat([earlier, frame]),
                target_map[name],
                name,
                None,
                applied_at,
                window,
                settle,
            ).outcome
        self.changed_at = None
        self.last_frame = frame
        return step

    def run(self) -> LoopResult:
        result = LoopResult(self.server.spec, [])
        with run_fleet_in_thread(self.fleet) as base_url, httpx.Client(base_url=base_url) as client:
            names = {self.spec.name: self.server.advertised_gpu}
            targets = parse_targets(targets_for([self.spec], base_url, names))
            for index in range(self.config.max_iterations + 1):
                step = self.window(client, targets, index)
                result.iterations.append(step)
                if not step.recommendations or index == self.config.max_iterations:
                    break
                changes, step.invalid, step.unmodelled = check_advice(
                    self.spec, step.settings, step.recommendations
                )
                if step.invalid or not changes:
                    break  # the engine would not start / nothing the simulator can apply
                step.applied, step.rejected = _apply(client, self.spec.name, changes)
                if not step.applied:
                    break
                self.changed_at = (self.last_frame, datetime.fromtimestamp(self.fleet.now(), UTC))
                # The operator who applied a change records it in the targets file's settings.
                targets = [
                    t.model_copy(update={"config": t.config | step.applied}) for t in targets
                ]
        return result


def run_closed_loop(server: GeneratedServer, config: EvaluationConfig) -> LoopResult:
    return _Loop(server, config).run()


def _state(client: httpx.Client, name: str) -> dict[str, Any]:
    response = client.get(f"/control/servers/{name}")
    response.raise_for_status()
    return response.json()["state"] or {}


def _goodput(before: dict[str, Any], after: dict[str, Any]) -> float:
    elapsed = (after.get("clock") or 0) - (before.get("clock") or 0)
    if elapsed <= 0:
        return 0.0
    return float(after["finished_within_slo"] - before["finished_within_slo"]) / elapsed
