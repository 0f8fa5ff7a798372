"""Each step of the cycle rests on its upstream's latest materialization, not on its own run id:
snapshots, then reports alone, then recommendations alone; and a cycle whose second step fails,
re-executed from failure in a new run; both write the same rows as one full cycle.

A frozen simulated fleet (virtual clock, never advanced) answers every scrape alike, so three
databases each collect the same figures; only wall-clock durations differ (the timestamps, and
`held_s`/`observed_s` in the evidence, durations quoted in sentences), and those are left out of
the comparison. The failure is a real one: once the scrape is stored, the `bottleneck_reports`
table is taken away (renamed, as a restore or a manual migration would), so the second step
fails on the database; it is put back before the re-execution. The re-execution goes through
`execute_job` with `ReexecutionOptions.from_failure` on a persistent instance, as the UI's
"Re-execute from failure" does.
"""

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import (
    DagsterEventType,
    DagsterInstance,
    Definitions,
    EnvVar,
    HookContext,
    JobDefinition,
    ReexecutionOptions,
    define_asset_job,
    execute_job,
    in_process_executor,
    instance_for_test,
    materialize,
    reconstructable,
    success_hook,
)
from sqlalchemy import select, text

from perf_lab.simulator.fleet import Fleet
from perf_lab.simulator.http import run_fleet_in_thread
from perf_lab.simulator.scenarios import kv_pressure, targets_for
from perf_pipelines.analysis.detection import MIN_SPAN_S
from perf_pipelines.dagster_defs.analysis import (
    bottleneck_reports,
    no_critical_bottlenecks,
    recommendations_consistent,
    tuning_recommendations,
)
from perf_pipelines.dagster_defs.jobs import optimization_cycle
from perf_pipelines.dagster_defs.outcomes import no_regressions, recommendation_outcomes
from perf_pipelines.dagster_defs.resources import (
    AnalysisResource,
    DatabaseResource,
    ScraperResource,
    TargetsResource,
)
from perf_pipelines.dagster_defs.snapshots import (
    metric_snapshots,
    snapshot_values_valid,
    targets_reachable,
)
from perf_pipelines.storage.db import create_db_engine
from perf_pipelines.storage.schema import bottleneck_reports as reports_table
from perf_pipelines.storage.schema import tuning_recommendations as recommendations_table

DATABASE_ENV = "PERF_TEST_BATCH_DATABASE_URL"
TARGETS_ENV = "PERF_TEST_BATCH_TARGETS"
# A file "<table> <op>": while it exists, the hook takes <table> away once <op> has succeeded.
TAKE_ENV = "PERF_TEST_BATCH_TAKE_TABLE"
AWAY = "_under_restore"
# One run lays down MIN_SPAN_S of history (three samples) and holds each condition long enough.
SAMPLES, INTERVAL_S, SUSTAINED_S = 3, MIN_SPAN_S / 2 + 0.5, MIN_SPAN_S / 2
WALL_CLOCK_EVIDENCE = {"held_s", "observed_s"}  # durations measured on the collector's clock
SECONDS = re.compile(r"\b\d+(?:\.\d+)? s\b")  # those durations quoted in a sentence ("for 14 s")
VOLATILE = {"id", "run_id", "created_at", "last_seen_at", "status_changed_at", "report_id"}
ASSETS = [metric_snapshots, bottleneck_reports, tuning_recommendations, recommendation_outcomes]
CHECKS = [
    targets_reachable,
    snapshot_values_valid,
    no_critical_bottlenecks,
    recommendations_consistent,
    no_regressions,
]


def _resources(database_url: str | EnvVar, targets: str | EnvVar) -> dict[str, object]:
    return {
        "database": DatabaseResource(url=database_url),
        "targets": TargetsResource(path=targets),
        "scraper": ScraperResource(timeout_s=2.0, samples=SAMPLES, interval_s=INTERVAL_S),
        "analysis": AnalysisResource(window_minutes=15, min_sustained_s=SUSTAINED_S),
    }


def _rename(database_url: str, old: str, new: str) -> None:
    engine = create_db_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))
    engine.dispose()


