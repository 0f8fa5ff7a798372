"""Real in-process materializations of the whole cycle against a simulated fleet on loopback.

metric_snapshots → bottleneck_reports → tuning_recommendations, with their asset checks, on
SQLite and PostgreSQL. Detection needs MIN_SPAN_S of wall-clock history (timestamps are the
collector's), so a first scrape-only run lays down that history — as the previous cycle does in
production, where the analysis window spans several cycles — and the cycles after it are short.
A condition counts only when held DETECTION_MIN_SUSTAINED_S (30 s by default, one default cycle
of 8 samples 5 s apart); these cycles lower it to a few seconds so as not to wait half a minute.
"""

from pathlib import Path
from typing import Any

import yaml
from dagster import AssetCheckSeverity, ExecuteInProcessResult, materialize
from sqlalchemy import Engine, select, text

from perf_lab.simulator.fleet import Fleet
from perf_lab.simulator.http import run_fleet_in_thread
from perf_lab.simulator.scenarios import kv_pressure, targets_for
from perf_pipelines.analysis.detection import MIN_SPAN_S
from perf_pipelines.dagster_defs.snapshots import metric_snapshots
from perf_pipelines.storage.db import create_db_engine
from perf_pipelines.storage.schema import bottleneck_reports as reports_table
from perf_pipelines.storage.schema import tuning_recommendations as recommendations_table
from tests.support.cycle import CYCLE, cycle_resources

SERVER = "vllm-llama70b-kv"  # Llama-3.1-70B on 4×H100 at gpu_memory_utilization 0.56


def _checks(result: ExecuteInProcessResult) -> dict[str, Any]:
    return {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}


def _metadata(result: ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    (materialization,) = result.asset_materializations_for_node(asset)
    return {key: value.value for key, value in materialization.metadata.items()}


def _recommendations(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return connection.execute(select(recommendations_table)).all()


def _open(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return connection.execute(text("SELECT * FROM open_recommendations")).all()


def test_kv_pressure_cycle_reports_recommends_and_does_not_duplicate(
    tmp_path: Path, database_url: str
) -> None:
    specs = kv_pressure()
    # Two simulated minutes on the virtual clock fill the KV cache; then 4 simulated seconds
    # per wall second, so the short scrape window sees several preemptions.
    fleet = Fleet(specs, virtual=True, speed=4.0, seed=7)
    fleet.advance(120)
    fleet.switch_to_real_time()
    with run_fleet_in_thread(fleet) as base_url:
        targets = tmp_path / "targets.yaml"
        targets.write_text(yaml.safe_dump(targets_for(specs, base_url)))
        history = materialize(
            [metric_snapshots],
            resources=cycle_resources(
                database_url, targets, samples=3, interval_s=MIN_SPAN_S / 2 + 0.5
            ),
        )
        assert history.success
        quick = cycle_resources(
            database_url, targets, samples=2, interval_s=0.2, min_sustained_s=MIN_SPAN_S / 2
        )
        first = materialize(CYCLE, resources=quick)
        engine = create_db_engine(database_url)
        after_first = _recommendations(engine)
        second = materialize(CYCLE, resources=quick)  # the next scheduled cycle, same inputs
    assert first.success and second.success

    # Bottlenecks of the first cycle: the KV cache is the limit, with evidence.
    with engine.connect() as connection:
        reports = connection.execute(
            select(reports_table).where(reports_table.c.run_id == first.run_id)
        ).all()
    kinds = {r.kind: r for r in reports if r.target == SERVER}
    assert {"kv_cache_pressure", "preemption"} & set(kinds)
    kv = kinds.get("kv_cache_pressure") or kinds["preemption"]
    assert kv.severity == "critical" and kv.evidence
    report_metadata = _metadata(first, "bottleneck_reports")
    assert report_metadata["critical"] >= 1 and kv.kind in report_metadata["top_bottlenecks"]

    # The advice: an open --gpu-memory-utilization raise from the configured 0.56.
    (memory,) = [r for r in after_first if r.parameter == "gpu_memory_utilization"]
    assert memory.status == "open" and memory.run_id == first.run_id
    assert (memory.target, memory.engine, memory.engine_flag) == (
        SERVER,
        "vllm",
        "--gpu-memory-utilization",
    )
    assert memory.current_value == "0.56" and 0.56 < float(memory.recommended_value) <= 0.95
    assert "GiB" in memory.expected_effect  # 4×H100 and a known model: quantified
    assert memory.report_id in {
        r.id for r in reports if r.kind in ("kv_cache_pressure", "preemption")
    }
    assert {(r.target, r.parameter) for r in _open(engine)} >= {(SERVER, "gpu_memory_utilization")}
    table_md = _metadata(first, "tuning_recommendations")["recommendations_table"]
    assert "--gpu-memory-utilization" in table_md and SERVER in table_md
    assert f"| 0.56 | {memory.recommended_value} |" in table_md

    checks = _checks(first)
    assert not checks["no_critical_bottlenecks"].passed
    assert checks["no_critical_bottlenecks"].severity == AssetCheckSeverity.WARN
    assert checks["recommendations_consistent"].passed
    assert checks["recommendations_consistent"].severity == AssetCheckSeverity.ERROR

    # The second cycle gives each piece of advice again: the same advice refreshes its row, advice
    # whose value moved supersedes the old row. Either way one open row per knob, none added twice.
    after_second = {r.id: r for r in _recommendations(engine)}
    added = [r for r in after_second.values() if r.id not in {f.id for f in after_first}]
    assert len(after_second) == len(after_first) + len(added)
    for old in after_first:
        knob = (old.target, old.parameter)
        (replacement,) = [r for r in added if (r.target, r.parameter) == knob] or [None]
        if replacement is None:
            assert after_second[old.id].status == "open"
            assert after_second[old.id].run_id == second.run_id  # refreshed, not re-inserted
        else:
            assert after_second[old.id].status == "superseded" and replacement.status == "open"
    open_now = [(r.target, r.parameter) for r in _open(engine)]
    assert sorted(open_now) == sorted((r.target, r.parameter) for r in after_first)
    second_metadata = _metadata(second, "tuning_recommendations")
    assert (second_metadata["new"], second_metadata["superseded"]) == (len(added), len(added))
    assert second_metadata["new"] + second_metadata["refreshed"] == len(after_first)
    assert _checks(second)["recommendations_consistent"].passed
    engine.dispose()
