"""The closed loop, run the way it runs in production but on a virtual clock: scrape the
simulated servers over HTTP with the real collector, detect, recommend, apply the advice through
the simulator's control API (a restart with new flags), let the server settle, and repeat.

Rows carry the simulated time of their scrape, so rates and quantiles come out as they would
over a real window of the same length.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pandas as pd
from perf_lab.evaluation.harness import EvaluationConfig, advance
from perf_lab.simulator.fleet import Fleet, ServerSpec
from perf_lab.simulator.http import run_fleet_in_thread
from perf_lab.simulator.scenarios import targets_for

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


@dataclass
class Iteration:
    """One pass of the loop for one server: what was seen in the window and what was applied."""

    settings: dict[str, Any]
    detected: list[str]
    recommendations: list[Recommendation]
    observed_goodput_rps: float  # measured in the loop's own window (one random draw)
    applied: dict[str, Any] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # setting -> why the server refused
    # The agent's own verdict (outcome tracking) on the step applied in the iteration before,
    # judged from this window against the one before the change.
    outcome_of_previous_step: str | None = None


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


def _apply(
    client: httpx.Client, spec: ServerSpec, recommendations: list[Recommendation]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Apply all advice for one server in one restart, as an operator would roll it out."""
    changes: dict[str, Any] = {}
    for rec in recommendations:
        for name in _PAIRED_SETTINGS.get(rec.parameter, (rec.parameter,)):
            changes[name] = rec.recommended_value
    if not changes:
        return {}, {}
    response = client.put(f"/control/servers/{spec.name}/settings", json=changes)
    if response.status_code == 200:
        return changes, {}
    reason = response.json().get("error", response.text)
    return {}, dict.fromkeys(changes, reason)


def run_closed_loop(specs: list[ServerSpec], config: EvaluationConfig) -> list[LoopResult]:
    """Run the loop for every server of a scenario at once (they share one fleet and clock)."""
    fleet = Fleet(
        [dataclasses.replace(s, settings=dict(s.settings)) for s in specs],
        virtual=True,
        tick=config.tick_s,
        seed=config.seed,
        start=datetime(2026, 1, 1, tzinfo=UTC).timestamp(),
    )
    samples = int(config.window_s // config.scrape_interval_s) + 1
    results = {spec.name: LoopResult(spec, []) for spec in specs}
    with run_fleet_in_thread(fleet) as base_url, httpx.Client(base_url=base_url) as client:
        targets = parse_targets(targets_for(specs, base_url))
        settled = set[str]()  # servers the agent had nothing more to say about
        changed_at: dict[str, tuple[pd.DataFrame, datetime]] = {}  # window before, when applied
        window, settle = timedelta(seconds=config.window_s), timedelta(seconds=config.warmup_s)
        for iteration in range(config.max_iterations + 1):
            advance(fleet, config.warmup_s)
            before = {name: _state(client, name) for name in results}
            rows = scrape_window(
                fleet, targets, samples, config.scrape_interval_s, f"it{iteration}"
            )
            after = {name: _state(client, name) for name in results}
            frame = snapshot_frame(rows)
            target_map = {t.name: t for t in targets}
            stats = window_stats(
                frame, target_map, frame["collected_at"].min(), frame["collected_at"].max()
            )
            detection = detect(stats, target_map)
            advice = recommend(stats, detection.reports, target_map)
            last = iteration == config.max_iterations
            applied: dict[str, dict[str, Any]] = {}
            for name, result in results.items():
                if name in settled:
                    continue
                mine = [r for r in advice if r.target == name]
                step = Iteration(
                    settings=dict(fleet.server(name).settings),
                    detected=sorted({r.kind for r in detection.reports if r.target == name}),
                    recommendations=mine,
                    observed_goodput_rps=_goodput(before[name], after[name]),
                )
                result.iterations.append(step)
                if name in changed_at:
                    earlier, applied_at = changed_at.pop(name)
                    step.outcome_of_previous_step = evaluate_outcome(
                        pd.concat([earlier, frame]),
                        target_map[name],
                        name,
                        None,
                        applied_at,
                        window,
                        settle,
                    ).outcome
                if not mine:
                    settled.add(name)
                elif not last:
                    step.applied, step.rejected = _apply(client, result.spec, mine)
                    applied[name] = step.applied
                    if step.applied:
                        changed_at[name] = (frame, datetime.fromtimestamp(fleet.now(), UTC))
            if settled == set(results):
                break
            # The operator who applied a change records it in the targets file's known settings.
            targets = [
                t.model_copy(update={"config": t.config | applied.get(t.name, {})}) for t in targets
            ]
    return list(results.values())


def _state(client: httpx.Client, name: str) -> dict[str, Any]:
    response = client.get(f"/control/servers/{name}")
    response.raise_for_status()
    return response.json()["state"] or {}


def _goodput(before: dict[str, Any], after: dict[str, Any]) -> float:
    elapsed = (after.get("clock") or 0) - (before.get("clock") or 0)
    if elapsed <= 0:
        return 0.0
    return (after["finished_within_slo"] - before["finished_within_slo"]) / elapsed
