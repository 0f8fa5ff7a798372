"""Dagster's overhead: `optimization_cycle` over 10 targets, launched as the daemon launches it,
against a no-op job launched the same way.

Faithful to the daemon without Docker: a temporary DAGSTER_HOME (SQLite run and event storage,
the DefaultRunLauncher), one `dagster api grpc` code server per code location, as the deployment
runs it (deploy/workspace.yaml), and `DagsterInstance.launch_run` — the call the daemon's run
queue makes. The gRPC server spawns a fresh run-worker process per run, which loads the code
location and executes the job with its executor (in_process_executor for both jobs). The simulated
fleet (`perf-pipelines fleet --scenario scale --servers 10`) runs in its own process; the agent's
tables are a SQLite file; SCRAPE_SAMPLES=1, so a cycle is one scrape round and no deliberate
sleep between samples is measured.

Per run, from the run's event records: launch → RUN_SUCCESS, RUN_START → RUN_SUCCESS, the
worker's start-up (launch → "Started process for run", then → RUN_START: loading the code
location), each step's duration, and the run worker's CPU (the gRPC server's reaped-children
CPU, read from /proc before and after the worker exits). A warm-up run of each job comes first,
then the two jobs alternate, so load from other work on the machine weighs on both alike; the
table shows medians. Usage: python bench/bench_dagster.py [--runs N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import dagster
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, EventLogEntry
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import GrpcServerTarget
from dagster._grpc.client import DagsterGrpcClient

from perf_pipelines.collection.collector import ScrapeLimits, collect
from perf_pipelines.collection.rounds import rows_from_rounds
from perf_pipelines.storage.db import create_db_engine
from perf_pipelines.storage.snapshots import insert_snapshots
from perf_pipelines.targets import load_targets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import (  # bench/ is not a package: run as a script, its folder on sys.path
    ROOT,
    BenchResult,
    SummaryRow,
    child_cpu_seconds,
    free_port,
    markdown_table,
    ratio,
    report,
    stop_process,
    wait_for_http,
)

BIN = Path(sys.executable).parent
TARGETS = 10
CYCLE_JOB = "optimization_cycle"
NOOP_JOB = "noop_job"
_PID = re.compile(r"Started process for run \(pid: (\d+)\)")


@dataclass
class RunTiming:
    """One run's figures, in seconds."""

    launch_to_success: float
    run_start_to_success: float
    spawn: float  # launch → the worker's "Started process for run": process, imports, instance
    load: float  # → RUN_START: the worker loads the code location and plans the run
    worker_cpu: float
    steps: dict[str, float] = field(default_factory=dict)
    reports: int | None = None  # bottleneck reports the cycle wrote: proof it analysed


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A service of the benchmark, run in the temporary home beside its log: no `.env` of the
    checkout is read, and only what the environment (or `-d`) puts on sys.path is imported."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            args,
            env=env,
            cwd=log.parent,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        stop_process(process, grace_s=15)


