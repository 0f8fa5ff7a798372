"""Parse throughput of our exposition parser against prometheus_client's, side by side.

For each fixture: prometheus_client's `text_string_to_metric_families` (consuming every sample),
our parser with `keep` = the families the adapters need (what the collector does), and our parser
building every family. Usage: python bench/bench_parser.py
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from perf_pipelines.collection.exposition import parse_exposition
from perf_pipelines.engines import wanted_families

EXPOSITIONS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "expositions"
FIXTURES = [
    "vllm_v1_0_33.txt",
    "vllm_multi_model.txt",
    "sglang_0_5.txt",
    "tgi_3_3.txt",
    "llamacpp_current.txt",
]
BUDGET_S = 1.0  # per measurement


def _rate(fn: Callable[[], object], size: int) -> float:
    """MB/s over repeated calls for about BUDGET_S (best of three batches)."""
    fn()
    best = 0.0
    for _ in range(3):
        calls, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < BUDGET_S / 3:
            fn()
            calls += 1
        best = max(best, calls * size / elapsed / 1e6)
    return best


def main() -> None:
    keep = wanted_families(None)
    print(f"# parser benchmark — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {platform.machine()}, Python {platform.python_version()}\n")
    print(
        "| fixture | KiB | prometheus_client MB/s | ours, needed families MB/s | ratio "
        "| ours, every family MB/s | ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in FIXTURES:
        text = (EXPOSITIONS / name).read_text()
        size = len(text.encode())
        baseline = _rate(
            lambda t=text: [list(f.samples) for f in text_string_to_metric_families(t)], size
        )
        kept = _rate(lambda t=text: parse_exposition(t, keep=keep), size)
        full = _rate(lambda t=text: parse_exposition(t), size)
        ratio = kept / baseline
        print(
            f"| {name} | {size / 1024:.0f} | {baseline:.1f} | {kept:.1f} | **{ratio:.1f}×** "
            f"| {full:.1f} | {full / baseline:.1f}× |"
        )


if __name__ == "__main__":
    main()
