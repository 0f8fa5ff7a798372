"""Sidecar: start-up time, resident memory, and health latency at a fixed request rate, next
to the seed's figures (start-up < 2 s, ~50 MB, health < 50 ms).
Usage: python bench/bench_sidecar.py [--quick]

The sidecar runs as deployed: `perf-pipelines sidecar` (the console script of this venv) in a
fresh process on a free loopback port, on a SQLite database that holds what a running agent
leaves in it (a small fleet's snapshots, reports, advice, orchestrator events and health rows,
written with the storage functions the jobs use). Start-up is spawn → first 200 from
/api/v1/health. Load comes from wrk 4.1 on loopback with `-t1`: wrk and the sidecar share the
machine's cores, and one wrk thread keeps one shared request schedule (bench/sidecar_wrk.lua).
"""

from __future__ import annotations

import http.client
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess  # nosec B404: runs wrk and the sidecar, fixed argument lists
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchkit import (
    BenchResult,
    SummaryRow,
    free_port,
    markdown_table,
    process_memory_mib,
    ratio,
    report,
    stop_process,
)
from sqlalchemy import Engine

from perf_pipelines.engines.canonical import CanonicalSnapshot
from perf_pipelines.findings import BottleneckReport, Recommendation
from perf_pipelines.health.checks import ComponentHealth, write_health
from perf_pipelines.orchestrator.events import insert_events
from perf_pipelines.storage.db import create_db_engine, ensure_schema
from perf_pipelines.storage.recommendation_status import set_status
from perf_pipelines.storage.reports import upsert_recommendations, write_reports
from perf_pipelines.storage.snapshots import SnapshotRow, insert_snapshots

SIDECAR = Path(sys.executable).parent / "perf-pipelines"
PYTHON = Path(sys.executable)
WRK_SCRIPT = Path(__file__).resolve().parent / "sidecar_wrk.lua"
AGENT_ID = "bench-agent"

# The seed's figures for its sidecar (as quoted in the issue), which are also the goals.
SEED_STARTUP_S = 2.0
SEED_RSS_MB = 50.0
SEED_LATENCY_MS = 50.0
MIB_TO_MB = 1.048576
RSS_TOLERANCE = 1.1  # "~50 MB" counts as met up to 55 MB

TARGETS = 8  # a small fleet; cycles every 5 minutes with 3 samples each (the defaults)
CYCLE = timedelta(minutes=5)
SAMPLES = 3
HEARTBEAT = timedelta(seconds=30)
HEALTH_CHECK = timedelta(minutes=1)

ROUTES = ("/api/v1/health", "/api/v1/health/detailed", "/metrics")
RATES = (100, 500)  # requests per second
SATURATION_CONNECTIONS = 16


@dataclass(frozen=True)
class Mode:
    history: timedelta  # how much agent history the database holds
    spawns: int  # start-ups measured (median)
    load_s: int  # seconds per fixed-rate point
    rate_routes: tuple[str, ...]
    saturation_s: int
    saturation_routes: tuple[str, ...]
    import_runs: int


FULL = Mode(timedelta(days=7), 7, 15, ROUTES, 5, ROUTES, 3)  # 7 days: the retention's steady state
# The whole run within ~25 s, for CI.
QUICK = Mode(timedelta(days=1), 3, 3, ROUTES[:2], 2, ROUTES[:1], 1)
SATURATED = 0.9  # a fixed-rate point below 90 % of its target rate is past the sidecar's capacity


@dataclass(frozen=True)
class WrkRun:
    route: str
    target_rate: int | None  # None: closed loop, as fast as the connections go
    connections: int
    requests: int
    duration_s: float
    errors: int  # connect, read, write and timeout errors plus non-2xx/3xx answers
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def achieved_rate(self) -> float:
        return self.requests / self.duration_s

    @property
    def saturated(self) -> bool:
        return self.target_rate is not None and self.achieved_rate < SATURATED * self.target_rate


# --- a database as a running agent leaves it ---------------------------------------------------


