"""Two `optimization_cycle` runs at once against the same PostgreSQL (a schedule tick overlapping
a manual run, or two daemons by mistake): unique keys keep `metric_snapshots` and
`bottleneck_reports` free of duplicates, and no (target, parameter) ends up with two open
recommendations — which READ COMMITTED alone did not guarantee (see the first test).
"""

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from dagster import ExecuteInProcessResult, materialize
from sqlalchemy import Engine, func, select, text

from perf_lab.simulator.fleet import Fleet
from perf_lab.simulator.http import run_fleet_in_thread
from perf_lab.simulator.scenarios import mixed, targets_for
from perf_pipelines.collection.collector import ScrapeLimits, collect
from perf_pipelines.collection.rounds import rows_from_rounds
from perf_pipelines.findings import Recommendation
from perf_pipelines.storage.db import create_db_engine, ensure_schema
from perf_pipelines.storage.reports import upsert_recommendations
from perf_pipelines.storage.schema import bottleneck_reports as reports_table
from perf_pipelines.storage.schema import tuning_recommendations as recommendations_table
from perf_pipelines.storage.snapshots import insert_snapshots
from perf_pipelines.targets import load_targets
from tests.reliability.support import duplicate_snapshot_keys, rows_by_run
from tests.support.cycle import CYCLE, cycle_resources


def _advice(value: float) -> Recommendation:
    return Recommendation(
        target="vllm-a", engine="vllm", model="m", capability="kv_cache_optimization",
        parameter="gpu_memory_utilization", engine_flag="--gpu-memory-utilization",
        current_value=0.8, recommended_value=value, rationale="KV cache full",
        evidence={"kv": 0.97}, expected_effect=None, confidence=0.8, severity="critical",
        report_kind="kv_cache_pressure", direction="raise",
    )  # fmt: skip


def _open_groups(engine: Engine) -> list[Any]:
    t = recommendations_table
    with engine.connect() as connection:
        return connection.execute(
            select(t.c.target, t.c.parameter, func.count())
            .where(t.c.status == "open")
            .group_by(t.c.target, t.c.parameter)
        ).all()


def _someone_waits_for_a_lock(engine: Engine) -> bool:
    if engine.dialect.name != "postgresql":
        time.sleep(0.5)  # SQLite: B waits in its busy handler; nothing to ask
        return True
    with engine.connect() as connection:
        return bool(
            connection.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar()
        )


def test_two_cycles_giving_different_advice_at_once_leave_one_open(database_url: str) -> None:
    """Deterministic interleaving: cycle A has written its advice but not committed when cycle B
    writes different advice for the same knob and commits. Without serialisation B cannot see
    A's row to supersede it, and both stay open (PostgreSQL, before the advisory lock in
    storage/reports.py)."""
    engine = create_db_engine(database_url)
    ensure_schema(engine)
    now = datetime.now(UTC)
    first, second = _advice(0.9), _advice(0.92)
    assert first.id != second.id
    a = engine.connect()
    transaction = a.begin()
    upsert_recommendations(a, "run-a", [first], now, {})
    done = threading.Event()

    def cycle_b() -> None:
        with engine.begin() as b:
            upsert_recommendations(b, "run-b", [second], now + timedelta(seconds=1), {})
        done.set()

    runner = threading.Thread(target=cycle_b)
    runner.start()
    # B either waits for A (serialised) or gets through on its own (the bug); wait for either.
    deadline = time.monotonic() + 10
    while not done.is_set() and time.monotonic() < deadline:
        if _someone_waits_for_a_lock(engine):
            break
        time.sleep(0.02)
    transaction.commit()
    a.close()
    runner.join(timeout=30)
    assert not runner.is_alive()
    with engine.connect() as connection:
        rows = {
            r.id: r.status
            for r in connection.execute(
                select(recommendations_table.c.id, recommendations_table.c.status)
            )
        }
    engine.dispose()
    # One open per knob: B ran after A had committed and superseded it.
    assert rows == {first.id: "superseded", second.id: "open"}


