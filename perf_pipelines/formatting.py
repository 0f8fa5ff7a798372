"""Text for people: markdown tables for Dagster metadata, values with a dash for "not measured"."""

from __future__ import annotations

from collections.abc import Sequence

from perf_pipelines.logs import redact_and_clip


def _cell(value: object) -> str:
    # A pipe or newline inside a cell would break the table layout in the UI.
    return redact_and_clip(str(value).replace("|", "\\|").replace("\n", " "), 200)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    if not rows:
        return "_(none)_"
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_cell(value) for value in row) + " |" for row in rows),
    ]
    return "\n".join(lines)


def format_value(value: float | None, digits: int = 2) -> str:
    """A measured value for people: fixed digits, and a dash where nothing was measured."""
    return "–" if value is None else f"{value:.{digits}f}"
