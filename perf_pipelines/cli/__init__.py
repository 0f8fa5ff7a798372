"""The `perf-pipelines` command line.

Sub-commands are imported only when invoked, so that `perf-pipelines sidecar` does not pay for
the simulator's or Dagster's imports at start-up.
"""

from __future__ import annotations

import importlib
import logging
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path

import click

from perf_pipelines import __version__
from perf_pipelines.cli.common import (
    ExitCode,
    database_or_exit,
    fail,
    settings_or_exit,
    targets_or_exit,
)

# name -> "module:attribute" of a click command in this package
_LAZY_COMMANDS: dict[str, str] = {
    "prometheus": "perf_pipelines.cli.prometheus:prometheus",
    "sidecar": "perf_pipelines.cli.sidecar:sidecar",
}
# Other installed packages add commands here (the lab's `fleet` and `evaluate`): the product
# names no lab module, and without the lab installed those commands are simply absent.
PLUGIN_GROUP = "perf_pipelines.commands"


@cache
def _plugin_commands() -> dict[str, str]:
    """Read once per process: `--help` asks for every command, each would scan the metadata."""
    return {point.name: point.value for point in entry_points(group=PLUGIN_GROUP)}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY_COMMANDS, *_plugin_commands()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = _LAZY_COMMANDS.get(cmd_name) or _plugin_commands().get(cmd_name)
        if spec is None:
            return super().get_command(ctx, cmd_name)
        module_name, attribute = spec.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command

    def invoke(self, ctx: click.Context) -> object:
        """An error no command foresaw is still one line; LOG_LEVEL=DEBUG logs its traceback."""
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            logging.getLogger("perf_pipelines.cli").debug("unexpected error", exc_info=True)
            first = str(exc).strip().splitlines()
            fail(
                f"{type(exc).__name__}: {first[0] if first else 'no message'} "
                "(LOG_LEVEL=DEBUG logs the traceback)",
                ExitCode.ERROR,
            )


@click.group(cls=_LazyGroup)
@click.version_option(__version__, prog_name="perf-pipelines")
def main() -> None:
    """Performance agent for LLM inference fleets (vLLM, SGLang, TGI, llama.cpp)."""


@main.group()
def db() -> None:
    """Database schema: migrations with Alembic."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations (safe to run while the agent runs)."""
    _migrate("upgrade", revision)


@db.command("current")
def db_current() -> None:
    """Show the database's revision and the code's head revision."""
    from perf_pipelines.storage.db import HEAD_REVISION, create_db_engine, current_revision

    settings = settings_or_exit()
    with database_or_exit(settings.resolved_database_url):
        engine = create_db_engine(settings.resolved_database_url)
        click.echo(f"current: {current_revision(engine)}  head: {HEAD_REVISION}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION ('base' drops every table)."""
    _migrate("downgrade", revision)


def _migrate(direction: str, revision: str) -> None:
    from perf_pipelines.storage import db as storage_db

    settings = settings_or_exit()
    with database_or_exit(settings.resolved_database_url):
        engine = storage_db.create_db_engine(settings.resolved_database_url)
        move = storage_db.upgrade if direction == "upgrade" else storage_db.downgrade
        move(engine, revision)
        click.echo(f"database at revision {storage_db.current_revision(engine)}")


@main.command("validate-targets")
@click.argument("path", type=click.Path(path_type=Path), required=False)
def validate_targets(path: Path | None) -> None:
    """Check a targets file (default: PERF_TARGETS) without scraping anything."""
    chosen, targets = targets_or_exit(path, settings_or_exit())
    click.echo(f"{chosen}: {len(targets)} target(s) OK")


@main.command()
@click.argument("path", type=click.Path(path_type=Path), required=False)
def scrape(path: Path | None) -> None:
    """Scrape every target once and print what was read (nothing is stored)."""
    import asyncio

    from perf_pipelines.collection.collector import ScrapeLimits, collect
    from perf_pipelines.formatting import format_value

    settings = settings_or_exit()
    _, targets = targets_or_exit(path, settings)
    limits = ScrapeLimits(
        timeout_s=settings.scrape_timeout_s,
        concurrency=settings.scrape_concurrency,
        max_bytes=settings.scrape_max_bytes,
        max_series=settings.scrape_max_series,
        max_models=settings.scrape_max_models,
        max_label_bytes=settings.scrape_max_label_bytes,
    )
    (results,) = asyncio.run(collect(targets, limits))
    for result in results:
        if not result.up:
            click.echo(f"{result.target.name:<32} DOWN  {result.error}")
            continue
        for snap in result.snapshots:
            click.echo(
                f"{result.target.name:<32} {result.engine:<8} model={snap.model} "
                f"running={format_value(snap.requests_running, 0)} "
                f"waiting={format_value(snap.requests_waiting, 0)} "
                f"kv={format_value(snap.kv_cache_usage)} ({result.scrape_ms:.0f} ms)"
            )
    if not any(result.up for result in results):
        fail(f"all {len(results)} target(s) down (reasons above)", ExitCode.ALL_TARGETS_DOWN)
