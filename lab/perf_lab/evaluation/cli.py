"""`perf-pipelines evaluate`: the closed loop on generated fleets against the oracle and peers."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import click

DEFAULT_SERVERS = 40
QUICK_SERVERS = 4


def fresh_seed() -> int:
    return int.from_bytes(os.urandom(4), "big") % 1_000_000_000


@click.command("evaluate")
@click.option(
    "--servers",
    type=int,
    help=f"Servers per set (default {DEFAULT_SERVERS}; {QUICK_SERVERS} with --quick).",
)
@click.option(
    "--report-seed",
    type=int,
    help="Seed of the report set (default: fresh from os.urandom, printed in the report).",
)
@click.option(
    "--tuning-seed",
    type=int,
    help="Seed of the tuning set (default: the fixed seed the rules may be tuned on).",
)
@click.option("--quick", is_flag=True, help="A handful of servers, short windows, coarse grid.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report here (e.g. docs/evaluation.md) as well as to stdout.",
)
@click.option("--iterations", default=3, show_default=True, help="Applied steps at most.")
@click.option("--workers", default=2, show_default=True, help="Processes (one server each).")
@click.option(
    "--check",
    is_flag=True,
    help="Exit 1 when a goal on the report set (per engine or overall) is missed.",
)
def evaluate_command(
    servers: int | None,
    report_seed: int | None,
    tuning_seed: int | None,
    quick: bool,
    output: Path | None,
    iterations: int,
    workers: int,
    check: bool,
) -> None:
    """Generate a tuning and a report fleet, run the agent's closed loop on every server and
    compare it with engine defaults, Optuna TPE and a grid-search oracle."""
    # Imported here: `perf-pipelines --help` lists this command and must not load the closed
    # loop (pandas, SQLAlchemy, Optuna) to do so.
    from perf_lab.evaluation.harness import QUICK, EvaluationConfig
    from perf_lab.evaluation.report import to_markdown
    from perf_lab.evaluation.scoring import TUNING_SEED, evaluate_sets, summaries

    if tuning_seed is None:
        tuning_seed = TUNING_SEED
    config = replace(
        QUICK if quick else EvaluationConfig(), max_iterations=iterations, workers=workers
    )
    count = servers or (QUICK_SERVERS if quick else DEFAULT_SERVERS)
    seed = fresh_seed() if report_seed is None else report_seed
    click.echo(f"tuning seed {tuning_seed}, report seed {seed}, {count} servers each", err=True)
    started = time.monotonic()
    sets = evaluate_sets(
        [("tuning", tuning_seed, count), ("report", seed, count)],
        config,
        progress=lambda line: click.echo(line, err=True),
    )
    seconds = time.monotonic() - started
    command = "perf-pipelines evaluate" + (" --quick" if quick else "")
    command += f" --servers {count}" if servers else ""
    report = to_markdown(sets, config, command, seconds)
    click.echo(report)
    if output is not None:
        output.write_text(report, encoding="utf-8")
    click.echo(f"evaluated {2 * count} servers in {seconds:.0f} s", err=True)
    if check and not all(all(s.goals().values()) for s in summaries(sets[-1])):
        sys.exit(1)
