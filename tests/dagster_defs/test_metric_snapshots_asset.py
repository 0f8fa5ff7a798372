"""Real in-process materializations of `metric_snapshots` against loopback servers."""

from pathlib import Path

from dagster import AssetCheckSeverity, materialize
from sqlalchemy import select

from perf_pipelines.dagster_defs.resources import DatabaseResource, ScraperResource, TargetsResource
from perf_pipelines.dagster_defs.snapshots import (
    metric_snapshots,
    snapshot_values_valid,
    targets_reachable,
)
from perf_pipelines.storage.db import create_db_engine
from perf_pipelines.storage.schema import metric_snapshots as table
from tests.collection.test_collector import VLLM_BODY
from tests.support.http_servers import Route, closed_port, serve


def _targets_file(tmp_path: Path, base_url: str) -> Path:
    path = tmp_path / "targets.yaml"
    path.write_text(
        "targets:\n"
        f"  - {{name: vllm-a, url: '{base_url}/metrics', engine: vllm}}\n"
        f"  - {{name: html-b, url: '{base_url}/html', engine: auto}}\n"
        f"  - {{name: gone-c, url: 'http://127.0.0.1:{closed_port()}/metrics', model: m}}\n"
    )
    return path


def _run(tmp_path: Path, database_url: str, samples: int = 2):
    routes = {"/metrics": Route(body=VLLM_BODY), "/html": Route(body=b"<html>oops</html>")}
    with serve(routes) as server:
        return materialize(
            [metric_snapshots, targets_reachable, snapshot_values_valid],
            resources={
                "database": DatabaseResource(url=database_url),
                "targets": TargetsResource(path=str(_targets_file(tmp_path, server.base_url))),
                "scraper": ScraperResource(timeout_s=1.0, samples=samples, interval_s=0.1),
            },
        )


def test_materialization_stores_rows_and_reports(tmp_path: Path, database_url: str) -> None:
    result = _run(tmp_path, database_url)
    assert result.success
    (materialization,) = result.asset_materializations_for_node("metric_snapshots")
    metadata = materialization.metadata
    assert metadata["targets_total"].value == 3
    assert metadata["targets_up"].value == 1
    assert metadata["targets_down"].value == 2
    assert metadata["rows_inserted"].value == 6
    assert "vllm-a" in metadata["preview"].value

    checks = {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}
    assert not checks["targets_reachable"].passed
    assert checks["targets_reachable"].severity == AssetCheckSeverity.WARN
    assert checks["snapshot_values_valid"].passed

    engine = create_db_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(table).order_by(table.c.target, table.c.sample_index)
        ).all()
    assert len(rows) == 6
    by_target = {(r.target, r.sample_index): r for r in rows}
    good = by_target[("vllm-a", 1)]
    assert good.up and good.engine == "vllm" and good.requests_running == 7
    assert good.model == "meta-llama/Llama-3.1-8B-Instruct"
    html = by_target[("html-b", 0)]
    assert not html.up and "invalid exposition" in html.error
    gone = by_target[("gone-c", 0)]
    assert not gone.up and gone.model == "m" and gone.error.startswith("connection failed")
    assert {r.run_id for r in rows} == {result.run_id}


def test_a_second_run_appends_its_own_rows(tmp_path: Path, sqlite_url: str) -> None:
    first = _run(tmp_path, sqlite_url, samples=1)
    second = _run(tmp_path, sqlite_url, samples=1)
    assert first.success and second.success
    engine = create_db_engine(sqlite_url)
    with engine.connect() as connection:
        run_ids = connection.execute(select(table.c.run_id)).scalars().all()
    assert sorted(set(run_ids)) == sorted({first.run_id, second.run_id})
    assert len(run_ids) == 6


def test_missing_targets_file_fails_with_a_clear_message(tmp_path: Path, sqlite_url: str) -> None:
    result = materialize(
        [metric_snapshots],
        resources={
            "database": DatabaseResource(url=sqlite_url),
            "targets": TargetsResource(path=str(tmp_path / "absent.yaml")),
            "scraper": ScraperResource(),
        },
        raise_on_error=False,
    )
    assert not result.success
    failure = result.get_step_failure_events()[0]
    assert "cannot read targets file" in str(failure.event_specific_data.error)
