"""An asset logs one event whatever the fleet's size: a per-target line costs an event-log row."""

from __future__ import annotations

from typing import Any, cast

from dagster import AssetExecutionContext

from perf_pipelines.dagster_defs.cycle_asset import LOG_DETAIL_LINES, log_summary


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def info(self, message: str) -> None:
        self.events.append(("info", message))

    def warning(self, message: str) -> None:
        self.events.append(("warning", message))


class _Context:
    def __init__(self) -> None:
        self.log = _Log()


def _logged(details: list[str], warn: bool) -> list[tuple[str, str]]:
    context = _Context()
    log_summary(cast(AssetExecutionContext, cast(Any, context)), "headline", details, warn=warn)
    return context.log.events


def test_five_thousand_down_targets_are_one_event_with_the_first_few() -> None:
    details = [f"target t{i} is down: timeout" for i in range(5000)]
    ((level, message),) = _logged(details, warn=True)
    lines = message.splitlines()
    assert level == "warning" and lines[0] == "headline"
    assert lines[1 : LOG_DETAIL_LINES + 1] == details[:LOG_DETAIL_LINES]
    assert lines[-1] == f"… and {5000 - LOG_DETAIL_LINES} more (see the materialization)"


def test_a_quiet_run_is_one_info_line() -> None:
    assert _logged([], warn=False) == [("info", "headline")]
    assert _logged(["a", "b"], warn=False) == [("info", "headline\na\nb")]
