"""What every command shares: settings and targets loaded, or one line and an exit code."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

if TYPE_CHECKING:
    from perf_pipelines.settings import Settings
    from perf_pipelines.targets import Target


class ExitCode(IntEnum):
    """How a command ended; the README's "Exit codes" table lists the same."""

    OK = 0
    ERROR = 1  # anything below does not name; the message does
    USAGE = 2  # a wrong command line: click's own code, as most Unix tools use it
    CONFIGURATION = 3  # a setting or the targets file
    UNREACHABLE = 4  # the database or Prometheus could not be reached or refused
    ALL_TARGETS_DOWN = 5  # nothing could be scraped


def fail(message: str, code: ExitCode) -> NoReturn:
    """One line on stderr, secrets removed, and the exit code."""
    from perf_pipelines.logs import REDACT

    click.echo(f"error: {REDACT(message)}", err=True)
    sys.exit(code)


def settings_or_exit() -> Settings:
    """Load settings and set up JSON logging, or exit with the configuration problem."""
    # Imported here, not at the top: `--help` of every command loads this module and must not
    # pay for pydantic-settings.
    from perf_pipelines.logs import configure_logging
    from perf_pipelines.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        fail(str(exc), ExitCode.CONFIGURATION)
    configure_logging(
        settings.log_level, settings.agent_id, settings.agent_type, secrets=[settings.token]
    )
    return settings


def targets_or_exit(path: Path | None, settings: Settings) -> tuple[Path, list[Target]]:
    """The targets file given, else PERF_TARGETS, and its targets; or exit with its problem.

    A file without targets is refused: a scrape of nothing that exits 0 hides a wrong path or
    an unfinished file."""
    from perf_pipelines.targets import TargetsError, load_targets

    chosen = path or settings.perf_targets
    if chosen is None:
        raise click.UsageError("give a targets file or set PERF_TARGETS")
    try:
        targets = load_targets(chosen)
    except TargetsError as exc:
        fail(str(exc), ExitCode.CONFIGURATION)
    if not targets:
        fail(
            f"{chosen} lists no targets: add at least one under 'targets:' "
            "(name, url, engine; see the README's targets file section)",
            ExitCode.CONFIGURATION,
        )
    return chosen, targets


@contextmanager
def database_or_exit(url: str) -> Iterator[None]:
    """Turns a database that cannot be reached into one line naming it (password hidden) and
    how to fix it, instead of a driver's traceback."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import InterfaceError, OperationalError

    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        reason = str(exc.orig or exc).strip().splitlines()
        fail(
            f"database {shown} unreachable: {reason[0] if reason else type(exc).__name__} "
            "(start it, or set DATABASE_URL)",
            ExitCode.UNREACHABLE,
        )
