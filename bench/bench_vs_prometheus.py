"""The agent's collector against the real Prometheus server, scraping the same simulated fleet.

One fleet simulator (`perf-pipelines fleet --scenario scale`, its CPU not counted) serves N
servers by path on one port. The phases run one after the other, never together: on a 2-core
machine two scrapers running at once would compete for the same cores and each would measure the
other.

A. Prometheus (/usr/bin/prometheus) scrapes all N servers every INTERVAL seconds: one job, one
   file_sd target group per server (same host:port, its own `__metrics_path__` and a `server`
   label so the series do not collide). Once `count(up == 1)` reaches N and one more interval has
   passed, its CPU-seconds are read from /proc over ROUNDS intervals. The scrapes in the window
   are counted exactly from the TSDB: every scrape, failed or not, appends one `up` sample, so
   `sum(count_over_time(up[window]))` at the window's end is the number of scrapes that started
   in it.
B. The agent's `collect` (fetch + parse + map to canonical snapshots) takes ROUNDS rounds of the
   same N targets, INTERVAL seconds apart, in a child process of its own, so that its RSS is its
   own; its CPU is that process's user+system time over the call. The child starts (imports)
   during phase A, before A's window, and waits idle until Prometheus has stopped.
C. As B, then the rounds are stored in SQLite the way the `metric_snapshots` asset stores them
   (`rows_from_rounds` + `insert_snapshots` in one transaction). Prometheus' CPU includes writing
   its TSDB (head and WAL), so C is the like-for-like comparison.

Both agent children first run a small warm-up round (imports, lazy initialisation, the SQL
statement cache) outside the window. Usage:
python bench/bench_vs_prometheus.py [--servers N] [--interval S] [--rounds K] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from benchkit import (
    BenchResult,
    SummaryRow,
    free_port,
    markdown_table,
    process_cpu_seconds,
    process_memory_mib,
    ratio,
    report,
    self_cpu_seconds,
    stop_process,
    wait_for_http,
)

from perf_pipelines.collection.collector import ScrapeLimits, ScrapeResult, collect
from perf_pipelines.targets import load_targets

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
CPU_GOAL = 1.5  # agent ≤ 1.5× Prometheus' CPU per scrape (issue 9)
ROUND_GOAL_S = 10.0  # one round of 1,000 targets ≤ 10 s wall (issue 9)
# Enough for one target of each engine (the scale fleet cycles vLLM, SGLang, TGI, llama.cpp).
WARMUP_TARGETS = 8
# A timeout or two on a busy machine is tolerated; more would make the figures incomparable.
MAX_FAILED_SHARE = 0.01


@dataclass
class Measured:
    """One scraper's figures over its measured window."""

    scrapes: int
    failed: int
    cpu_s: float
    rss_mib: float
    peak_rss_mib: float
    # The agent's slowest round; None for Prometheus, which spreads scrapes over the interval.
    round_wall_s: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_ms_per_scrape(self) -> float:
        return self.cpu_s / self.scrapes * 1000


@contextmanager
def running(
    command: Sequence[str], log_path: Path, stdin: int | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A background process that is always stopped (SIGTERM, then SIGKILL) when the block ends."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdin=stdin, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop_process(process)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s:.0f} s")
        time.sleep(0.25)


def prometheus_version() -> str:
    first_line = subprocess.run(
        [PROMETHEUS, "--version"], capture_output=True, text=True, check=True, timeout=10
    ).stdout.splitlines()[0]
    return first_line.split("version", 1)[1].split()[0]  # "prometheus, version 2.42.0+ds (…"


def prometheus_command(folder: Path, interval: float, timeout: float) -> tuple[list[str], str]:
    """Write the config and return (command line, base URL); the targets are in a file_sd file."""
    config = {
        # Durations in milliseconds: Prometheus accepts "2000ms" but not "2.0s".
        "global": {
            "scrape_interval": f"{round(interval * 1000)}ms",
            "scrape_timeout": f"{round(timeout * 1000)}ms",
        },
        "scrape_configs": [
            {"job_name": "fleet", "file_sd_configs": [{"files": [str(folder / "fleet.json")]}]}
        ],
    }
    config_path = folder / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    base_url = f"http://127.0.0.1:{free_port()}"
    command = [
        PROMETHEUS,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={folder / 'tsdb'}",
        f"--web.listen-address={base_url.removeprefix('http://')}",
        "--log.level=warn",
    ]
    return command, base_url