def seed_database(engine: Engine, history: timedelta, now: datetime) -> dict[str, int]:
    """Migrate, then write `history` of agent activity with the jobs' storage functions."""
    ensure_schema(engine)
    cycles = int(history / CYCLE)
    targets = [f"vllm-{i}" for i in range(TARGETS)]
    snapshots: list[SnapshotRow] = []
    for cycle in range(cycles):
        run_at = now - (cycles - 1 - cycle) * CYCLE
        for t, target in enumerate(targets):
            for sample in range(SAMPLES):
                # The newest cycle has one target timing out, as a fleet usually does somewhere.
                down = cycle == cycles - 1 and t == TARGETS - 1
                snapshot = CanonicalSnapshot(
                    model="llama-3-8b",
                    requests_running=float(4 + t),
                    requests_waiting=float(cycle % 5),
                    kv_cache_usage=0.5 + 0.05 * t,
                )
                snapshots.append(
                    SnapshotRow(
                        run_id=f"c-{cycle}",
                        sample_index=sample,
                        target=target,
                        engine="vllm",
                        model=None if down else "llama-3-8b",
                        collected_at=run_at + timedelta(seconds=5 * sample),
                        up=not down,
                        error="timed out after 5 s" if down else None,
                        scrape_ms=None if down else 12.0,
                        body_bytes=None if down else 48_000,
                        snapshot=None if down else snapshot,
                    )
                )
    with engine.begin() as connection:
        insert_snapshots(connection, snapshots)
        report_ids: dict[tuple[str, str | None, str], int] = {}
        for cycle in range(cycles):
            created = now - (cycles - 1 - cycle) * CYCLE + timedelta(seconds=20)
            reports = [
                BottleneckReport(
                    target=target,
                    engine="vllm",
                    model="llama-3-8b",
                    window_start=created - timedelta(minutes=15),
                    window_end=created,
                    kind=kind,
                    severity=severity,
                    score=0.7,
                    evidence={"kv_usage_mean": 0.97},
                    summary=f"{kind} on {target}",
                )
                for target, kind, severity in (
                    (targets[0], "kv_cache_pressure", "critical"),
                    (targets[1], "queue_saturation", "warning"),
                )
            ]
            report_ids = write_reports(connection, f"a-{cycle}", reports, created)
        advice = [
            Recommendation(
                target=target,
                engine="vllm",
                model="llama-3-8b",
                capability=capability,
                parameter=parameter,
                engine_flag=flag,
                current_value=current,
                recommended_value=recommended,
                rationale="bench",
                evidence={"kv_usage_mean": 0.97},
                expected_effect=None,
                confidence=0.8,
                severity=severity,
                report_kind="kv_cache_pressure",
            )
            for target in targets[:3]
            for capability, parameter, flag, current, recommended, severity in (
                ("kv_cache_optimization", "gpu_memory_utilization",
                 "--gpu-memory-utilization", 0.85, 0.92, "critical"),
                ("batch_size_tuning", "max_num_seqs", "--max-num-seqs", 256, 128, "warning"),
            )
        ]  # fmt: skip
        upsert_recommendations(connection, f"a-{cycles - 1}", advice, now, report_ids)
        set_status(connection, advice[0].id, "applied", now)
        set_status(connection, advice[1].id, "rejected", now)
        beats = int(history / HEARTBEAT)
        insert_events(
            connection,
            [
                {
                    "occurred_at": now - (beats - 1 - i) * HEARTBEAT,
                    "agent_id": AGENT_ID,
                    "kind": "heartbeat",
                    "success": i % 100 != 0,  # an orchestrator restart now and then
                    "status_code": 200 if i % 100 else 503,
                    "latency_ms": 3.0,
                    "error": None if i % 100 else "HTTP 503",
                    "detail": {"path": f"/api/v1/agents/{AGENT_ID}/heartbeat"},
                }
                for i in range(beats)
            ],
        )
        checks = int(history / HEALTH_CHECK)
        dagster = ComponentHealth("ok", "last successful optimization_cycle 42s ago")
        for i in range(checks):
            write_health(
                connection,
                checked_at=now - (checks - 1 - i) * HEALTH_CHECK,
                run_id=f"h-{i}",
                agent_id=AGENT_ID,
                components={"dagster": dagster},
            )
    return {
        "metric_snapshots": len(snapshots),
        "bottleneck_reports": 2 * cycles,
        "tuning_recommendations": len(advice),
        "orchestrator_events": beats,
        "agent_health": checks,
    }


# --- the sidecar process ------------------------------------------------------------------------


def sidecar_env(database: Path, workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "ORCHESTRATOR_TOKEN")}
    env.update(
        DATABASE_URL=f"sqlite:///{database}",
        PERF_HOME=str(workdir),
        AGENT_ID=AGENT_ID,
        # Only whether they are set matters to the sidecar: the targets and orchestrator
        # components are then judged from the rows, as in a configured deployment. Nothing is
        # sent to this URL.
        PERF_TARGETS=str(workdir / "targets.yaml"),
        ORCHESTRATOR_URL="http://127.0.0.1:9",
        LOG_LEVEL="WARNING",
    )
    return env