@success_hook
def _table_away_after_a_step(context: HookContext) -> None:
    marker = Path(os.environ[TAKE_ENV])
    if marker.exists():
        table, after = marker.read_text().split()
        if context.op.name == after:
            _rename(os.environ[DATABASE_ENV], table, table + AWAY)


def cycle_job() -> JobDefinition:
    """The optimization cycle's selection, executor and assets, with the hook above; loaded again
    by name for the re-execution. Dagster keeps the job it loaded once per process, so the
    database and the targets file are EnvVars, read when each run sets up its resources."""
    job = define_asset_job(
        "optimization_cycle",
        selection=optimization_cycle.selection,
        executor_def=in_process_executor,
        hooks={_table_away_after_a_step},
    )
    defs = Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        jobs=[job],
        resources=_resources(EnvVar(DATABASE_ENV), EnvVar(TARGETS_ENV)),
    )
    return defs.resolve_job_def("optimization_cycle")


@pytest.fixture(scope="module")
def fleet_targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The targets file's text for a KV-starved server, frozen after two simulated minutes."""
    specs = kv_pressure()
    fleet = Fleet(specs, virtual=True, speed=4.0, seed=7)
    fleet.advance(120)
    with run_fleet_in_thread(fleet) as base_url:
        yield yaml.safe_dump(targets_for(specs, base_url))


def _evidence(evidence: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in evidence.items() if k not in WALL_CLOCK_EVIDENCE}


def _sentence(text: str) -> str:
    return SECONDS.sub("… s", text)


def _reports(database_url: str, run_id: str) -> list[tuple[Any, ...]]:
    """The reports one run wrote, without what wall-clock time makes differ."""
    engine = create_db_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(reports_table).where(reports_table.c.run_id == run_id)
        ).all()
    engine.dispose()
    return sorted(
        (
            r.target,
            r.engine,
            r.model,
            r.kind,
            r.severity,
            r.score,
            _sentence(r.summary),
            repr(_evidence(r.evidence)),
        )
        for r in rows
    )


def _recommendations(database_url: str) -> list[dict[str, Any]]:
    engine = create_db_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(select(recommendations_table)).all()
    engine.dispose()
    content = []
    for row in rows:
        record = {k: v for k, v in row._mapping.items() if k not in VOLATILE}
        record["evidence"] = _evidence(record["evidence"])
        record["rationale"] = _sentence(record["rationale"])
        content.append(record | {"run_id": row.run_id})
    return sorted(content, key=lambda r: (r["target"], r["parameter"], r["recommended_value"]))


def _without_run(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "run_id"} for r in rows]


def _metadata(result: Any, asset: str) -> dict[str, Any]:
    (materialization,) = [
        m for m in result.get_asset_materialization_events() if m.asset_key.path == [asset]
    ]
    return {k: v.value for k, v in materialization.materialization.metadata.items()}


@pytest.fixture(scope="module")
def full_cycle(
    tmp_path_factory: pytest.TempPathFactory, fleet_targets: str
) -> Iterator[tuple[list[tuple[Any, ...]], list[dict[str, Any]]]]:
    """The reference: one full optimization cycle, its reports and recommendations."""
    directory = tmp_path_factory.mktemp("full")
    database_url = f"sqlite:///{directory / 'perf.db'}"
    targets = directory / "targets.yaml"
    targets.write_text(fleet_targets)
    with pytest.MonkeyPatch.context() as env, instance_for_test() as instance:
        env.setenv(DATABASE_ENV, database_url)
        env.setenv(TARGETS_ENV, str(targets))
        env.setenv(TAKE_ENV, str(directory / "never"))
        with execute_job(reconstructable(cycle_job), instance) as result:
            assert result.success
            run_id = result.run_id
    reports, recommendations = _reports(database_url, run_id), _recommendations(database_url)
    # Something to compare: the KV-starved server gets its --gpu-memory-utilization advice.
    assert any(r[3] == "kv_cache_pressure" for r in reports), reports
    assert any(r["parameter"] == "gpu_memory_utilization" for r in recommendations)
    assert {r["run_id"] for r in recommendations} == {run_id}
    yield reports, recommendations


