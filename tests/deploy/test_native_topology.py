"""The docker-compose deployment's topology, natively (no Docker): real PostgreSQL for the agent's
tables and for Dagster's storage (deploy/dagster.yaml), Redis, the simulated mixed fleet, the
user-code gRPC server, `dagster-webserver`, `dagster-daemon run` on deploy/workspace.yaml, the
sidecar and a test orchestrator, all as separate processes (tests/support/topology.py).

Schedules fire every minute. The tests wait for the daemon to run optimization_cycle on its
schedule, read what it wrote, then SIGKILL the daemon while a cycle scrapes, watch that cycle,
restart the daemon, and check that the next cycle succeeds and that no row or run was lost or
written twice.

What Dagster does with the run that was in progress when the daemon died (observed, and asserted
below): nothing, and nothing needs doing. With DefaultRunLauncher the daemon only asks the
user-code server to start a run; the run worker is a child process of that server and writes
its events straight to PostgreSQL, so it finishes with SUCCESS while the daemon is still dead.
Run monitoring has nothing to mark failed (and could not check a STARTED run's worker with this
launcher anyway). The schedule's ticks are stored with their run before the tick completes, so
the restarted daemon neither repeats the tick it had launched nor skips the next one.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import create_engine, text

from tests.support.orchestrator import Recorded
from tests.support.topology import BIN, CYCLE_SCHEDULE, ROOT, TOKEN, NativeTopology, Run

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

MIXED_FLEET = {
    "vllm-llama70b-kv",
    "vllm-llama8b-queue",
    "sglang-qwen7b-a100",
    "tgi-llama8b-a10g",
    "llamacpp-llama8b-l4",
    "sglang-qwen7b-idle",
}


def _sql(topology: NativeTopology, query: str, **params: object) -> list[tuple]:
    engine = create_engine(topology.agent_db_url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(query), params)]
    finally:
        engine.dispose()


def test_a_scheduled_cycle_writes_every_table_in_postgres(topology: NativeTopology) -> None:
    run = topology.first_successful_cycle()
    targets = yaml.safe_load(topology.targets_path.read_text())["targets"]
    assert {t["name"] for t in targets} == MIXED_FLEET

    snapshots = _sql(
        topology,
        "SELECT target, count(*), bool_and(up) FROM metric_snapshots WHERE run_id = :run "
        "GROUP BY target",
        run=run.run_id,
    )
    assert {target: (n, up) for target, n, up in snapshots} == {
        name: (topology.samples, True) for name in MIXED_FLEET
    }
    kinds = dict(
        _sql(
            topology,
            "SELECT target, string_agg(kind, ',' ORDER BY kind) FROM bottleneck_reports "
            "WHERE run_id = :run GROUP BY target",
            run=run.run_id,
        )
    )
    assert "kv_cache_pressure" in kinds.get("vllm-llama70b-kv", ""), kinds
    assert "queue_saturation" in kinds.get("vllm-llama8b-queue", ""), kinds
    open_flags = _sql(
        topology, "SELECT target, engine_flag FROM open_recommendations ORDER BY target"
    )
    assert ("vllm-llama70b-kv", "--gpu-memory-utilization") in open_flags, open_flags
    assert ("vllm-llama8b-queue", "--max-num-seqs") in open_flags, open_flags


def test_the_orchestrator_gets_a_registration_then_heartbeats_with_the_token(
    topology: NativeTopology,
) -> None:
    orchestrator = topology.orchestrator
    topology.services.wait_for(
        "a registration and two heartbeats at the test orchestrator",
        lambda: orchestrator.kinds().count("heartbeat") >= 2,
        60,
        must_run=("daemon", "user-code"),
    )
    requests = list(orchestrator.requests)
    assert requests[0].kind == "register"
    assert requests[0].body["agent_id"] == "perf-agent-e2e"
    assert requests[0].body["endpoint"] == topology.sidecar_url
    assert "kv_cache_optimization" in requests[0].body["capabilities"]
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in requests)
    heartbeat = next(r for r in requests if r.kind == "heartbeat")
    assert heartbeat.path == "/api/v1/agents/perf-agent-e2e/heartbeat"
    assert {"agent_id", "status", "timestamp", "summary"} <= set(heartbeat.body)
    assert "perf-agent-e2e" in orchestrator.agents


def test_the_sidecar_reports_database_and_cache_and_serves_metrics(
    topology: NativeTopology,
) -> None:
    topology.first_successful_cycle()  # /metrics reads the latest collection
    with httpx.Client(base_url=topology.sidecar_url, timeout=10) as client:
        detailed = client.get("/api/v1/health/detailed")
        assert detailed.status_code == 200, detailed.text
        components = detailed.json()["components"]
        assert components["database"]["status"] == "ok", components
        assert components["cache"]["status"] == "ok", components
        assert components["orchestrator"]["status"] != "not_configured", components
        metrics = client.get("/metrics")
    assert metrics.status_code == 200
    lines = metrics.text.splitlines()
    assert "perf_agent_database_up 1.0" in lines
    assert 'perf_agent_targets{state="up"} 6.0' in lines
    assert any(line.startswith("perf_agent_open_recommendations{") for line in lines)


def test_the_compose_health_checks_pass_against_the_native_services(
    topology: NativeTopology,
) -> None:
    """The health-check commands of docker-compose.yml, run as written (ports mapped to this
    topology's), succeed: they are real probes, not decoration."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    port = {
        "3000": topology.webserver_url.rsplit(":", 1)[1],
        "4000": str(topology.grpc_port),
        "8002": topology.sidecar_url.rsplit(":", 1)[1],
        "9400": topology.fleet_url.rsplit(":", 1)[1],
    }
    for service in ("user-code", "dagster-webserver", "dagster-daemon", "sidecar", "fleet"):
        kind, *command = compose[service]["healthcheck"]["test"]
        assert kind == "CMD", service
        args = []
        for arg in command:
            for inside, outside in port.items():
                arg = arg if arg != inside else outside
                arg = arg.replace(f"127.0.0.1:{inside}/", f"127.0.0.1:{outside}/")
            args.append(arg)
        executable = sys.executable if args[0] == "python" else str(BIN / args[0])
        done = subprocess.run(
            [executable, *args[1:]],
            env=topology.dagster_env,
            cwd=topology.root,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"{service}: {args}\n{done.stdout}{done.stderr}"


def _tick(run: Run) -> int:
    return int(run.tick_id or 0)


def _parent_pid(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def _worker_pid(topology: NativeTopology, run_id: str) -> int | None:
    for message in topology.api.run_messages(run_id):
        if message.startswith("Started process for run (pid: "):
            return int(message.split("pid: ")[1].rstrip(").").strip())
    return None


@pytest.mark.timeout(600)
def test_a_daemon_killed_mid_run_loses_and_duplicates_nothing(topology: NativeTopology) -> None:
    first = topology.first_successful_cycle()

    # The next scheduled cycle, caught while it scrapes (its first step, ~10 s).
    def running() -> Run | None:
        later = [r for r in topology.scheduled_cycles() if _tick(r) > _tick(first)]
        if any(r.finished for r in later):
            raise AssertionError(f"a later cycle finished before it was seen running: {later}")
        started = next((r for r in later if r.status == "STARTED"), None)
        if started is None:
            return None
        messages = topology.api.run_messages(started.run_id)
        return started if 'Started execution of step "metric_snapshots".' in messages else None

    interrupted = topology.services.wait_for(
        "the next scheduled optimization_cycle to be scraping",
        running,
        150,
        interval_s=0.3,
        must_run=("daemon", "webserver", "user-code"),
    )
    worker = _worker_pid(topology, interrupted.run_id)
    assert worker is not None, "no 'Started process for run (pid: …)' event"
    daemon = topology.services["daemon"]
    daemon_pid = daemon.pid
    daemon.kill()  # SIGKILL to its whole process group
    assert not daemon.running()
    killed_at = time.time()
    if (parent := _parent_pid(worker)) is not None:  # still running: whose child is it?
        # The run worker belongs to the user-code server, not to the daemon that launched it.
        assert parent == topology.services["user-code"].pid, (parent, daemon_pid)

    # Observed: the run finishes on its own, with the daemon still dead; nothing marks it failed
    # or canceled (module docstring).
    finished = topology.wait_for_run(
        f"the run in progress at the daemon's death ({interrupted.run_id}) to finish",
        lambda runs: next((r for r in runs if r.run_id == interrupted.run_id and r.finished), None),
        120,
    )
    assert not daemon.running()
    assert finished.status == "SUCCESS", finished
    print(
        f"daemon SIGKILLed {killed_at - (interrupted.start_time or killed_at):.1f} s into run "
        f"{interrupted.run_id}, during metric_snapshots (worker pid {worker}, parent {parent}, "
        f"user-code server {topology.services['user-code'].pid}); the run ended "
        f"{finished.status} {(finished.end_time or 0) - killed_at:.1f} s later, daemon still down"
    )
    topology.start_daemon()
    topology.wait_daemon_healthy()

    def next_success() -> Run | None:
        later = [r for r in topology.scheduled_cycles() if _tick(r) > _tick(interrupted)]
        return next((r for r in later if r.status == "SUCCESS"), None)

    after = topology.services.wait_for(
        "the restarted daemon's next scheduled optimization_cycle to succeed",
        next_success,
        150,
        interval_s=1.0,
        must_run=("daemon", "webserver", "user-code"),
    )
    assert after.start_time is not None and after.start_time > killed_at

    # Dagster: one run per tick, one tick per minute from the first to the last (none lost or
    # repeated across the restart), and no run that no tick asked for.
    ticks = sorted(
        (t for t in topology.api.schedule_ticks(CYCLE_SCHEDULE) if t.status != "SKIPPED"),
        key=lambda t: t.timestamp,
    )
    last = next(t for t in ticks if after.run_id in t.run_ids)
    ticks = [t for t in ticks if t.timestamp <= last.timestamp]  # a newer tick may be running
    assert all(t.status == "SUCCESS" and len(t.run_ids) == 1 for t in ticks), ticks
    gaps = [round(b.timestamp - a.timestamp) for a, b in itertools.pairwise(ticks)]
    assert gaps == [60] * (len(ticks) - 1), ticks
    runs = {
        r.run_id: r for r in topology.api.runs("optimization_cycle") if _tick(r) <= _tick(after)
    }
    assert all(r.schedule == CYCLE_SCHEDULE for r in runs.values())
    assert sorted(r for t in ticks for r in t.run_ids) == sorted(runs)
    assert {first.run_id, interrupted.run_id, after.run_id} <= set(runs)

    # The agent's tables: every successful cycle wrote all its samples once; nothing else did.
    succeeded = {r for r, run in runs.items() if run.status == "SUCCESS"}
    per_run = {
        run_id: (rows, targets)
        for run_id, rows, targets in _sql(
            topology,
            "SELECT run_id, count(*), count(DISTINCT target) FROM metric_snapshots GROUP BY run_id",
        )
    }
    assert set(per_run) <= set(runs) | _newer_runs(topology, after), per_run
    for run_id in succeeded:
        assert per_run.get(run_id) == (topology.samples * len(MIXED_FLEET), len(MIXED_FLEET))
    duplicates = _sql(
        topology,
        "SELECT run_id, target, sample_index, count(*) FROM metric_snapshots "
        "GROUP BY run_id, target, sample_index, coalesce(model, '') HAVING count(*) > 1",
    )
    assert duplicates == []
    reports = dict(_sql(topology, "SELECT run_id, count(*) FROM bottleneck_reports GROUP BY 1"))
    assert set(reports) <= set(runs) | _newer_runs(topology, after)
    assert all(reports.get(run_id, 0) > 0 for run_id in succeeded), reports
    assert (
        _sql(
            topology,
            "SELECT run_id, target, kind FROM bottleneck_reports "
            "GROUP BY run_id, target, coalesce(model, ''), kind HAVING count(*) > 1",
        )
        == []
    )
    open_twice = _sql(
        topology,
        "SELECT target, parameter, count(*) FROM tuning_recommendations WHERE status = 'open' "
        "GROUP BY target, coalesce(model, ''), parameter HAVING count(*) > 1",
    )
    assert open_twice == []
    open_now = Counter(t for (t,) in _sql(topology, "SELECT target FROM open_recommendations"))
    assert open_now["vllm-llama70b-kv"] >= 1 and open_now["vllm-llama8b-queue"] >= 1

    # Health rows come from health_check runs, one each, and the daemon's restart stopped
    # neither them nor the heartbeats (the sensor resumed from its cursor: no new registration).
    health_runs = {r.run_id for r in topology.api.runs("health_check")}
    rows = _sql(topology, "SELECT run_id, count(*) FROM agent_health GROUP BY run_id")
    assert rows and all(n == 1 and run_id in health_runs for run_id, n in rows), rows
    heartbeats_after = [
        r for r in topology.orchestrator.requests if r.kind == "heartbeat" and _after(r, killed_at)
    ]
    assert heartbeats_after, "no heartbeat after the daemon's restart"
    assert topology.orchestrator.kinds().count("register") == 1


def _newer_runs(topology: NativeTopology, after: Run) -> set[str]:
    """Cycles started since `after` (the schedule keeps firing while the test checks)."""
    return {r.run_id for r in topology.api.runs("optimization_cycle") if _tick(r) > _tick(after)}


def _after(request: Recorded, when: float) -> bool:
    stamp = request.body.get("timestamp") if isinstance(request.body, dict) else None
    return bool(stamp) and datetime.fromisoformat(stamp).timestamp() > when
