"""Parse throughput of our exposition parser against prometheus_client's, side by side.

For each fixture: prometheus_client's `text_string_to_metric_families` (consuming every sample),
our parser with `keep` = the families the adapters need (what the collector does), and our parser
building every family. Usage: python bench/bench_parser.py [--quick]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from importlib.metadata import version

from benchkit import EXPOSITIONS, BenchResult, SummaryRow, markdown_table, report
from prometheus_client.parser import text_string_to_metric_families

from perf_pipelines.engines import wanted_families
from perf_pipelines.engines.exposition import parse_exposition

FIXTURES = [
    "vllm_v1_0_33.txt",
    "vllm_multi_model.txt",
    "sglang_0_5.txt",
    "tgi_3_3.txt",
    "llamacpp_current.txt",
]
BUDGET_S = 1.0  # per measurement; --quick: 0.1
GOAL_RATIO = 10.0


def _rate(fn: Callable[[], object], size: int, budget_s: float) -> float:
    """MB/s over repeated calls for about `budget_s` (best of three batches)."""
    fn()
    best = 0.0
    for _ in range(3):
        calls, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < budget_s / 3:
            fn()
            calls += 1
        best = max(best, calls * size / elapsed / 1e6)
    return best


def main() -> None:
    budget_s = 0.1 if "--quick" in sys.argv else BUDGET_S
    keep = wanted_families(None)
    rows, summary = [], []
    for name in FIXTURES:
        text = (EXPOSITIONS / name).read_text()
        size = len(text.encode())
        baseline = _rate(
            lambda t=text: [list(f.samples) for f in text_string_to_metric_families(t)],
            size,
            budget_s,
        )
        kept = _rate(lambda t=text: parse_exposition(t, keep=keep), size, budget_s)
        full = _rate(lambda t=text: parse_exposition(t), size, budget_s)
        rows.append(
            [
                name,
                f"{size / 1024:.0f}",
                f"{baseline:.1f}",
                f"{kept:.1f}",
                f"**{kept / baseline:.1f}×**",
                f"{full:.1f}",
                f"{full / baseline:.1f}×",
            ]
        )
        summary.append(
            SummaryRow(
                what=f"exposition parser, {name}, the families we read",
                ours=f"{kept:.1f} MB/s",
                peer=f"prometheus-client's parser: {baseline:.1f} MB/s",
                ratio=f"{kept / baseline:.1f}× faster",
                goal="≥ 10×",
                met=kept / baseline >= GOAL_RATIO,
            )
        )
    table = markdown_table(
        [
            "fixture",
            "KiB",
            "prometheus_client MB/s",
            "ours, needed families MB/s",
            "ratio",
            "ours, every family MB/s",
            "ratio",
        ],
        rows,
    )
    report(
        BenchResult(
            name="parser",
            command="python bench/bench_parser.py",
            table=table,
            summary=summary,
            versions={"prometheus-client": version("prometheus-client")},
        )
    )


if __name__ == "__main__":
    main()