def _wait_for_grpc(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    client = DagsterGrpcClient(port=port, host="127.0.0.1")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gRPC server exited:\n{log.read_text()[-3000:]}")
        try:
            client.ping("")
            return
        except Exception:  # still importing the code location
            time.sleep(0.2)
    raise TimeoutError(f"gRPC server on {port} did not answer:\n{log.read_text()[-3000:]}")


class CodeServer:
    """A `dagster api grpc` code server and the instance that launches runs through it."""

    def __init__(
        self,
        instance: DagsterInstance,
        module: str,
        location: str,
        env: dict[str, str],
        working_directory: Path,
        log: Path,
    ) -> None:
        self.instance = instance
        self.location = location
        self.port = free_port()
        self.log = log
        # `-d` goes on the worker's sys.path: the checkout for bench/, otherwise the temporary
        # home, so the installed perf_pipelines (or one on PYTHONPATH) is what runs.
        self.args = [
            str(BIN / "dagster"), "api", "grpc", "-m", module, "-d", str(working_directory),
            "-h", "127.0.0.1", "-p", str(self.port), "--location-name", location,
        ]  # fmt: skip
        self.env = env

    def start(self, stack: ExitStack) -> None:
        self.process = stack.enter_context(_process(self.args, self.env, self.log))

    def connect(self, stack: ExitStack) -> None:
        """Wait for the started server, then open the workspace the launches go through."""
        _wait_for_grpc(self.port, self.process, self.log)
        target = GrpcServerTarget(
            host="127.0.0.1", port=self.port, socket=None, location_name=self.location
        )
        self.workspace = stack.enter_context(WorkspaceProcessContext(self.instance, target))

    def launch(self, job_name: str) -> RunTiming:
        """Create the run as the scheduler does and launch it as the run queue does."""
        request = self.workspace.create_request_context()
        location = request.get_code_location(self.location)
        (repository,) = location.get_repositories().values()
        remote_job = repository.get_full_job(job_name)
        plan = location.get_execution_plan(
            remote_job, {}, step_keys_to_execute=None, known_state=None
        )
        run = self.instance.create_run(
            job_name=job_name, run_id=None, run_config={}, resolved_op_selection=None,
            step_keys_to_execute=None, op_selection=None, status=DagsterRunStatus.NOT_STARTED,
            root_run_id=None, parent_run_id=None, tags=dict(remote_job.run_tags),
            job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=plan.execution_plan_snapshot,
            parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
            asset_selection=None, asset_check_selection=None, asset_graph=repository.asset_graph,
        )  # fmt: skip
        cpu_before = child_cpu_seconds(self.process.pid)
        launched = time.time()
        self.instance.launch_run(run.run_id, request)
        status = self._wait(run.run_id)
        events = self.instance.all_logs(run.run_id)
        if status != DagsterRunStatus.SUCCESS:
            messages = "\n".join(e.user_message for e in events if e.user_message)[-3000:]
            raise RuntimeError(f"{job_name} run {run.run_id} ended {status}:\n{messages}")
        pid = next(int(m[1]) for e in events if (m := _PID.search(_message(e))))
        self._wait_reaped(pid)
        return _timing(events, launched, child_cpu_seconds(self.process.pid) - cpu_before)

    def _wait(self, run_id: str, timeout_s: float = 180) -> DagsterRunStatus:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.instance.get_run_by_id(run_id)
            if run is not None and run.is_finished:
                return run.status
            time.sleep(0.05)
        raise TimeoutError(f"run {run_id} did not finish within {timeout_s:.0f} s")

    def _wait_reaped(self, pid: int, timeout_s: float = 30) -> None:
        """Until the gRPC server has reaped the worker: only then is its CPU in cutime/cstime."""
        deadline = time.monotonic() + timeout_s
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)


def _message(event: EventLogEntry) -> str:
    # Engine events of the run worker carry their text on the Dagster event, not user_message.
    return (event.dagster_event.message if event.dagster_event else None) or event.user_message


def _timing(events: Sequence[EventLogEntry], launched: float, worker_cpu: float) -> RunTiming:
    process_up: float | None = None
    report_count: int | None = None
    first: dict[DagsterEventType, float] = {}
    step_start: dict[str, float] = {}
    steps: dict[str, float] = {}
    for event in events:
        if process_up is None and _PID.search(_message(event)):
            process_up = event.timestamp
        if event.dagster_event is None:
            continue
        kind = event.dagster_event.event_type
        if kind in (DagsterEventType.RUN_START, DagsterEventType.RUN_SUCCESS):
            first.setdefault(kind, event.timestamp)
        elif kind == DagsterEventType.STEP_START:
            step_start[event.step_key] = event.timestamp
        elif kind == DagsterEventType.STEP_SUCCESS:
            steps[event.step_key] = event.timestamp - step_start[event.step_key]
        elif (
            kind == DagsterEventType.ASSET_MATERIALIZATION
            and event.step_key == "bottleneck_reports"
        ):
            reports = event.dagster_event.step_materialization_data.materialization.metadata[
                "reports"
            ]
            report_count = int(reports.value)
    if process_up is None:
        raise RuntimeError("the run worker never reported its process")
    run_start, success = first[DagsterEventType.RUN_START], first[DagsterEventType.RUN_SUCCESS]
    return RunTiming(
        launch_to_success=success - launched,
        run_start_to_success=success - run_start,
        spawn=process_up - launched,
        load=run_start - process_up,
        worker_cpu=worker_cpu,
        steps=steps,
        reports=report_count,
    )


