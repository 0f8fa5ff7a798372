"""Series as Prometheus returns them map to exactly the snapshots the exposition parser gives,
for every engine/version fixture (multi-model, DP ranks, OpenMetrics, renamed metrics)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from perf_pipelines.engines import snapshots_from_text
from perf_pipelines.sources.promapi import PrometheusConfig
from perf_pipelines.sources.prometheus import families_from_samples, read_recent
from perf_pipelines.targets import Target
from tests.sources.fake_prometheus import NO_TARGETS, fake_prometheus, matrix_from_exposition, ok

FIXTURES = sorted((Path(__file__).parents[1] / "fixtures" / "expositions").glob("*.txt"))


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
@pytest.mark.parametrize("hint", ["auto", "exact"])
def test_fixture_series_map_like_the_exposition(path: Path, hint: str) -> None:
    text = path.read_text()
    engine, expected = snapshots_from_text(text, None)
    target = Target(
        name="t",
        url="http://10.0.0.5:8000/metrics",
        engine=engine.value if hint == "exact" else "auto",
        model="from-targets-file",
    )
    for snapshot in expected:
        if snapshot.model is None:
            snapshot.model = target.model
    now = time.time()
    answer = ok(matrix_from_exposition(text, [now - 1, now], instance="10.0.0.5:8000"))
    with fake_prometheus({"/api/v1/targets": NO_TARGETS, "/api/v1/query_range": answer}) as fake:
        (read,) = asyncio.run(read_recent(PrometheusConfig(fake.url), [target], 2, 1.0))
    assert [r.up for r in read.results] == [True, True], read.latest.error
    assert read.latest.engine == engine
    assert read.latest.snapshots == expected
    assert read.latest.collected_at.timestamp() == pytest.approx(now, abs=1e-3)


def test_a_wrong_engine_hint_says_what_was_found() -> None:
    text = (FIXTURES[0].parent / "sglang_0_5.txt").read_text()
    target = Target(name="t", url="http://10.0.0.5:8000/metrics", engine="vllm")
    answer = ok(matrix_from_exposition(text, [time.time()], instance="10.0.0.5:8000"))
    with fake_prometheus({"/api/v1/targets": NO_TARGETS, "/api/v1/query_range": answer}) as fake:
        (read,) = asyncio.run(read_recent(PrometheusConfig(fake.url), [target], 1, 1.0))
    assert not read.latest.up
    assert read.latest.error.startswith(
        "no vLLM metrics found in Prometheus (found SGLang metrics)"
    )


def test_target_labels_are_dropped_and_exported_labels_restored() -> None:
    samples = [
        (
            {
                "__name__": "vllm:cache_config_info",
                "job": "vllm",
                "instance": "a:1",
                "namespace": "prod",
                "exported_job": "inner",
                "block_size": "16",
            },
            1.0,
        ),
        ({"__name__": "vllm:e2e_request_latency_seconds_bucket", "le": "+Inf"}, 3.0),
        ({"__name__": "process_cpu_seconds_total"}, 9.0),
    ]
    keys = frozenset({"vllm:cache_config_info", "vllm:e2e_request_latency_seconds"})
    families = families_from_samples(samples, keys, frozenset({"job", "instance", "namespace"}))
    assert set(families) == set(keys)
    (info,) = families["vllm:cache_config_info"].samples
    assert info.labels == {"job": "inner", "block_size": "16"}
    assert families["vllm:e2e_request_latency_seconds"].type == "histogram"
