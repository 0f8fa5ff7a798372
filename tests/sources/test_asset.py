"""In-process materializations of `metric_snapshots` with PROMETHEUS_URL set."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from dagster import materialize
from sqlalchemy import select

from perf_pipelines.dagster_defs.resources import DatabaseResource, ScraperResource, TargetsResource
from perf_pipelines.dagster_defs.snapshots import (
    metric_snapshots,
    snapshot_values_valid,
    targets_reachable,
)
from perf_pipelines.storage.db import create_db_engine
from perf_pipelines.storage.schema import metric_snapshots as table
from perf_pipelines.targets import Target, dump_targets
from tests.sources.conftest import PromFleet
from tests.support.http_servers import closed_port


def _materialize(
    targets: list[Target],
    tmp_path: Path,
    database_url: str,
    url: str,
    raise_on_error: bool = True,
    **scraper,
):
    path = tmp_path / "targets.yaml"
    path.write_text(dump_targets(targets))
    return materialize(
        [metric_snapshots, targets_reachable, snapshot_values_valid],
        resources={
            "database": DatabaseResource(url=database_url),
            "targets": TargetsResource(path=str(path)),
            "scraper": ScraperResource(
                samples=2,
                interval_s=1.0,
                prometheus_url=url,
                prometheus_timeout_s=2.0,
                prometheus_backfill_minutes=0.2,
                prometheus_backfill_step_s=2.0,
                **scraper,
            ),
        },
        raise_on_error=raise_on_error,
    )


def test_materialization_reads_prometheus_and_backfills_new_targets(
    prom_fleet: PromFleet, tmp_path: Path, database_url: str
) -> None:
    targets = [*prom_fleet.live_targets, prom_fleet.gone_target]
    prom_fleet.prometheus.wait_for_scrapes([t.name for t in targets], 12)
    result = _materialize(targets, tmp_path, database_url, prom_fleet.prometheus.url)
    assert result.success
    (materialization,) = result.asset_materializations_for_node("metric_snapshots")
    metadata = materialization.metadata
    assert metadata["source"].value == "prometheus"
    assert metadata["targets_total"].value == 5
    assert metadata["targets_up"].value == 4 and metadata["targets_down"].value == 1
    assert metadata["samples"].value == 2
    assert metadata["rows_backfilled"].value >= 4 * 4
    checks = {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}
    assert checks["snapshot_values_valid"].passed
    assert not checks["targets_reachable"].passed  # `gone` is down

    engine = create_db_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(select(table).order_by(table.c.collected_at)).all()
    run_rows, history = defaultdict(list), defaultdict(list)
    for row in rows:
        (run_rows if row.run_id == result.run_id else history)[row.target].append(row)
    for target in prom_fleet.live_targets:
        assert [r.sample_index for r in run_rows[target.name]] == [0, 1]
        assert all(r.up and r.engine == target.engine for r in run_rows[target.name])
        assert history[target.name], target.name
        assert all(r.run_id.startswith("backfill-") for r in history[target.name])
        # History ends where the run's own samples begin: no scrape is stored twice.
        newest_history = max(r.collected_at for r in history[target.name])
        assert newest_history < min(r.collected_at for r in run_rows[target.name])
    (gone,) = run_rows["gone"][-1:]
    assert not gone.up and gone.error.startswith("Prometheus could not scrape the target (up=0)")

    again = _materialize(targets, tmp_path, database_url, prom_fleet.prometheus.url)
    (second,) = again.asset_materializations_for_node("metric_snapshots")
    assert second.metadata["rows_backfilled"].value == 0  # not the first use any more


def test_history_is_loaded_once_prometheus_answers_after_a_failed_first_cycle(
    prom_fleet: PromFleet, tmp_path: Path, sqlite_url: str
) -> None:
    targets = prom_fleet.live_targets[:1]
    prom_fleet.prometheus.wait_for_scrapes([t.name for t in targets], 12)
    unreachable = f"http://127.0.0.1:{closed_port()}"
    failed = _materialize(targets, tmp_path, sqlite_url, unreachable, raise_on_error=False)
    assert not failed.success  # a source failure: nothing stored, the target not "seen" yet
    backfilled = []
    for _ in range(2):
        result = _materialize(targets, tmp_path, sqlite_url, prom_fleet.prometheus.url)
        (materialization,) = result.asset_materializations_for_node("metric_snapshots")
        backfilled.append(materialization.metadata["rows_backfilled"].value)
    assert backfilled[0] >= 4 and backfilled[1] == 0