def get_status(port: int, path: str, timeout_s: float = 1.0) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def log_tail(log: Path) -> str:
    """The end of the sidecar's log, for an error message (the folder is removed afterwards)."""
    return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"


def spawn_sidecar(
    env: dict[str, str], workdir: Path, log: Path
) -> tuple[subprocess.Popen[bytes], int, float]:
    """Start the console script; return it, its port and the seconds to the first 200."""
    port = free_port()
    with log.open("ab") as sink:
        started = time.perf_counter()
        process = subprocess.Popen(  # nosec B603: fixed arguments
            [str(SIDECAR), "sidecar", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=workdir,  # no project .env is read
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        while True:
            try:
                if get_status(port, "/api/v1/health") == 200:
                    return process, port, time.perf_counter() - started
            except OSError:
                pass
            if process.poll() is not None:
                raise RuntimeError(
                    f"the sidecar exited with {process.returncode}:\n{log_tail(log)}"
                )
            if time.perf_counter() - started > 30:
                raise TimeoutError(f"the sidecar did not answer within 30 s:\n{log_tail(log)}")
            # 10 ms: the start-up figure is ~1 s, and a tighter loop would take CPU from it.
            time.sleep(0.01)
    except BaseException:
        stop_process(process)
        raise


# --- imports ----------------------------------------------------------------------------------

# What `perf-pipelines sidecar` imports before it answers, grouped by who pulls it in; the steps
# run in this order in one fresh interpreter, so a dependency shared by two steps counts at the
# first (pydantic's model machinery, loaded by the first model class, lands on
# pydantic-settings although FastAPI needs it as much).
IMPORT_STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pydantic", ("pydantic",)),
    ("pydantic-settings + pydantic's model machinery", ("pydantic_settings",)),
    ("click + perf_pipelines.cli/settings/logs", ("perf_pipelines.cli",)),
    ("SQLAlchemy", ("sqlalchemy",)),
    ("perf_pipelines.health, .storage, .orchestrator.events", ("perf_pipelines.health",)),
    ("FastAPI + Starlette", ("fastapi",)),
    ("prometheus_client + perf_pipelines.sidecar.app", ("perf_pipelines.sidecar.app",)),
    ("uvicorn + perf_pipelines.cli.sidecar", ("uvicorn", "perf_pipelines.cli.sidecar")),
)

_IMPORT_PROBE = """
import importlib, json, sys, time
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
steps = json.loads(sys.argv[1])
out = {"python": rss(), "steps": []}
for modules in steps:
    before, started = rss(), time.perf_counter()
    for module in modules:
        importlib.import_module(module)
    out["steps"].append([rss() - before, time.perf_counter() - started])
print(json.dumps(out))
"""


def measure_imports(runs: int) -> tuple[float, float, list[tuple[str, float, float]]]:
    """Interpreter start-up (s), its RSS (MiB), and per step (name, MiB, s): medians."""
    bare: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([str(PYTHON), "-c", "pass"], check=True, timeout=30)  # nosec B603
        bare.append(time.perf_counter() - started)
    probes: list[dict[str, Any]] = []
    steps = json.dumps([modules for _, modules in IMPORT_STEPS])
    for _ in range(runs):
        done = subprocess.run(  # nosec B603
            [str(PYTHON), "-c", _IMPORT_PROBE, steps],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tempfile.gettempdir(),  # no project .env
        )
        probes.append(json.loads(done.stdout))
    rows = [
        (
            name,
            statistics.median(p["steps"][i][0] for p in probes),
            statistics.median(p["steps"][i][1] for p in probes),
        )
        for i, (name, _) in enumerate(IMPORT_STEPS)
    ]
    return statistics.median(bare), statistics.median(p["python"] for p in probes), rows


# --- load ---------------------------------------------------------------------------------------


def run_wrk(port: int, route: str, rate: int | None, connections: int, seconds: int) -> WrkRun:
    env = dict(os.environ)
    env.pop("WRK_RATE", None)
    if rate is not None:
        env["WRK_RATE"] = str(rate)
    done = subprocess.run(  # nosec B603: fixed arguments
        [
            "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
            "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}{route}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    )  # fmt: skip
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")
    result = json.loads(line.removeprefix("WRK_JSON "))
    return WrkRun(
        route=route,
        target_rate=rate,
        connections=connections,
        requests=result["requests"],
        duration_s=result["duration_us"] / 1e6,
        errors=sum(
            result[key]
            for key in (
                "connect_errors",
                "read_errors",
                "write_errors",
                "status_errors",
                "timeouts",
            )
        ),
        p50_ms=result["p50_us"] / 1000,
        p90_ms=result["p90_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        max_ms=result["max_us"] / 1000,
    )


def connections_for(rate: int) -> int:
    """Enough connections that one is free at each slot, even when answers take ~50 ms."""
    return max(10, rate // 25)


# --- the report ---------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)  # nosec
    found = {"wrk": (wrk.stdout or wrk.stderr).split()[1], "python": sys.version.split()[0]}
    for package in (
        "uvicorn",
        "fastapi",
        "starlette",
        "sqlalchemy",
        "alembic",
        "pydantic-settings",
    ):
        found[package] = importlib.metadata.version(package)
    return found


def main() -> None:
    quick = "--quick" in sys.argv
    mode = QUICK if quick else FULL
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    wall = time.perf_counter()
    interpreter_s, interpreter_mib, import_rows = measure_imports(mode.import_runs)

    workdir = Path(tempfile.mkdtemp(prefix="bench-sidecar-"))
    database = workdir / "agent.db"
    log = workdir / "sidecar.log"
    env = sidecar_env(database, workdir)
    startups: list[float] = []
    memory_started: list[dict[str, float]] = []
    runs: list[WrkRun] = []
    process = None
    port = 0
    try:
        engine = create_db_engine(f"sqlite:///{database}")
        seeded = seed_database(engine, mode.history, datetime.now(UTC))
        engine.dispose()
        for spawn in range(mode.spawns):
            process, port, seconds = spawn_sidecar(env, workdir, log)
            startups.append(seconds)
            # Let the background schema check finish: it is part of the steady state.
            time.sleep(0.5)
            memory_started.append(process_memory_mib(process.pid))
            if spawn < mode.spawns - 1:
                stop_process(process)
        assert process is not None
        # Warm up: first connections to SQLite, first JSON encodes, threads in the pools.
        for route in ROUTES:
            for _ in range(20):
                status = get_status(port, route, timeout_s=10)
                if status != 200:
                    raise RuntimeError(f"{route} answered {status}:\n{log_tail(log)}")
        for route in mode.rate_routes:
            for rate in RATES:
                runs.append(run_wrk(port, route, rate, connections_for(rate), mode.load_s))
        for route in mode.saturation_routes:
            runs.append(run_wrk(port, route, None, SATURATION_CONNECTIONS, mode.saturation_s))
        memory_loaded = process_memory_mib(process.pid)
    finally:
        if process is not None:
            stop_process(process)
        shutil.rmtree(workdir, ignore_errors=True)
    wall = time.perf_counter() - wall

    startup_s = statistics.median(startups)
    rss_started = statistics.median(m["rss_mib"] for m in memory_started)
    peak_started = statistics.median(m["peak_rss_mib"] for m in memory_started)
    imports_s = sum(seconds for _, _, seconds in import_rows)
    imports_mib = sum(mib for _, mib, _ in import_rows)

    def point(route: str, rate: int) -> WrkRun:
        return next(r for r in runs if r.route == route and r.target_rate == rate)

    load_rows = [
        [
            f"`{r.route}`",
            f"{r.target_rate}" if r.target_rate else f"none: closed loop, -c{r.connections}",
            f"{r.achieved_rate:.0f}" + (" (saturated)" if r.saturated else ""),
            r.connections,
            f"{r.duration_s:.1f}",
            f"{r.p50_ms:.2f}",
            f"{r.p90_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.max_ms:.1f}",
            r.errors,
        ]
        for r in runs
    ]
    table = "\n\n".join(
        [
            f"Sidecar on SQLite ({', '.join(f'{n:,} {t}' for t, n in seeded.items())}: "
            f"{mode.history.days} day(s) of an agent watching {TARGETS} targets), "
            f"`perf-pipelines sidecar` on loopback; wrk 4.1 `-t1` on the same "
            f"{os.cpu_count()} cores.{' `--quick`.' if quick else ''}",
            markdown_table(
                ["what", "figure", "seed"],
                [
                    ["start-up: spawn → first 200 (median of "
                     f"{len(startups)})", f"{startup_s:.2f} s "
                     f"(min {min(startups):.2f}, max {max(startups):.2f})", "< 2 s"],
                    ["of which interpreter start", f"{interpreter_s * 1000:.0f} ms", ""],
                    ["of which imports (sum of the rows below)", f"{imports_s * 1000:.0f} ms", ""],
                    ["RSS after start-up: VmRSS / VmHWM",
                     f"{rss_started:.1f} / {peak_started:.1f} MiB", "~50 MB"],
                    ["RSS after the load: VmRSS / VmHWM", f"{memory_loaded['rss_mib']:.1f} / "
                     f"{memory_loaded['peak_rss_mib']:.1f} MiB", "~50 MB"],
                ],
            ),
            "Where the start-up memory and time go (imports in a fresh interpreter; "
            f"bare interpreter {interpreter_mib:.1f} MiB, imports {imports_mib:.1f} MiB):",
            markdown_table(
                ["imported", "RSS", "time"],
                [[name, f"+{mib:.1f} MiB", f"{s * 1000:.0f} ms"] for name, mib, s in import_rows],
            ),
            f"Latency at a fixed rate, {mode.load_s} s per point (wrk's delay() on one shared "
            f"schedule), then the throughput at saturation ({mode.saturation_s} s, closed loop). "
            "Latency counts from the write of each request, so a stall is under-reported "
            "(coordinated omission); '(saturated)': below "
            f"{SATURATED:.0%} of the target rate, the sidecar's capacity, not the rate, sets "
            "the latency:",
            markdown_table(
                ["route", "target req/s", "achieved req/s", "connections", "s", "p50 ms",
                 "p90 ms", "p99 ms", "max ms", "errors"],
                load_rows,
            ),
        ]
    )  # fmt: skip

    health_100 = point("/api/v1/health", 100)
    health_500 = point("/api/v1/health", 500)
    detailed_100 = point("/api/v1/health/detailed", 100)
    rss_mb = memory_loaded["rss_mib"] * MIB_TO_MB
    summary = [
        SummaryRow(
            what="sidecar start-up (spawn → first 200)",
            ours=f"{startup_s:.2f} s",
            peer="seed: < 2 s",
            ratio=ratio(startup_s, SEED_STARTUP_S),
            goal="< 2 s",
            met=startup_s < SEED_STARTUP_S,
        ),
        SummaryRow(
            what="/api/v1/health p99 at 100 req/s",
            ours=f"{health_100.p99_ms:.1f} ms",
            peer="seed: < 50 ms",
            ratio=ratio(health_100.p99_ms, SEED_LATENCY_MS),
            goal="< 50 ms",
            met=health_100.p99_ms < SEED_LATENCY_MS and health_100.errors == 0,
            why=f"achieved {health_100.achieved_rate:.0f} req/s",
        ),
        SummaryRow(
            what="/api/v1/health p99 at 500 req/s",
            ours=f"{health_500.p99_ms:.1f} ms",
            peer="seed: < 50 ms",
            ratio=ratio(health_500.p99_ms, SEED_LATENCY_MS),
            goal="< 50 ms",
            met=health_500.p99_ms < SEED_LATENCY_MS and health_500.errors == 0,
            why=f"achieved {health_500.achieved_rate:.0f} req/s",
        ),
        SummaryRow(
            what="/api/v1/health/detailed p99 at 100 req/s",
            ours=f"{detailed_100.p99_ms:.1f} ms",
            peer="seed: < 50 ms (its plain health)",
            ratio=ratio(detailed_100.p99_ms, SEED_LATENCY_MS),
            goal="< 50 ms",
            met=detailed_100.p99_ms < SEED_LATENCY_MS and detailed_100.errors == 0,
            why=f"achieved {detailed_100.achieved_rate:.0f} req/s; reads the database on "
            "every request",
        ),
        SummaryRow(
            what="sidecar RSS after the load (VmRSS)",
            ours=f"{memory_loaded['rss_mib']:.0f} MiB ({rss_mb:.0f} MB)",
            peer="seed: ~50 MB",
            ratio=ratio(rss_mb, SEED_RSS_MB),
            goal="~50 MB",
            met=rss_mb <= SEED_RSS_MB * RSS_TOLERANCE,
            why="imports: FastAPI with pydantic ~30 MiB, SQLAlchemy ~12 MiB, the interpreter "
            "~11 MiB (table above)",
        ),
    ]
    print(f"(wall time {wall:.1f} s)", file=sys.stderr)
    report(
        BenchResult(
            name="sidecar",
            command="python bench/bench_sidecar.py",
            table=table,
            summary=summary,
            versions=versions(),
        )
    )


if __name__ == "__main__":
    main()
