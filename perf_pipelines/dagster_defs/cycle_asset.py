"""How the optimization cycle's assets are declared, so its three modules declare them alike."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dagster import AssetExecutionContext, AssetsDefinition, asset

LOG_DETAIL_LINES = 10  # lines of detail in an asset's one summary log event; the rest in tables


def cycle_asset(
    description: str, deps: Sequence[AssetsDefinition] = ()
) -> Callable[[Callable[..., Any]], AssetsDefinition]:
    """`@asset` for a step of the cycle: one `performance` group in the UI, and the kinds Python
    and SQL, since each step computes in Python and writes a table."""
    return asset(
        group_name="performance",
        kinds={"python", "sql"},
        deps=list(deps),
        description=description,
    )


def log_summary(
    context: AssetExecutionContext, headline: str, details: Sequence[str], warn: bool = False
) -> None:
    """One log event per asset, whatever the fleet's size: a headline and the first few details
    (a per-target event costs a Dagster event-log row each; at 5,000 targets it was most of a
    cycle). The full lists are in the asset's metadata and tables."""
    if not details and not warn:
        context.log.info(headline)
        return
    shown = list(details[:LOG_DETAIL_LINES])
    if len(details) > len(shown):
        shown.append(f"… and {len(details) - len(shown)} more (see the materialization)")
    message = "\n".join([headline, *shown])
    (context.log.warning if warn else context.log.info)(message)
