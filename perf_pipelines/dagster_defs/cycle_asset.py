"""How the optimization cycle's assets are declared, so its three modules declare them alike,
and how each step finds the batch of rows it rests on.

A batch is the rows one materialization wrote: their `run_id` column holds the id of the run
that wrote them, and the materialization names it in its metadata (`batch_id`). A step reads
the batch of its upstream's latest materialization, not the rows of its own run: a subset
selection (recommendations alone) or a re-execution from failure (a new run id) then reads the
same rows a full cycle would. Checks judge the batch of the materialization they check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    Failure,
    MetadataValue,
    TextMetadataValue,
)
from sqlalchemy import Table

from perf_pipelines.dagster_defs.catalog import table_asset

LOG_DETAIL_LINES = 10  # lines of detail in an asset's one summary log event; the rest in tables
BATCH_ID = "batch_id"  # materialization metadata: the run id the written rows carry
# How many of an asset's newest materializations are searched for this run's own: more than
# cycles ever overlap (a schedule tick and a manual run or two).
_RECENT_MATERIALIZATIONS = 20


def cycle_asset(
    description: str, table: Table, deps: Sequence[AssetsDefinition] = ()
) -> Callable[[Callable[..., Any]], AssetsDefinition]:
    """`@asset` for a step of the cycle: one `performance` group in the UI, the kinds Python
    and SQL (each step computes in Python and writes a table), the team that owns it, and the
    catalog entry of `table` with a link to the function that writes it."""

    return table_asset(
        table,
        group_name="performance",
        kinds={"python", "sql"},
        deps=list(deps),
        description=description,
    )


def batch_metadata(context: AssetExecutionContext) -> dict[str, MetadataValue]:
    """Materialization metadata naming the batch this step wrote: its rows carry this run id."""
    return {BATCH_ID: MetadataValue.text(context.run.run_id)}


def batch_of(
    context: AssetExecutionContext | AssetCheckExecutionContext, upstream: AssetKey
) -> str:
    """The batch `upstream`'s materialization wrote: this run's own when this run materialized
    it (so two overlapping cycles each read their own), else the newest one in the instance."""
    records = context.instance.fetch_materializations(
        upstream, limit=_RECENT_MATERIALIZATIONS
    ).records
    if not records:
        raise Failure(
            description=(
                f"{upstream.to_user_string()} has never been materialized on this Dagster "
                "instance: there are no rows to rest on; materialize it first"
            )
        )
    own = [record for record in records if record.run_id == context.run.run_id]
    record = (own or records)[0]
    materialization = record.asset_materialization
    value = materialization.metadata.get(BATCH_ID) if materialization else None
    # A materialization from before batch ids were recorded wrote its rows under its run id.
    return value.value if isinstance(value, TextMetadataValue) else record.run_id


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
