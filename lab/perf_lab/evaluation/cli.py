"""`perf-pipelines evaluate`: the closed-loop evaluation against the oracle."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from perf_lab.evaluation.harness import EvaluationConfig
from perf_lab.evaluation.scoring import DEFAULT_SCENARIOS, evaluate, to_markdown


@click.command("evaluate")
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    type=click.Choice(DEFAULT_SCENARIOS),
    help="Scenario to run (repeatable); default: all of them.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report here (e.g. docs/evaluation.md) as well as to stdout.",
)
@click.option("--iterations", default=3, show_default=True, help="Applied steps at most.")
@click.option("--workers", default=2, show_default=True, help="Processes for the oracle's grid.")
@click.option("--seed", default=7, show_default=True)
@click.option(
    "--check",
    is_flag=True,
    help="Exit 1 when a goal (detection F1, share of the oracle, no regression) is missed.",
)
def evaluate_command(
    scenarios: tuple[str, ...],
    output: Path | None,
    iterations: int,
    workers: int,
    seed: int,
    check: bool,
) -> None:
    """Detect, recommend and apply on each simulator scenario; compare with a grid-search oracle."""
    config = EvaluationConfig(max_iterations=iterations, workers=workers, seed=seed)
    started = time.monotonic()
    evaluation = evaluate(scenarios or DEFAULT_SCENARIOS, config)
    command = "perf-pipelines evaluate" + "".join(f" --scenario {s}" for s in scenarios)
    report = to_markdown(evaluation, command)
    click.echo(report)
    if output is not None:
        output.write_text(report, encoding="utf-8")
    click.echo(
        f"evaluated {len(evaluation.scores)} servers in {time.monotonic() - started:.0f} s",
        err=True,
    )
    if check and not all(evaluation.goals_met.values()):
        sys.exit(1)