def write_file_sd(folder: Path, targets: Sequence[dict[str, Any]]) -> None:
    """One group per server: the same host:port for all, its own path and a `server` label so that
    its series do not collide with the others'."""
    groups = [
        {
            "targets": [target["url"].split("/")[2]],
            "labels": {
                "__metrics_path__": "/" + target["url"].split("/", 3)[3],
                "server": target["name"],
            },
        }
        for target in targets
    ]
    partial = folder / "fleet.json.partial"
    partial.write_text(json.dumps(groups))
    partial.replace(folder / "fleet.json")  # atomic: Prometheus never reads half a file


def query(base_url: str, promql: str, at: float | None = None) -> float:
    """An instant query that yields one number (0 when the result is empty)."""
    params = {"query": promql} | ({"time": f"{at:.3f}"} if at is not None else {})
    response = httpx.get(f"{base_url}/api/v1/query", params=params, timeout=10)
    response.raise_for_status()
    result = response.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def self_metric(base_url: str, name: str, labels: str = "") -> float:
    """One sample of Prometheus' own /metrics: the first of `name` whose labels hold `labels`."""
    for line in httpx.get(f"{base_url}/metrics", timeout=10).text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] == name and labels in series:
            return float(value)
    raise KeyError(f"{name} {labels}")


def measure_prometheus(
    process: subprocess.Popen[bytes], base_url: str, targets: int, interval: float, rounds: int
) -> Measured:
    wait_for_http(f"{base_url}/-/ready", timeout_s=30)
    # Prometheus staggers each target's first scrape over one interval.
    wait_until(
        lambda: query(base_url, "count(up == 1)") >= targets,
        f"all {targets} targets up in Prometheus",
        timeout_s=2 * interval + 30,
    )
    time.sleep(interval)  # warm-up: every scrape loop in its steady state
    cpu_start, wall_start = process_cpu_seconds(process.pid), time.time()
    time.sleep(interval * rounds)
    cpu_end, wall_end = process_cpu_seconds(process.pid), time.time()
    memory = process_memory_mib(process.pid)
    time.sleep(0.5)  # let a scrape that started just before the end append its samples
    window = f"[{round((wall_end - wall_start) * 1000)}ms]"

    def at_end(promql: str) -> float:
        return query(base_url, promql, at=wall_end)

    scrapes = round(at_end(f"sum(count_over_time(up{window}))"))
    succeeded = round(at_end(f"sum(sum_over_time(up{window}))"))
    scraped_targets = round(at_end(f"count(count_over_time(up{window}))"))
    if scraped_targets != targets:
        raise RuntimeError(
            f"Prometheus scraped {scraped_targets} of {targets} targets in the window"
        )
    samples = at_end(f"sum(sum_over_time(scrape_samples_scraped{window}))")
    duration_s = at_end(f"sum(sum_over_time(scrape_duration_seconds{window}))")
    notes = {
        "samples_per_scrape": samples / scrapes,
        "scrape_ms_mean": duration_s / scrapes * 1000,
        "head_series": self_metric(base_url, "prometheus_tsdb_head_series"),
        "interval_p99_s": self_metric(
            base_url, "prometheus_target_interval_length_seconds", 'quantile="0.99"'
        ),
    }
    measured = Measured(
        scrapes=scrapes,
        failed=scrapes - succeeded,
        cpu_s=cpu_end - cpu_start,
        rss_mib=memory["rss_mib"],
        peak_rss_mib=memory["peak_rss_mib"],
        notes=notes,
    )
    check_failures("Prometheus", measured)
    return measured


def check_failures(scraper: str, measured: Measured) -> None:
    """Failed scrapes cost less than good ones: beyond a few, the comparison would be wrong."""
    if measured.failed > MAX_FAILED_SHARE * measured.scrapes:
        errors = measured.notes.get("errors", "see its log")
        raise RuntimeError(
            f"{scraper}: {measured.failed} of {measured.scrapes} scrapes failed: {errors}"
        )


def slowest_round_s(rounds: Sequence[Sequence[ScrapeResult]]) -> float:
    """From the results' own clocks: the first scrape's start to the last scrape's end."""
    walls = []
    for results in rounds:
        starts = [r.collected_at - timedelta(milliseconds=r.scrape_ms) for r in results]
        walls.append((max(r.collected_at for r in results) - min(starts)).total_seconds())
    return max(walls)


