"""CPU cost of the fleet simulator serving N servers, scraped every INTERVAL seconds.

Starts `perf-pipelines fleet --scenario scale` in its own process, scrapes every server with the
agent's collector ROUNDS times, and reads the simulator's CPU time from /proc. Usage:
python bench/bench_simulator.py [servers] [interval_s] [rounds]
"""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from perf_pipelines.collection.collector import ScrapeLimits, collect
from perf_pipelines.targets import load_targets


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    servers = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    interval = float(sys.argv[2]) if len(sys.argv) > 2 else 15.0
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    port = _free_port()
    targets_file = Path(f"/tmp/bench_simulator_targets_{port}.yaml")
    cli = Path(sys.executable).parent / "perf-pipelines"
    process = subprocess.Popen(
        [
            cli,
            "fleet",
            "--scenario",
            "scale",
            "--servers",
            str(servers),
            "--port",
            str(port),
            "--write-targets",
            str(targets_file),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        targets = load_targets(targets_file)
        limits = ScrapeLimits(timeout_s=30, concurrency=64)
        asyncio.run(collect(targets, limits))  # warm-up round
        cpu_start, wall_start = _cpu_seconds(process.pid), time.monotonic()
        rounds_done = asyncio.run(collect(targets, limits, samples=rounds, interval_s=interval))
        wall = time.monotonic() - wall_start
        cpu = _cpu_seconds(process.pid) - cpu_start
        down = sum(1 for results in rounds_done for r in results if not r.up)
        scrapes = servers * rounds
        print(
            f"# simulator cost — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
            f"Python {platform.python_version()}\n"
        )
        print(
            "| servers | scrape interval (s) | wall (s) | simulator CPU (s) "
            "| CPU share of one core | CPU ms per scrape | failed scrapes |"
        )
        print("|---|---|---|---|---|---|---|")
        print(
            f"| {servers} | {interval:g} | {wall:.1f} | {cpu:.1f} | {cpu / wall:.0%} "
            f"| {cpu / scrapes * 1000:.2f} | {down} |"
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
        targets_file.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
