"""The closed-loop evaluation on real parts: the simulator served over loopback HTTP, the real
collector, detection, recommendation, and advice applied through the control API."""

from __future__ import annotations

import pytest

from perf_lab.evaluation.harness import EvaluationConfig, measure_goodput, settings_grid
from perf_lab.evaluation.scoring import evaluate, to_markdown
from perf_lab.simulator.scenarios import SCENARIOS, itl_breach, queue_saturation

# Shorter windows than the documented run: enough requests to rank settings, quick in CI.
FAST = EvaluationConfig(warmup_s=120, window_s=120, min_requests=150, workers=2)


def test_measuring_the_same_settings_twice_gives_the_same_goodput() -> None:
    spec = queue_saturation()[0]
    first = measure_goodput(spec, spec.settings, FAST)
    second = measure_goodput(spec, spec.settings, FAST)
    assert first == second
    assert 0 < first.throughput_rps < spec.workload.rate_rps  # saturated at 16 sequences


def test_goodput_counts_only_requests_within_the_slo() -> None:
    spec = itl_breach()[0]  # inter-token latency over its 45 ms SLO for nearly every request
    result = measure_goodput(spec, spec.settings, FAST)
    assert result.throughput_rps > 5
    assert result.goodput_rps < 0.05 * result.throughput_rps


def test_settings_that_do_not_fit_score_zero_with_the_reason() -> None:
    spec = itl_breach()[0]
    result = measure_goodput(spec, spec.settings | {"gpu_memory_utilization": 0.4}, FAST)
    assert result.goodput_rps == 0
    assert result.startup_error is not None and "out of memory" in result.startup_error


@pytest.mark.parametrize(
    ("scenario", "fp8_allowed"), [("kv_pressure", True), ("itl_breach", False)]
)
def test_oracle_grid_respects_the_hardware(scenario: str, fp8_allowed: bool) -> None:
    """H100 may try FP8 weights and KV; A100 (compute capability 8.0) tries INT8 W8A8 only."""
    grid = settings_grid(SCENARIOS[scenario]()[0])
    quantizations = {point["quantization"] for point in grid}
    kv_dtypes = {point["kv_cache_dtype"] for point in grid}
    if fp8_allowed:
        assert quantizations == {"fp16", "fp8"} and kv_dtypes == {"auto", "fp8"}
    else:
        assert quantizations == {"fp16", "w8a8-int8"} and kv_dtypes == {"auto"}
    assert all(point["gpu_memory_utilization"] <= 0.95 for point in grid)


def test_closed_loop_reaches_the_oracle_on_queue_saturation() -> None:
    evaluation = evaluate(["queue_saturation"], FAST)
    (score,) = evaluation.scores
    assert score.detected == {"queue_saturation", "ttft_slo_breach"} == score.expected
    first = score.loop.iterations[0]
    assert [r.engine_flag for r in first.recommendations] == ["--max-num-seqs"]
    assert first.applied == {"max_num_seqs": first.recommendations[0].recommended_value}
    assert not first.rejected
    # No step lost more than 5 %; the end is within 5 % of the grid search's best.
    goodputs = [g.goodput_rps for g in score.path]
    assert goodputs[-1] > 2 * goodputs[0]
    assert score.regressions == []
    assert score.share_of_oracle >= 0.95
    assert 1 <= score.steps <= FAST.max_iterations
    assert evaluation.f1 == 1.0
    report = to_markdown(evaluation, "perf-pipelines evaluate --scenario queue_saturation")
    assert "| queue_saturation | vllm-llama8b-queue |" in report
    assert "**not met**" not in report


def test_a_healthy_server_is_left_alone() -> None:
    evaluation = evaluate(["healthy"], FAST)
    (score,) = evaluation.scores
    assert score.detected == set() and score.steps == 0
    assert [it.recommendations for it in score.loop.iterations] == [[]]
    assert score.share_of_oracle >= 0.99
