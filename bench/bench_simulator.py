"""CPU cost of the fleet simulator serving N servers, scraped every INTERVAL seconds.

Starts `perf-pipelines fleet --scenario scale` in its own process, scrapes every server with the
agent's collector ROUNDS times, and reads the simulator's CPU time from /proc. Usage:
python bench/bench_simulator.py [--quick] [servers] [interval_s] [rounds]
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import (
    BenchResult,
    SummaryRow,
    free_port,
    markdown_table,
    process_cpu_seconds,
    report,
    stop_process,
    wait_for_http,
)

from perf_pipelines.collection.collector import ScrapeLimits, collect
from perf_pipelines.targets import load_targets


def main() -> None:
    quick = "--quick" in sys.argv
    numbers = [arg for arg in sys.argv[1:] if arg != "--quick"]
    defaults = ["50", "2", "2"] if quick else ["1000", "15", "4"]
    servers, interval, rounds = (
        int(numbers[0] if numbers else defaults[0]),
        float(numbers[1] if len(numbers) > 1 else defaults[1]),
        int(numbers[2] if len(numbers) > 2 else defaults[2]),
    )
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        targets_file = Path(folder) / "targets.yaml"
        cli = Path(sys.executable).parent / "perf-pipelines"
        fleet = ["fleet", "--scenario", "scale", "--servers", str(servers), "--port", str(port)]
        process = subprocess.Popen(
            [cli, *fleet, "--write-targets", str(targets_file)], stdout=subprocess.DEVNULL
        )
        try:
            wait_for_http(f"http://127.0.0.1:{port}/", timeout_s=60)
            targets = load_targets(targets_file)
            limits = ScrapeLimits(timeout_s=30, concurrency=64)
            asyncio.run(collect(targets, limits))  # warm-up round
            cpu_start, wall_start = process_cpu_seconds(process.pid), time.monotonic()
            rounds_done = asyncio.run(collect(targets, limits, samples=rounds, interval_s=interval))
            wall = time.monotonic() - wall_start
            cpu = process_cpu_seconds(process.pid) - cpu_start
        finally:
            stop_process(process)
    down = sum(1 for results in rounds_done for r in results if not r.up)
    scrapes = servers * rounds
    table = markdown_table(
        [
            "servers",
            "scrape interval (s)",
            "wall (s)",
            "simulator CPU (s)",
            "CPU share of one core",
            "CPU ms per scrape",
            "failed scrapes",
        ],
        [
            [
                servers,
                f"{interval:g}",
                f"{wall:.1f}",
                f"{cpu:.1f}",
                f"{cpu / wall:.0%}",
                f"{cpu / scrapes * 1000:.2f}",
                down,
            ]
        ],
    )
    summary = [
        SummaryRow(
            what=f"fleet simulator serving {servers:,} servers scraped every {interval:g} s",
            ours=f"{cpu / wall:.0%} of one core",
            peer="—",
            ratio="—",
            goal="—",
            met=None,
        )
    ]
    report(
        BenchResult(
            name="simulator",
            command="python bench/bench_simulator.py",
            table=table,
            summary=summary,
        )
    )


if __name__ == "__main__":
    main()