def _seed_history(targets: Path, database_url: str) -> None:
    """The earlier cycles of a running agent: three scrape rounds 4.5 s apart, so detection has
    the MIN_SPAN_S of history it needs and each measured cycle analyses real rates — as in
    production, where the analysis window spans several cycles."""
    rounds = asyncio.run(collect(load_targets(targets), ScrapeLimits(), samples=3, interval_s=4.5))
    engine = create_db_engine(database_url)
    try:
        with engine.begin() as connection:
            insert_snapshots(connection, rows_from_rounds("history", rounds))
    finally:
        engine.dispose()


def _measure(
    cycle_server: CodeServer, noop_server: CodeServer, runs: int
) -> tuple[list[RunTiming], list[RunTiming]]:
    """Runs in pairs, one of each job back to back: on a machine shared with other work, load
    that comes and goes then weighs on both sides of the ratio alike."""
    # Warm-up: the database's first use in a worker, the page cache, the fleet's first answers.
    noop_server.launch(NOOP_JOB)
    cycle_server.launch(CYCLE_JOB)
    cycle: list[RunTiming] = []
    noop: list[RunTiming] = []
    for _ in range(runs):
        noop.append(noop_server.launch(NOOP_JOB))
        cycle.append(cycle_server.launch(CYCLE_JOB))
    return cycle, noop


