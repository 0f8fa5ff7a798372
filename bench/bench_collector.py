"""Scrape rounds of N loopback targets: wall time and the collector's CPU-seconds per scrape.

The targets are paths on one uvicorn server in another process (its CPU is not counted), each
answering with a realistic vLLM exposition. Usage: python bench/bench_collector.py [--quick] [N ...]
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from benchkit import (
    EXPOSITIONS,
    BenchResult,
    SummaryRow,
    free_port,
    markdown_table,
    report,
    self_cpu_seconds,
    stop_process,
    wait_for_http,
)

from perf_pipelines.collection.collector import ScrapeLimits, collect
from perf_pipelines.targets import Target

FIXTURE = EXPOSITIONS / "vllm_v1_0_33.txt"
GOAL_TARGETS, GOAL_WALL_S = 1000, 10.0


def measure(count: int, base_url: str, rounds: int) -> dict[str, float]:
    targets = [
        Target(name=f"t{i}", url=f"{base_url}/t{i}/metrics", engine="vllm") for i in range(count)
    ]
    limits = ScrapeLimits(timeout_s=30, concurrency=64)
    asyncio.run(collect(targets[: min(count, 20)], limits))  # warm-up: imports, connections
    walls, cpus = [], []
    for _ in range(rounds):
        cpu_before, wall_before = self_cpu_seconds(), time.perf_counter()
        (results,) = asyncio.run(collect(targets, limits))
        walls.append(time.perf_counter() - wall_before)
        cpus.append(self_cpu_seconds() - cpu_before)
        down = [r for r in results if not r.up]
        if down:
            raise RuntimeError(f"{len(down)} targets down: {down[0].error}")
    walls.sort()
    cpus.sort()
    return {"wall_s": walls[len(walls) // 2], "cpu_s": cpus[len(cpus) // 2]}


def main() -> None:
    quick = "--quick" in sys.argv
    counts = [int(arg) for arg in sys.argv[1:] if arg.isdigit()] or (
        [50] if quick else [200, GOAL_TARGETS]
    )
    rounds = 2 if quick else 5
    port = free_port()
    static_server = Path(__file__).with_name("static_metrics_server.py")
    server = subprocess.Popen([sys.executable, str(static_server), str(FIXTURE), str(port)])
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_for_http(base_url + "/ready")
        rows: list[list[object]] = []
        for count in counts:
            figures = measure(count, base_url, rounds)
            cpu_ms = figures["cpu_s"] / count * 1000
            rows.append(
                [count, f"{figures['wall_s']:.2f}", f"{figures['cpu_s']:.2f}", f"{cpu_ms:.2f}"]
            )
        at_goal_size = count == GOAL_TARGETS
        summary = [
            SummaryRow(
                what=f"one scrape round, {count:,} loopback targets (72 KiB vLLM bodies)",
                ours=f"{figures['wall_s']:.1f} s wall, {cpu_ms:.1f} ms CPU per scrape",
                peer="—",
                ratio="—",
                goal="≤ 10 s" if at_goal_size else "—",
                met=figures["wall_s"] <= GOAL_WALL_S if at_goal_size else None,
            )
        ]
    finally:
        stop_process(server)
    report(
        BenchResult(
            name="collector",
            command="python bench/bench_collector.py",
            table=markdown_table(
                ["targets", "round wall (s)", "collector CPU (s)", "CPU ms per scrape"], rows
            )
            + f"\n\nMedian of {rounds} rounds; concurrency 64; body {FIXTURE.name}.",
            summary=summary,
            versions={"httpx": version("httpx"), "httpcore": version("httpcore")},
        )
    )


if __name__ == "__main__":
    main()