def sqlite_store(database: Path) -> Callable[[str, list[list[ScrapeResult]]], int]:
    """Store rounds as the `metric_snapshots` asset does: every round of a run, one transaction."""
    # Imported here: pandas and SQLAlchemy would otherwise inflate the collect-only child's RSS.
    from perf_pipelines.collection.rounds import rows_from_rounds
    from perf_pipelines.storage.db import create_db_engine, ensure_schema
    from perf_pipelines.storage.snapshots import insert_snapshots

    engine = create_db_engine(f"sqlite:///{database}")
    ensure_schema(engine)

    def store(run_id: str, rounds: list[list[ScrapeResult]]) -> int:
        with engine.begin() as connection:
            return insert_snapshots(connection, rows_from_rounds(run_id, rounds))

    return store


def agent_child(
    mode: str, targets_file: Path, interval: float, rounds: int, timeout: float
) -> None:
    """Phase B (`collect`) or C (`store`) in this process; writes its Measured as JSON.

    Its files live next to the targets file. It starts (imports, schema) while Prometheus is
    being measured, says so with a `.ready` file, and scrapes only once told on stdin."""
    folder = targets_file.parent
    targets = load_targets(targets_file)
    limits = ScrapeLimits(timeout_s=timeout)
    store = sqlite_store(folder / "agent.db") if mode == "store" else None
    (folder / f"agent-{mode}.ready").touch()
    sys.stdin.readline()
    warmup = asyncio.run(collect(targets[:WARMUP_TARGETS], limits))
    if store:
        store("warm-up", warmup)
    startup_cpu_s = self_cpu_seconds()
    rss_before_mib = process_memory_mib(os.getpid())["rss_mib"]
    done = asyncio.run(collect(targets, limits, samples=rounds, interval_s=interval))
    collect_cpu_s = self_cpu_seconds() - startup_cpu_s
    notes: dict[str, Any] = {
        "startup_cpu_s": startup_cpu_s,
        "rss_before_mib": rss_before_mib,
        "collect_cpu_s": collect_cpu_s,
    }
    if store:
        started = time.perf_counter()
        notes["rows_stored"] = store("bench", done)
        notes["store_wall_s"] = time.perf_counter() - started
    memory = process_memory_mib(os.getpid())
    results = [r for results in done for r in results]
    notes["errors"] = Counter(r.error for r in results if not r.up).most_common(3)
    measured = Measured(
        scrapes=len(results),
        failed=sum(1 for r in results if not r.up),
        cpu_s=self_cpu_seconds() - startup_cpu_s,
        rss_mib=memory["rss_mib"],
        peak_rss_mib=memory["peak_rss_mib"],
        round_wall_s=slowest_round_s(done),
        notes=notes,
    )
    (folder / f"agent-{mode}.json").write_text(json.dumps(asdict(measured)))


def agent_command(
    mode: str, targets_file: Path, interval: float, rounds: int, timeout: float
) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        f"--child={mode}",
        f"--targets-file={targets_file}",
        f"--interval={interval}",
        f"--rounds={rounds}",
        f"--timeout={timeout}",
    ]


def log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


def wait_agent_ready(process: subprocess.Popen[bytes], folder: Path, mode: str) -> None:
    ready = folder / f"agent-{mode}.ready"
    wait_until(lambda: ready.exists() or process.poll() is not None, f"agent ({mode}) ready", 90)
    if not ready.exists():
        raise RuntimeError(f"agent child ({mode}) exited:\n{log_tail(folder / f'{mode}.log')}")


def measure_agent(
    process: subprocess.Popen[bytes], folder: Path, mode: str, interval: float, rounds: int
) -> Measured:
    """Let a started child scrape; wait for its figures (the caller's block kills it on error)."""
    assert process.stdin is not None
    process.stdin.write(b"go\n")
    process.stdin.close()
    process.wait(timeout=60 + rounds * (interval + 30))
    if process.returncode != 0:
        raise RuntimeError(f"agent child ({mode}) failed:\n{log_tail(folder / f'{mode}.log')}")
    measured = Measured(**json.loads((folder / f"agent-{mode}.json").read_text()))
    check_failures(f"the agent ({mode})", measured)
    return measured


