"""What every command shares: settings and targets loaded, or one line and an exit code."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from perf_pipelines.settings import Settings
    from perf_pipelines.targets import Target


def settings_or_exit() -> Settings:
    """Load settings and set up JSON logging, or exit with the configuration problem."""
    # Imported here, not at the top: `--help` of every command loads this module and must not
    # pay for pydantic-settings.
    from perf_pipelines.logs import configure_logging
    from perf_pipelines.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    configure_logging(
        settings.log_level, settings.agent_id, settings.agent_type, secrets=[settings.token]
    )
    return settings


def targets_or_exit(path: Path | None, settings: Settings) -> tuple[Path, list[Target]]:
    """The targets file given, else PERF_TARGETS, and its targets; or exit with its problem."""
    from perf_pipelines.targets import TargetsError, load_targets

    chosen = path or settings.perf_targets
    if chosen is None:
        raise click.UsageError("give a targets file or set PERF_TARGETS")
    try:
        return chosen, load_targets(chosen)
    except TargetsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
