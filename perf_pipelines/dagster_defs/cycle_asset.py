"""How the optimization cycle's assets are declared, so its three modules declare them alike."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dagster import AssetsDefinition, asset


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