def _seed_history(engine: Engine, fleet: Fleet, targets_path: Path) -> None:
    """The previous cycles: three rounds of the simulated fleet 5 s apart on its virtual clock,
    stamped 15, 10 and 5 s ago (detection needs ≥ 8 s of history in the window)."""
    targets = load_targets(targets_path)
    rounds = []
    for _ in range(3):
        fleet.advance(5)
        rounds += asyncio.run(collect(targets, ScrapeLimits(timeout_s=5)))
    now = datetime.now(UTC)
    for age, results in zip((15, 10, 5), rounds, strict=True):
        for result in results:
            assert result.up, result.error
            result.collected_at = now - timedelta(seconds=age)
    with engine.begin() as connection:
        insert_snapshots(connection, rows_from_rounds("history", rounds))


def test_two_optimization_cycles_at_once_keep_the_tables_correct(
    tmp_path: Path, postgres_url: str
) -> None:
    specs = mixed()
    fleet = Fleet(specs, virtual=True, speed=4.0, seed=11)
    fleet.advance(120)  # KV caches fill, queues build
    engine = create_db_engine(postgres_url)
    ensure_schema(engine)
    with run_fleet_in_thread(fleet) as base_url:
        targets = tmp_path / "targets.yaml"
        targets.write_text(yaml.safe_dump(targets_for(specs, base_url)))
        _seed_history(engine, fleet, targets)
        fleet.switch_to_real_time()
        resources = cycle_resources(
            postgres_url,
            targets,
            samples=2,
            interval_s=0.3,
            timeout_s=3.0,
            window_minutes=5,
            min_sustained_s=1.0,
        )
        results: list[ExecuteInProcessResult] = []
        errors: list[BaseException] = []
        start = threading.Barrier(2, timeout=30)

        def one_cycle() -> None:
            try:
                start.wait()
                results.append(materialize(CYCLE, resources=resources, raise_on_error=False))
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=one_cycle) for _ in range(2)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        elapsed = time.monotonic() - started
    assert not errors and len(results) == 2, errors
    assert all(r.success for r in results)
    print(f"\ntwo concurrent cycles over {len(specs)} servers: {elapsed:.1f} s")

    run_ids = {r.run_id for r in results}
    with engine.connect() as connection:
        counts = rows_by_run(connection)
        assert duplicate_snapshot_keys(connection) == []
        report_dupes = connection.execute(
            select(reports_table.c.run_id, reports_table.c.target, reports_table.c.kind)
            .group_by(
                reports_table.c.run_id,
                reports_table.c.target,
                reports_table.c.model,
                reports_table.c.kind,
            )
            .having(func.count() > 1)
        ).all()
        reports = connection.execute(
            select(reports_table.c.run_id, func.count()).group_by(reports_table.c.run_id)
        ).all()
        recommendations = connection.execute(select(recommendations_table)).all()
        view = connection.execute(text("SELECT target, parameter FROM open_recommendations")).all()
    engine.dispose()
    # Each run stored its own samples: servers × 2, next to the history, nothing twice.
    assert counts == {"history": 3 * len(specs), **{run: 2 * len(specs) for run in run_ids}}
    assert report_dupes == []
    assert {run for run, n in reports if n > 0} == run_ids  # both runs analysed
    assert recommendations, "the mixed fleet needs advice"
    # No (target, parameter) has two open rows; the view agrees with the table.
    open_rows = [(r.target, r.parameter) for r in recommendations if r.status == "open"]
    assert len(open_rows) == len(set(open_rows))
    assert sorted(open_rows) == sorted((r.target, r.parameter) for r in view)
    assert len({r.id for r in recommendations}) == len(recommendations)
    for result in results:
        checks = {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}
        assert checks["recommendations_consistent"].passed, checks[
            "recommendations_consistent"
        ].metadata
