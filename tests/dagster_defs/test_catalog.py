"""The catalog entry of every table asset: columns with descriptions read from the SQL tables, the
owner, a freshness policy from the schedule's cron, kinds, a link to the code that writes it; its
size (`dagster/row_count`) after real cycles; and lineage through `orchestrator_events`."""

import ast
from datetime import timedelta
from pathlib import Path
from typing import Any

from dagster import (
    AssetKey,
    CodeReferencesMetadataValue,
    DagsterInstance,
    LocalFileCodeReference,
    TableSchema,
    materialize,
)
from sqlalchemy import Table, func, select

from perf_pipelines.dagster_defs.catalog import OWNERS, ROW_COUNT
from perf_pipelines.dagster_defs.health import HealthResource, agent_health
from perf_pipelines.dagster_defs.outcomes import recommendation_outcomes
from perf_pipelines.dagster_defs.resources import AgentResource
from perf_pipelines.definitions import build_definitions
from perf_pipelines.health import max_gap_seconds, stale_after_seconds
from perf_pipelines.settings import load_settings
from perf_pipelines.storage import schema
from perf_pipelines.storage.db import create_db_engine
from tests.collection.test_collector import VLLM_BODY
from tests.support.cycle import CYCLE, cycle_resources
from tests.support.http_servers import Route, serve

CYCLE_CRON, HEALTH_CRON = "*/10 * * * *", "*/3 * * * *"  # not the defaults: matched, not fixed
TABLES: dict[str, Table] = {
    "metric_snapshots": schema.metric_snapshots,
    "bottleneck_reports": schema.bottleneck_reports,
    "tuning_recommendations": schema.tuning_recommendations,
    "recommendation_outcomes": schema.tuning_recommendations,  # its outcome columns
    "agent_health": schema.agent_health,
    "orchestrator_events": schema.orchestrator_events,
}
CYCLE_ASSETS = ["metric_snapshots", "bottleneck_reports", "tuning_recommendations"]


def _definitions() -> Any:
    settings = load_settings(optimization_cycle_cron=CYCLE_CRON, health_check_cron=HEALTH_CRON)
    return build_definitions(settings)


def test_every_column_of_every_table_is_described() -> None:
    missing = [
        f"{table.name}.{column.name}"
        for table in schema.metadata.tables.values()
        for column in table.columns
        if not (schema.column_description(column) or "").strip()
    ]
    assert not missing, f"columns without a description in storage/schema.py: {missing}"


def test_every_table_asset_has_its_catalog_entry() -> None:
    graph = _definitions().resolve_asset_graph()
    for name, table in TABLES.items():
        node = graph.get(AssetKey(name))
        metadata = node.metadata
        columns: TableSchema = metadata["dagster/column_schema"].schema
        assert [c.name for c in columns.columns] == [c.name for c in table.columns], name
        assert all(c.description for c in columns.columns), name
        assert metadata["dagster/table_name"] == table.name
        assert list(node.owners) == OWNERS, name
        assert {"python", "sql"} <= set(node.kinds), name

        # The code reference points at the function that writes the table.
        references = metadata["dagster/code_references"]
        assert isinstance(references, CodeReferencesMetadataValue), name
        (reference,) = references.code_references
        assert isinstance(reference, LocalFileCodeReference)
        assert reference.line_number is not None
        source = Path(reference.file_path).read_text(encoding="utf-8")
        # The reference is the function's first line: its decorator's, or its `def`.
        (function,) = [
            n
            for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.FunctionDef)
            and min([n.lineno, *(d.lineno for d in n.decorator_list)]) == reference.line_number
        ]
        writer = "heartbeat_tick" if name == "orchestrator_events" else name
        assert function.name == writer, (name, reference)


def test_freshness_follows_each_schedule() -> None:
    graph = _definitions().resolve_asset_graph()
    for name, cron in [*((a, CYCLE_CRON) for a in CYCLE_ASSETS), ("agent_health", HEALTH_CRON)]:
        policy = graph.get(AssetKey(name)).freshness_policy
        assert policy is not None, name
        gap = max_gap_seconds(cron)
        assert gap is not None
        fail = timedelta(seconds=stale_after_seconds(cron))
        assert policy.fail_window.to_timedelta() == fail, name  # type: ignore[attr-defined]
        warn = policy.warn_window.to_timedelta()  # type: ignore[attr-defined]
        assert warn == fail - timedelta(seconds=gap), name
    # Written by the heartbeat sensor outside any run: Dagster has no materialization to judge.
    assert graph.get(AssetKey("orchestrator_events")).freshness_policy is None


def test_lineage_shows_where_the_orchestrator_link_reads_and_writes() -> None:
    graph = _definitions().resolve_asset_graph()
    events = graph.get(AssetKey("orchestrator_events"))
    assert not events.is_materializable  # an external asset: the sensor writes it
    assert {k.to_user_string() for k in events.parent_keys} == {
        *CYCLE_ASSETS,
        "recommendation_outcomes",
    }
    assert AssetKey("orchestrator_events") in graph.get(AssetKey("agent_health")).parent_keys


def _count(database_url: str, table: Table) -> int:
    engine = create_db_engine(database_url)
    with engine.connect() as connection:
        count = connection.execute(select(func.count()).select_from(table)).scalar_one()
    engine.dispose()
    return int(count)


def test_row_count_is_the_tables_size_after_each_cycle(tmp_path: Path, database_url: str) -> None:
    with serve({"/metrics": Route(body=VLLM_BODY)}) as server:
        targets = tmp_path / "targets.yaml"
        targets.write_text(
            f"targets:\n  - {{name: vllm-a, url: '{server.base_url}/metrics', engine: vllm}}\n"
        )
        resources = cycle_resources(database_url, targets, samples=2, interval_s=0.1)
        health_resources = resources | {"agent": AgentResource(), "health": HealthResource()}
        with DagsterInstance.ephemeral() as instance:
            for cycle in (1, 2):  # the count is the table's, every batch, not the run's rows
                result = materialize(
                    [*CYCLE, recommendation_outcomes], resources=resources, instance=instance
                )
                health = materialize([agent_health], resources=health_resources, instance=instance)
                assert result.success and health.success
                for event in [
                    *result.get_asset_materialization_events(),
                    *health.get_asset_materialization_events(),
                ]:
                    name = event.asset_key.to_user_string()
                    metadata = event.materialization.metadata
                    assert metadata[ROW_COUNT].value == _count(database_url, TABLES[name]), (
                        cycle,
                        name,
                    )
    assert _count(database_url, schema.metric_snapshots) == 4  # two cycles of two samples
    assert _count(database_url, schema.agent_health) == 2
