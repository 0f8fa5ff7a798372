"""Scrape rounds of N loopback targets: wall time and the collector's CPU-seconds per scrape.

The targets are paths on one uvicorn server in another process (its CPU is not counted), each
answering with a realistic vLLM exposition. Usage: python bench/bench_collector.py [N ...]
"""

from __future__ import annotations

import asyncio
import platform
import resource
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from perf_pipelines.collection.collector import ScrapeLimits, collect
from perf_pipelines.targets import Target

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "expositions" / "vllm_v1_0_33.txt"
ROUNDS = 5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _wait_until_up(url: str) -> None:
    for _ in range(100):
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"benchmark server at {url} did not start")


def measure(count: int, base_url: str) -> dict[str, float]:
    targets = [
        Target(name=f"t{i}", url=f"{base_url}/t{i}/metrics", engine="vllm") for i in range(count)
    ]
    limits = ScrapeLimits(timeout_s=30, concurrency=64)
    asyncio.run(collect(targets[: min(count, 20)], limits))  # warm-up: imports, connections
    walls, cpus = [], []
    for _ in range(ROUNDS):
        cpu_before, wall_before = _cpu_seconds(), time.perf_counter()
        (results,) = asyncio.run(collect(targets, limits))
        walls.append(time.perf_counter() - wall_before)
        cpus.append(_cpu_seconds() - cpu_before)
        down = [r for r in results if not r.up]
        if down:
            raise RuntimeError(f"{len(down)} targets down: {down[0].error}")
    walls.sort()
    cpus.sort()
    return {
        "wall_s": walls[len(walls) // 2],
        "cpu_s": cpus[len(cpus) // 2],
        "cpu_ms_per_scrape": cpus[len(cpus) // 2] / count * 1000,
    }


def main() -> None:
    counts = [int(arg) for arg in sys.argv[1:]] or [200]
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("static_metrics_server.py")),
            str(FIXTURE),
            str(port),
        ]
    )
    try:
        base_url = f"http://127.0.0.1:{port}"
        _wait_until_up(base_url + "/ready")
        body_kb = FIXTURE.stat().st_size / 1024
        print(f"# collector benchmark — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
        print(
            f"machine: {platform.machine()}, {platform.processor() or 'cpu ?'}, "
            f"Python {platform.python_version()}; body {body_kb:.0f} KiB (vLLM 0.33 fixture); "
            f"median of {ROUNDS} rounds\n"
        )
        print("| targets | round wall (s) | collector CPU (s) | CPU ms per scrape |")
        print("|---|---|---|---|")
        for count in counts:
            figures = measure(count, base_url)
            print(
                f"| {count} | {figures['wall_s']:.2f} | {figures['cpu_s']:.2f} "
                f"| {figures['cpu_ms_per_scrape']:.2f} |"
            )
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
