"""The check that guards publication blocks it: a server whose exporter reports -1 for every figure
it does not know fails `snapshot_values_valid` (its values are refused, or stored negative: either
way the batch holds an impossible row), and no report or recommendation is written from that
batch; the run fails and its events say which check and which target."""

import re
from pathlib import Path

from dagster import AssetCheckSeverity, DagsterEventType, DagsterInstance, materialize
from sqlalchemy import func, select

from perf_pipelines.dagster_defs.snapshots import snapshot_values_valid, targets_reachable
from perf_pipelines.storage.db import create_db_engine
from perf_pipelines.storage.schema import bottleneck_reports as reports_table
from perf_pipelines.storage.schema import metric_snapshots as snapshots_table
from perf_pipelines.storage.schema import tuning_recommendations as recommendations_table
from tests.collection.test_collector import VLLM_BODY
from tests.support.cycle import CYCLE, cycle_resources
from tests.support.http_servers import Route, serve

# The same server, its exporter answering -1 ("unknown") for every figure.
UNKNOWN_BODY = re.sub(rb"} [0-9.]+\n", b"} -1\n", VLLM_BODY)


def test_impossible_snapshots_block_reports_and_recommendations(
    tmp_path: Path, database_url: str
) -> None:
    assert UNKNOWN_BODY != VLLM_BODY
    routes = {"/good": Route(body=VLLM_BODY), "/unknown": Route(body=UNKNOWN_BODY)}
    with serve(routes) as server, DagsterInstance.ephemeral() as instance:
        targets = tmp_path / "targets.yaml"
        targets.write_text(
            "targets:\n"
            f"  - {{name: vllm-good, url: '{server.base_url}/good', engine: vllm}}\n"
            f"  - {{name: vllm-unknown, url: '{server.base_url}/unknown', engine: vllm}}\n"
        )
        result = materialize(
            [*CYCLE, targets_reachable, snapshot_values_valid],
            resources=cycle_resources(database_url, targets, samples=2, interval_s=0.1),
            instance=instance,
            raise_on_error=False,
        )
        run_log = instance.all_logs(result.run_id)

    assert not result.success
    materialized = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    assert materialized == {"metric_snapshots"}, materialized

    # The run says why: the check failed, naming the target, and its step failed as blocking.
    checks = {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}
    valid = checks["snapshot_values_valid"]
    assert not valid.passed and valid.severity == AssetCheckSeverity.ERROR
    assert "vllm-unknown" in (valid.description or "") and "vllm-good" not in (
        valid.description or ""
    )
    failures = [str(e.event_specific_data.error) for e in result.get_step_failure_events()]
    assert any("snapshot_values_valid" in f and "block" in f.lower() for f in failures), failures
    started = {e.step_key for e in result.all_events if e.event_type == DagsterEventType.STEP_START}
    assert not {"bottleneck_reports", "tuning_recommendations"} & started, started
    held_back = [entry.user_message for entry in run_log if entry.step_key == "bottleneck_reports"]
    assert any("snapshot_values_valid" in message for message in held_back), held_back

    # Nothing published from the batch; the batch itself is kept, for a person to look at.
    engine = create_db_engine(database_url)
    with engine.connect() as connection:
        count = {
            table.name: connection.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (snapshots_table, reports_table, recommendations_table)
        }
    engine.dispose()
    assert count == {"metric_snapshots": 4, "bottleneck_reports": 0, "tuning_recommendations": 0}


def test_only_the_check_that_guards_publication_blocks() -> None:
    """A down target is a warning and a `target_down` report, never a reason to hold back advice
    for the other targets; Dagster would not block on a WARN check anyway."""
    (valid,) = snapshot_values_valid.check_specs
    (reachable,) = targets_reachable.check_specs
    assert valid.blocking and not reachable.blocking
