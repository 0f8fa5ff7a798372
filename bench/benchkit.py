"""What every benchmark in bench/ shares: processes, CPU and memory readings, and the report.

Each benchmark is a script (`python bench/bench_<name>.py`) that prints its Markdown table and,
when `bench/run_all.py` runs it, also writes its results as JSON to the path in the environment
variable BENCH_RESULT, from which run_all.py rewrites the generated blocks of
docs/benchmarks.md and README.md. A benchmark measures its baseline (the peer) in the same run.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
EXPOSITIONS = ROOT / "tests" / "fixtures" / "expositions"


@dataclass(frozen=True)
class SummaryRow:
    """One line of the side-by-side summary table: ours against the peer, and the goal."""

    what: str
    ours: str
    peer: str
    ratio: str
    goal: str
    # None: there is no goal to meet, only a figure to show.
    met: bool | None
    why: str = ""


@dataclass
class BenchResult:
    name: str
    command: str
    table: str
    summary: list[SummaryRow] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def report(result: BenchResult) -> None:
    """Print the table for a person; write the JSON for run_all.py when it asked for it."""
    print(result.table)
    for row in result.summary:
        verdict = {True: "met", False: "MISSED", None: "-"}[row.met]
        print(f"- {row.what}: {row.ours} vs {row.peer} ({row.ratio}; goal {row.goal}: {verdict})")
    destination = os.environ.get("BENCH_RESULT")
    if destination:
        Path(destination).write_text(json.dumps(asdict(result), indent=2))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace_s`: a benchmark never leaves a server running."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def wait_for_http(url: str, timeout_s: float = 30.0) -> float:
    """Poll `url` until it answers 2xx; return the seconds it took."""
    started = time.monotonic()
    while True:
        try:
            if httpx.get(url, timeout=1.0).is_success:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.05)


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process (its threads included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_memory_mib(pid: int) -> dict[str, float]:
    """Resident set size now (VmRSS) and at its peak (VmHWM), in MiB."""
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            status[key] = int(value.split()[0]) / 1024
    return {"rss_mib": status["VmRSS"], "peak_rss_mib": status["VmHWM"]}


def ratio(ours: float, peer: float) -> str:
    return f"{ours / peer:.2f}×" if peer else "n/a"


def child_cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process's reaped children (cutime + cstime), from /proc:
    how to read what a short-lived worker it spawned used, once the worker has exited."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def fresh_postgres_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    """A fresh database next to the given one, and how to drop it (as the tests do)."""
    name = f"perf_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), drop
