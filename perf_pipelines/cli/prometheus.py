"""`perf-pipelines prometheus discover|backfill`: use an existing Prometheus (PROMETHEUS_URL)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import click

from perf_pipelines.cli.common import ExitCode, fail

if TYPE_CHECKING:
    from perf_pipelines.settings import Settings
    from perf_pipelines.sources.promapi import PrometheusConfig


def _config(settings: Settings) -> PrometheusConfig:
    from perf_pipelines.sources.promapi import PrometheusConfig, label_list

    if not settings.prometheus_url:
        fail("set PROMETHEUS_URL to the Prometheus server's base URL", ExitCode.CONFIGURATION)
    return PrometheusConfig(
        url=settings.prometheus_url,
        token=settings.prometheus_token.get_secret_value() if settings.prometheus_token else None,
        username=settings.prometheus_username,
        password=(
            settings.prometheus_password.get_secret_value()
            if settings.prometheus_password
            else None
        ),
        timeout_s=settings.prometheus_query_timeout_s,
        cycle_timeout_s=settings.prometheus_cycle_timeout_s,
        dedup_labels=label_list(settings.prometheus_dedup_labels),
        max_bytes=settings.scrape_max_bytes,
        concurrency=min(settings.scrape_concurrency, 8),
    )


def _settings() -> Settings:
    from perf_pipelines.cli.common import settings_or_exit
    from perf_pipelines.logs import REDACT

    settings = settings_or_exit()
    for secret in (settings.prometheus_token, settings.prometheus_password):
        if secret is not None:
            REDACT.add(secret.get_secret_value())
    return settings


@click.group("prometheus")
def prometheus() -> None:
    """Read engine metrics from an existing Prometheus (PROMETHEUS_URL)."""


@prometheus.command("discover")
@click.option(
    "--write-targets",
    type=click.Path(path_type=Path),
    help="Write a targets file (validated) for the servers found.",
)
@click.option(
    "--lookback-minutes",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Only servers with series this recent.",
)
def discover_command(write_targets: Path | None, lookback_minutes: float) -> None:
    """List the inference servers Prometheus scrapes, with their engine and model."""
    from perf_pipelines.sources.discovery import as_targets, discover
    from perf_pipelines.sources.promapi import PrometheusError
    from perf_pipelines.targets import TargetsError, dump_targets, load_targets

    config = _config(_settings())
    try:
        servers = asyncio.run(discover(config, lookback_minutes * 60))
    except PrometheusError as exc:
        fail(str(exc), ExitCode.UNREACHABLE)
    if not servers:
        click.echo("no vLLM, SGLang, TGI or llama.cpp series found in Prometheus")
    for server in servers:
        state = {True: "up", False: "DOWN", None: "?"}[server.up]
        model = ",".join(server.models) or "-"
        click.echo(
            f"{server.name:<32} {server.engine.value:<8} {state:<4} job={server.job} "
            f"instance={server.instance} model={model} url={server.url}"
        )
    if write_targets is not None:
        try:
            targets = as_targets(servers)
            write_targets.parent.mkdir(parents=True, exist_ok=True)
            write_targets.write_text(dump_targets(targets), encoding="utf-8")
            load_targets(write_targets)  # what the agent will read must be valid
        except (TargetsError, OSError) as exc:
            fail(str(exc), ExitCode.ERROR)
        click.echo(f"targets file: {write_targets} ({len(targets)} target(s))")


@prometheus.command("backfill")
@click.argument("path", type=click.Path(path_type=Path), required=False)
@click.option(
    "--minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="History to load (default PROMETHEUS_BACKFILL_MINUTES).",
)
@click.option(
    "--step",
    "step_s",
    type=click.FloatRange(min=1),
    default=None,
    help="Seconds between rows (default PROMETHEUS_BACKFILL_STEP_S).",
)
def backfill_command(path: Path | None, minutes: float | None, step_s: float | None) -> None:
    """Load history from Prometheus into metric_snapshots for every target (default
    PERF_TARGETS), up to each target's oldest stored row. Re-running adds nothing."""
    from perf_pipelines.cli.common import database_or_exit, targets_or_exit
    from perf_pipelines.sources.cycle import backfill
    from perf_pipelines.storage.db import create_db_engine, ensure_schema

    settings = _settings()
    config = _config(settings)
    _, targets = targets_or_exit(path, settings)
    with database_or_exit(settings.resolved_database_url):
        engine = create_db_engine(settings.resolved_database_url)
        ensure_schema(engine)
        outcome = backfill(
            engine,
            config,
            targets,
            minutes=minutes if minutes is not None else settings.prometheus_backfill_minutes,
            step_s=step_s if step_s is not None else settings.prometheus_backfill_step_s,
        )
        engine.dispose()
    for target in targets:
        error = outcome.errors.get(target.name)
        notes = "; ".join(outcome.warnings.get(target.name, []))
        status = f"error: {error}" if error else f"{outcome.rows_by_target[target.name]} rows read"
        click.echo(f"{target.name:<32} {status}" + (f" ({notes})" if notes else ""))
    click.echo(f"{outcome.inserted} new rows stored")
    if outcome.errors and len(outcome.errors) == len(targets):
        fail(f"no history read for any of the {len(targets)} target(s)", ExitCode.UNREACHABLE)