def _import_time(module: str, env: dict[str, str], cwd: Path) -> float:
    """Seconds for a fresh interpreter to import `module`: the floor of every run worker."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", f"import {module}"], env=env, cwd=cwd, check=True)
    return time.monotonic() - started


def _table(
    cycle: list[RunTiming], noop: list[RunTiming], imports: dict[str, float], load: str
) -> str:
    def med(runs: list[RunTiming], attr: str) -> str:
        return f"{_median([getattr(r, attr) for r in runs]):.2f}"

    rows: list[list[object]] = [
        [label, med(cycle, attr), med(noop, attr)]
        for label, attr in [
            ("launch → RUN_SUCCESS (s)", "launch_to_success"),
            ("  launch → worker process up (s)", "spawn"),
            ("  worker up → RUN_START: code location load (s)", "load"),
            ("  RUN_START → RUN_SUCCESS (s)", "run_start_to_success"),
            ("run worker CPU (s)", "worker_cpu"),
        ]
    ]
    # Steps in execution order, each in its job's column.
    for step in cycle[0].steps:
        rows.append([f"  step {step} (s)", f"{_median([r.steps[step] for r in cycle]):.2f}", ""])
    for step in noop[0].steps:
        rows.append([f"  step {step} (s)", "", f"{_median([r.steps[step] for r in noop]):.2f}"])
    # What the steps leave of RUN_START → RUN_SUCCESS: Dagster's own work around them (plan,
    # resources, event writes, the executor).
    rows.append(
        [
            "  RUN_START → RUN_SUCCESS outside the steps (s)",
            *(
                f"{_median([r.run_start_to_success - sum(r.steps.values()) for r in runs]):.2f}"
                for runs in (cycle, noop)
            ),
        ]
    )
    pairs = [c.launch_to_success / n.launch_to_success for c, n in zip(cycle, noop, strict=True)]
    rows.append(["median ratio of back-to-back pairs", ratio(_median(pairs), 1.0), ""])
    reports = [r.reports for r in cycle if r.reports is not None]
    rows.append(["bottleneck reports written per run", f"{_median(reports):.0f}", ""])
    for module, seconds in imports.items():
        rows.append([f"fresh `python -c 'import {module}'` (s)", f"{seconds:.2f}", ""])
    header = (
        f"# Dagster overhead — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, dagster {dagster.__version__}"
        f"\n\nmedian of {len(cycle)} runs each after a warm-up; {TARGETS} simulated targets, "
        "SCRAPE_SAMPLES=1, SQLite for the agent and Dagster, DefaultRunLauncher via a gRPC "
        f"code server; load average {load}\n\n"
    )
    return header + markdown_table([" ", CYCLE_JOB, NOOP_JOB], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs per job (default 5)")
    parser.add_argument("--quick", action="store_true", help="2 runs each, for CI (< 60 s)")
    args = parser.parse_args()
    runs = 2 if args.quick else args.runs

    load_before = os.getloadavg()[0]  # other work on the machine: read the figures with it
    with tempfile.TemporaryDirectory(prefix="bench_dagster_") as tmp, ExitStack() as stack:
        home = Path(tmp)
        dagster_home = home / "dagster"
        dagster_home.mkdir()
        (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        targets = home / "targets.yaml"
        env = {
            **os.environ,
            "DAGSTER_HOME": str(dagster_home),
            "PERF_HOME": str(home),
            "PERF_TARGETS": str(targets),
            "DATABASE_URL": f"sqlite:///{home / 'perf.db'}",
            "SCRAPE_SAMPLES": "1",
        }
        fleet_port = free_port()
        stack.enter_context(
            _process(
                [
                    str(BIN / "perf-pipelines"), "fleet", "--scenario", "scale",
                    "--servers", str(TARGETS), "--port", str(fleet_port),
                    "--write-targets", str(targets),
                ],
                env, home / "fleet.log",
            )
        )  # fmt: skip
        wait_for_http(f"http://127.0.0.1:{fleet_port}/", timeout_s=60)
        # As the deployment does before its daemon starts (deploy/, scripts/demo.sh).
        subprocess.run([BIN / "perf-pipelines", "db", "upgrade"], env=env, cwd=home, check=True)
        # Seeded while the first code server starts (its start-up is not measured): ~9 s saved.
        seeding = threading.Thread(target=_seed_history, args=(targets, env["DATABASE_URL"]))
        seeding.start()

        os.environ["DAGSTER_HOME"] = str(dagster_home)
        instance = stack.enter_context(DagsterInstance.get())
        servers = {
            "perf_pipelines": CodeServer(
                instance,
                "perf_pipelines.definitions",
                "perf_pipelines",
                env,
                home,
                home / "cycle.log",
            ),
            "noop": CodeServer(
                instance, "bench.noop_definitions", "noop", env, ROOT, home / "noop.log"
            ),
        }
        # Both code servers up at once, as two code locations of one deployment (an idle
        # server waits on its socket and costs nothing measurable); started together, their
        # start-ups overlap.
        with ExitStack() as servers_stack:
            for server in servers.values():
                server.start(servers_stack)
            for server in servers.values():
                server.connect(servers_stack)
            seeding.join()
            cycle, noop = _measure(servers["perf_pipelines"], servers["noop"], runs)
        # The floor of every run worker; skipped by --quick, whose budget is the runs.
        modules = [] if args.quick else ["dagster", "perf_pipelines.definitions"]
        imports = {m: _import_time(m, env, home) for m in modules}
        load = f"{load_before:.1f} → {os.getloadavg()[0]:.1f}"

    ours = _median([r.launch_to_success for r in cycle])
    peer = _median([r.launch_to_success for r in noop])
    ours_cpu = _median([r.worker_cpu for r in cycle])
    peer_cpu = _median([r.worker_cpu for r in noop])
    report(
        BenchResult(
            name="dagster",
            command="python bench/bench_dagster.py",
            table=_table(cycle, noop, imports, load),
            summary=[
                SummaryRow(
                    what=f"{CYCLE_JOB}, {TARGETS} targets, launched as the daemon does",
                    ours=f"{ours:.2f} s launch → success",
                    peer=f"no-op job: {peer:.2f} s",
                    ratio=ratio(ours, peer),
                    goal="≤ 2×",
                    met=ours <= 2 * peer,
                ),
                SummaryRow(
                    what=f"{CYCLE_JOB} run-worker CPU (steadier than wall under load)",
                    ours=f"{ours_cpu:.2f} s",
                    peer=f"no-op job: {peer_cpu:.2f} s",
                    ratio=ratio(ours_cpu, peer_cpu),
                    goal="—",
                    met=None,
                ),
            ],
            versions={"dagster": dagster.__version__, "python": platform.python_version()},
        )
    )


if __name__ == "__main__":
    main()
