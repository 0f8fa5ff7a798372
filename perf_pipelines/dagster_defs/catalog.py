"""What the Dagster catalog says about each table the agent writes and an orchestrator reads:
its columns (from `storage/schema.py`, each with its description), owner, freshness, row count and
the code that writes it; and `orchestrator_events`, a table written outside any run, as an
external asset so that lineage shows where the orchestrator link reads and writes.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from dagster import (
    AssetKey,
    AssetsDefinition,
    AssetSpec,
    BetaWarning,
    CodeReferencesMetadataValue,
    FreshnessPolicy,
    LocalFileCodeReference,
    MetadataValue,
    TableColumn,
    TableColumnConstraints,
    TableSchema,
    asset,
)
from sqlalchemy import Connection, Table, func, select
from sqlalchemy.engine import make_url

from perf_pipelines.dagster_defs.sensors import heartbeat_tick
from perf_pipelines.health import max_gap_seconds, stale_after_seconds
from perf_pipelines.storage.schema import column_description
from perf_pipelines.storage.schema import orchestrator_events as orchestrator_events_table

OWNERS = ["team:perf-pipelines"]
ROW_COUNT = "dagster/row_count"  # Dagster's key: the catalog shows it as the table's size
_MIN_WARN_WINDOW = timedelta(minutes=1)  # Dagster refuses a shorter freshness window
_POSTGRESQL = make_url("postgresql://").get_dialect()()  # only to name column types


def table_schema(table: Table) -> TableSchema:
    """The table's columns as the catalog shows them, read from the SQLAlchemy table itself so
    the two cannot drift; a column without a description is a programming error."""
    columns = []
    for column in table.columns:
        description = column_description(column)
        if not description:
            raise ValueError(f"{table.name}.{column.name} has no description in schema.py")
        columns.append(
            TableColumn(
                name=column.name,
                # PostgreSQL's names (the production database); SQLite stores the same values.
                type=column.type.compile(dialect=_POSTGRESQL).lower(),
                description=description,
                constraints=TableColumnConstraints(
                    nullable=bool(column.nullable), unique=bool(column.primary_key)
                ),
            )
        )
    return TableSchema(columns=columns)


def table_asset(
    table: Table, **asset_arguments: Any
) -> Callable[[Callable[..., Any]], AssetsDefinition]:
    """`@asset(**asset_arguments)` for an asset that is `table`: its owners, its catalog entry
    and a link to the decorated function, the code that writes it."""

    def decorate(fn: Callable[..., Any]) -> AssetsDefinition:
        definition: AssetsDefinition = asset(
            owners=OWNERS,
            metadata={**table_metadata(table), **code_reference(fn)},
            **asset_arguments,
        )(fn)
        return definition

    return decorate


def table_metadata(table: Table) -> dict[str, Any]:
    """Definition metadata of an asset that is `table`: its name and column schema."""
    return {
        "dagster/table_name": table.name,
        "dagster/column_schema": MetadataValue.table_schema(table_schema(table)),
    }


def code_reference(fn: Callable[..., Any]) -> dict[str, Any]:
    """A link from the catalog to the function that writes the table.

    `LocalFileCodeReference` and `CodeReferencesMetadataValue` are the only way Dagster 1.13
    shows "View source" on an asset, and both are still marked beta (the suite turns
    BetaWarning into an error). The BetaWarning of these two constructors alone is silenced
    here, on purpose; `with_source_code_references` would raise the same warning for the whole
    list and `link_code_references_to_git` needs a public repository URL this project has not.
    """
    path = inspect.getsourcefile(fn)
    _, line = inspect.getsourcelines(fn)
    assert path is not None, f"{fn.__qualname__} has no source file"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        reference = CodeReferencesMetadataValue(
            code_references=[LocalFileCodeReference(file_path=path, line_number=line)]
        )
    return {"dagster/code_references": reference}


def row_count(connection: Connection, table: Table) -> dict[str, MetadataValue]:
    """Materialization metadata: how many rows `table` holds now (all batches, not this one's)."""
    count = connection.execute(select(func.count()).select_from(table)).scalar_one()
    return {ROW_COUNT: MetadataValue.int(int(count))}


def schedule_freshness(cron: str) -> FreshnessPolicy:
    """Fresh while the job on `cron` keeps running: a warning once one run is missing (its
    longest gap plus the health check's grace), a failure when `agent_health` also calls the
    job stale (two longest gaps plus the grace, `stale_after_seconds`). Same rule as the health
    check, so the catalog and the sidecar never disagree about a stale cycle."""
    fail = timedelta(seconds=stale_after_seconds(cron))
    gap = max_gap_seconds(cron)
    if gap is None:  # a cron that cannot be read: the health check's fallback, no warning stage
        return FreshnessPolicy.time_window(fail_window=fail)
    warn = max(fail - timedelta(seconds=gap), _MIN_WARN_WINDOW)
    return FreshnessPolicy.time_window(fail_window=fail, warn_window=warn)


def on_schedule(assets: Sequence[AssetsDefinition], cron: str) -> list[AssetsDefinition]:
    """`assets` with the freshness policy of the schedule that materializes them: the cron is a
    setting, known only when the code location builds its Definitions."""
    policy = schedule_freshness(cron)
    return [
        asset.map_asset_specs(lambda spec: spec.replace_attributes(freshness_policy=policy))
        for asset in assets
    ]


def orchestrator_events_spec(reads: Sequence[AssetKey]) -> AssetSpec:
    """`orchestrator_events`: written by the `orchestrator_heartbeat` sensor, outside any run, so
    Dagster does not materialize it. Declared so that lineage shows what the heartbeat tells the
    orchestrator (a summary of `reads`) and who reads the link's state back (`agent_health`)."""
    return AssetSpec(
        key="orchestrator_events",
        deps=list(reads),
        group_name="health",
        kinds={"python", "sql"},
        owners=OWNERS,
        description=(
            "One row per registration or heartbeat attempt of the `orchestrator_heartbeat` "
            "sensor (kind, success, HTTP status, latency, error). The heartbeat carries a "
            "summary of the cycle's tables to the orchestrator; `agent_health` and the "
            "sidecar read the latest attempts. Written by the sensor, not by a run."
        ),
        metadata={
            **table_metadata(orchestrator_events_table),
            **code_reference(heartbeat_tick),
        },
    )