def test_each_step_alone_writes_what_a_full_cycle_writes(
    tmp_path: Path,
    fleet_targets: str,
    full_cycle: tuple[list[tuple[Any, ...]], list[dict[str, Any]]],
) -> None:
    database_url = f"sqlite:///{tmp_path / 'perf.db'}"
    targets = tmp_path / "targets.yaml"
    targets.write_text(fleet_targets)
    resources = _resources(database_url, str(targets))
    with DagsterInstance.ephemeral() as instance:
        snapshots = materialize(
            [metric_snapshots, targets_reachable, snapshot_values_valid],
            resources=resources,
            instance=instance,
        )
        reports = materialize(
            [bottleneck_reports, no_critical_bottlenecks], resources=resources, instance=instance
        )
        recommendations = materialize(
            [tuning_recommendations, recommendations_consistent],
            resources=resources,
            instance=instance,
        )
    assert snapshots.success and reports.success and recommendations.success

    # Each rests on the batch its upstream's latest materialization wrote.
    assert _metadata(reports, "bottleneck_reports")["snapshots_batch_id"] == snapshots.run_id
    assert _metadata(recommendations, "tuning_recommendations")["reports_batch_id"] == (
        reports.run_id
    )
    expected_reports, expected_recommendations = full_cycle
    assert _reports(database_url, reports.run_id) == expected_reports
    written = _recommendations(database_url)
    assert {r["run_id"] for r in written} == {recommendations.run_id}
    assert _without_run(written) == _without_run(expected_recommendations)
    assert _metadata(recommendations, "tuning_recommendations")["recommendations"] == len(written)


@pytest.mark.parametrize(
    ("table", "failing_step", "after"),
    [
        ("bottleneck_reports", "bottleneck_reports", "metric_snapshots"),
        ("tuning_recommendations", "tuning_recommendations", "bottleneck_reports"),
    ],
    ids=["second-step", "last-step"],
)
def test_a_cycle_re_executed_from_failure_writes_what_a_full_cycle_writes(
    tmp_path: Path,
    fleet_targets: str,
    full_cycle: tuple[list[tuple[Any, ...]], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    table: str,
    failing_step: str,
    after: str,
) -> None:
    database_url = f"sqlite:///{tmp_path / 'perf.db'}"
    targets = tmp_path / "targets.yaml"
    targets.write_text(fleet_targets)
    marker = tmp_path / "take-a-table-away"
    marker.write_text(f"{table} {after}")
    monkeypatch.setenv(DATABASE_ENV, database_url)
    monkeypatch.setenv(TARGETS_ENV, str(targets))
    monkeypatch.setenv(TAKE_ENV, str(marker))
    with instance_for_test() as instance:
        with execute_job(reconstructable(cycle_job), instance) as failed:
            assert not failed.success
            failed_run = failed.run_id
            (failure,) = failed.get_step_failure_events()
        assert failure.step_key == failing_step
        assert table in str(failure.event_specific_data.error), failure.event_specific_data

        # The table back, the operator re-executes from failure: a new run id.
        marker.unlink()
        _rename(database_url, table + AWAY, table)
        options = ReexecutionOptions.from_failure(failed_run, instance)
        with execute_job(
            reconstructable(cycle_job), instance, reexecution_options=options
        ) as again:
            assert again.success
            rerun = again.run_id
            started = {
                e.step_key for e in again.all_events if e.event_type == DagsterEventType.STEP_START
            }
            recommendation_metadata = _metadata(again, "tuning_recommendations")
    assert rerun != failed_run
    assert "metric_snapshots" not in started and failing_step in started, started
    # The reports of the step that ran: in the re-execution, or in the failed run before.
    reports_run = rerun if failing_step == "bottleneck_reports" else failed_run
    assert recommendation_metadata["reports_batch_id"] == reports_run

    expected_reports, expected_recommendations = full_cycle
    assert _reports(database_url, reports_run) == expected_reports
    written = _recommendations(database_url)
    assert {r["run_id"] for r in written} == {rerun}
    assert _without_run(written) == _without_run(expected_recommendations)