def render(
    args: argparse.Namespace,
    version: str,
    prometheus: Measured,
    collect_only: Measured,
    stored: Measured,
) -> BenchResult:
    def row(scraper: str, m: Measured) -> list[object]:
        wall = "– (spread over the interval)" if m.round_wall_s is None else f"{m.round_wall_s:.2f}"
        return [
            scraper,
            f"{args.servers:,}",
            f"{args.interval:g}",
            f"{m.scrapes:,}",
            m.failed,
            f"{m.cpu_s:.2f}",
            f"{m.cpu_ms_per_scrape:.2f}",
            f"{m.rss_mib:.0f}",
            f"{m.peak_rss_mib:.0f}",
            wall,
        ]

    table = markdown_table(
        [
            "scraper",
            "targets",
            "interval (s)",
            "scrapes measured",
            "failed",
            "CPU (s)",
            "CPU ms per scrape",
            "RSS MiB",
            "peak RSS MiB",
            "slowest round wall (s)",
        ],
        [
            row(f"Prometheus {version} (scrape + TSDB)", prometheus),
            row("agent: collect (fetch + parse + map)", collect_only),
            row("agent: collect + store in SQLite", stored),
        ],
    )
    p, c, s = prometheus.notes, collect_only.notes, stored.notes
    store_ms = (stored.cpu_s - s["collect_cpu_s"]) / stored.scrapes * 1000
    table += (
        f"\n\n{args.rounds} intervals of {args.interval:g} s each, the phases one after the other"
        " (on 2 cores, scrapers running together would compete for the CPU); one simulator"
        " process serves every target and its CPU is not counted. Prometheus: CPU from /proc over"
        f" the window; scrapes counted from its TSDB (`sum(count_over_time(up[window]))`);"
        f" {p['samples_per_scrape']:.0f} samples per scrape, mean scrape"
        f" {p['scrape_ms_mean']:.1f} ms, {p['head_series']:,.0f} series in the head, interval"
        f" p99 {p['interval_p99_s']:.2f} s. Agent: one child process per row, CPU over"
        f" `collect(samples={args.rounds})` (and the store), after a warm-up round outside the"
        f" window (start-up, imports and warm-up: {c['startup_cpu_s']:.1f} CPU-s for collect,"
        f" {s['startup_cpu_s']:.1f} with storage; RSS at the window's start"
        f" {c['rss_before_mib']:.0f} / {s['rss_before_mib']:.0f} MiB). Storing"
        f" {s['rows_stored']:,} rows took {s['store_wall_s']:.2f} s, {store_ms:.2f} CPU-ms per"
        " scrape."
    )
    cpu_ratio = stored.cpu_ms_per_scrape / prometheus.cpu_ms_per_scrape
    slowest_s = max(stored.round_wall_s or 0.0, collect_only.round_wall_s or 0.0)
    fleet = f"{args.servers:,} simulated servers every {args.interval:g} s"
    summary = [
        SummaryRow(
            what=f"CPU per scrape, {fleet}",
            ours=f"{stored.cpu_ms_per_scrape:.2f} ms (collect + store)",
            peer=f"Prometheus {version}: {prometheus.cpu_ms_per_scrape:.2f} ms",
            ratio=ratio(stored.cpu_ms_per_scrape, prometheus.cpu_ms_per_scrape),
            goal=f"≤ {CPU_GOAL:g}×",
            met=cpu_ratio <= CPU_GOAL,
            why="the Python HTTP stack (httpx, httpcore, anyio) costs ~1 ms a request, ten times "
            "bare asyncio sockets; see the section below",
        ),
        SummaryRow(
            what=f"CPU per scrape without storing, {fleet}",
            ours=f"{collect_only.cpu_ms_per_scrape:.2f} ms (collect)",
            peer=f"Prometheus {version}: {prometheus.cpu_ms_per_scrape:.2f} ms",
            ratio=ratio(collect_only.cpu_ms_per_scrape, prometheus.cpu_ms_per_scrape),
            goal="—",
            met=None,
        ),
        SummaryRow(
            what=f"one round of {args.servers:,} targets, wall",
            ours=f"{slowest_s:.2f} s (slowest of {2 * args.rounds}, both agent rows)",
            peer="— (Prometheus spreads scrapes over the interval)",
            ratio="—",
            goal=f"≤ {ROUND_GOAL_S:g} s",
            met=slowest_s <= ROUND_GOAL_S,
        ),
        SummaryRow(
            what=f"peak memory, {fleet}",
            ours=f"{stored.peak_rss_mib:.0f} MiB (collect + store)",
            peer=f"Prometheus {version}: {prometheus.peak_rss_mib:.0f} MiB",
            ratio=ratio(stored.peak_rss_mib, prometheus.peak_rss_mib),
            goal="—",
            met=None,
        ),
    ]
    return BenchResult(
        name="vs_prometheus",
        command="python bench/bench_vs_prometheus.py",
        table=table,
        summary=summary,
        versions={
            "prometheus": version,
            "python": platform.python_version(),
            "httpx": httpx.__version__,
            "sqlite": sqlite3.sqlite_version,
        },
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between scrapes")
    parser.add_argument("--rounds", type=int, default=4, help="intervals measured")
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="scrape timeout of both scrapers (s), at most the interval",
    )
    parser.add_argument(
        "--quick", action="store_true", help="50 servers, 2 s, 2 rounds: under 30 s, for CI"
    )
    # The agent's phases re-run this script as a child process.
    parser.add_argument("--child", choices=["collect", "store"], help=argparse.SUPPRESS)
    parser.add_argument("--targets-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.servers, args.interval, args.rounds = 50, 2.0, 2
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        agent_child(args.child, args.targets_file, args.interval, args.rounds, args.timeout)
        return
    # Here, not at the top: the agent children import this module, and their RSS should be the
    # collector's, not the simulator's model.
    from perf_lab.simulator.scenarios import scale, targets_for

    if not Path(PROMETHEUS).exists():
        sys.exit(f"{PROMETHEUS} not found: install Debian's prometheus package")
    version = prometheus_version()
    with tempfile.TemporaryDirectory(prefix="bench-vs-prometheus-") as name:
        folder = Path(name)
        targets_file = folder / "targets.yaml"
        port = free_port()
        simulator = [
            str(Path(sys.executable).parent / "perf-pipelines"),
            *("fleet", "--scenario", "scale", "--servers", str(args.servers)),
            *("--port", str(port), "--write-targets", str(targets_file)),
        ]
        # One timeout for both scrapers; Prometheus refuses one longer than the interval.
        interval, rounds, timeout = args.interval, args.rounds, min(args.timeout, args.interval)
        modes = ("collect", "store")
        with running(simulator, folder / "simulator.log") as fleet, ExitStack() as agents:
            try:
                # Prometheus starts alongside the simulator, its targets known from the start:
                # it applies new targets only every 5 s, and the simulator takes seconds to start.
                # Its first scrapes may fail; only those after every target is up are measured.
                fleet_targets = targets_for(scale(args.servers), f"http://127.0.0.1:{port}")
                write_file_sd(folder, fleet_targets["targets"])
                command, base_url = prometheus_command(folder, interval, timeout)
                with running(command, folder / "prometheus.log") as server:
                    wait_for_http(f"http://127.0.0.1:{port}/", timeout_s=60)
                    targets = load_targets(targets_file)
                    if [t.url for t in targets] != [t["url"] for t in fleet_targets["targets"]]:
                        raise RuntimeError("the simulator serves other targets than scale() lists")
                    # The agents' interpreters start and import meanwhile, then wait, idle,
                    # until Prometheus has been measured and stopped.
                    children = {
                        mode: agents.enter_context(
                            running(
                                agent_command(mode, targets_file, interval, rounds, timeout),
                                folder / f"{mode}.log",
                                stdin=subprocess.PIPE,
                            )
                        )
                        for mode in modes
                    }
                    for mode in modes:
                        wait_agent_ready(children[mode], folder, mode)
                    prometheus = measure_prometheus(
                        server, base_url, len(targets), interval, rounds
                    )
                collect_only, stored = (
                    measure_agent(children[mode], folder, mode, interval, rounds) for mode in modes
                )
            except (RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
                # Scrapes failing by the hundred usually mean the simulator died: show its end.
                state = "running" if fleet.poll() is None else f"exited with {fleet.returncode}"
                tail = log_tail(folder / "simulator.log")
                raise RuntimeError(f"{exc}\nsimulator {state}; its log ends:\n{tail}") from exc
    report(render(args, version, prometheus, collect_only, stored))


if __name__ == "__main__":
    main()
