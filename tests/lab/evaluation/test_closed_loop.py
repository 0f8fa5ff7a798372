"""The closed-loop evaluation on real parts: the simulator served over loopback HTTP, the real
collector, detection, recommendation, and advice checked and applied through the control API."""

from __future__ import annotations

import pytest

from perf_lab.evaluation.closed_loop import run_closed_loop
from perf_lab.evaluation.harness import (
    ORACLE_TIE,
    QUICK,
    EvaluationConfig,
    Measurements,
    engine_defaults,
    measure_goodput,
    oracle,
    refusal,
    settings_grid,
    tpe_best,
)
from perf_lab.evaluation.report import to_markdown
from perf_lab.evaluation.scoring import TPE_TRIALS, TUNING_SEED, evaluate_sets, summaries
from perf_lab.simulator.generator import deployment, plan_fleet, realize
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
    ("settings", "reason"),
    [
        ({"quantization": "w8a8-int8"}, "quantization must be one of"),  # no such vLLM method
        ({"tensor_parallel_size": 8}, "needs 8 GPUs"),
    ],
)
def test_a_configuration_the_engine_refuses_scores_zero(
    settings: dict[str, object], reason: str
) -> None:
    spec = itl_breach()[0]
    result = measure_goodput(spec, spec.settings | settings, FAST)
    assert result.goodput_rps == 0
    assert result.startup_error is not None and reason in result.startup_error


@pytest.mark.parametrize(
    ("scenario", "fp8_allowed"), [("kv_pressure", True), ("itl_breach", False)]
)
def test_oracle_grid_holds_only_what_the_engine_accepts_on_the_hardware(
    scenario: str, fp8_allowed: bool
) -> None:
    """H100 may try FP8 weights and KV; A100 (compute capability 8.0) tries the INT8 W8A8
    checkpoint vLLM really serves (compressed-tensors), never `w8a8-int8`."""
    spec = SCENARIOS[scenario]()[0]
    grid = settings_grid(spec)
    quantizations = {point["quantization"] for point in grid}
    kv_dtypes = {point["kv_cache_dtype"] for point in grid}
    if fp8_allowed:
        assert quantizations == {None, "fp8"} and kv_dtypes == {"auto", "fp8"}
    else:
        assert quantizations == {None, "compressed-tensors"} and kv_dtypes == {"auto"}
    assert all(refusal(spec, spec.settings | point) is None for point in grid)


def test_every_grid_point_of_a_generated_fleet_is_accepted_by_its_engine() -> None:
    for slot in plan_fleet(TUNING_SEED, 40):
        spec = deployment(slot)  # the grid depends on the deployment, not on the drawn load
        for point in settings_grid(spec):
            assert refusal(spec, spec.settings | point) is None, (slot, point)


def test_peers_search_the_same_space_and_never_beat_the_oracle() -> None:
    spec = queue_saturation()[0]
    measure = Measurements(spec, FAST)
    best = oracle(spec, FAST, measure)
    points = len(measure.cache)
    tpe = {n: tpe_best(spec, FAST, measure, n, seed=1) for n in TPE_TRIALS}
    assert len(measure.cache) == points  # every TPE trial is a grid point, measured once
    assert tpe[3].goodput_rps <= tpe[10].goodput_rps <= tpe[30].goodput_rps
    assert tpe[30].goodput_rps <= best.top_rps
    assert best.best.goodput_rps >= (1 - ORACLE_TIE) * best.top_rps
    defaults = measure(engine_defaults(spec))
    assert defaults.settings["max_num_seqs"] == 1024  # vLLM V1 on an 80 GB H100


def test_quick_evaluation_reports_both_sets_and_keeps_the_invariants() -> None:
    """The whole pipeline on a handful of servers. Goodput goals are not asserted on a sample
    this small; invalid values and advice on bursts must be zero on any sample."""
    sets = evaluate_sets([("tuning", TUNING_SEED, 4), ("report", 5, 4)], QUICK)
    assert [s.name for s in sets] == ["tuning", "report"]
    assert all(len(s.scores) == 4 for s in sets)
    report = to_markdown(sets, QUICK, "perf-pipelines evaluate --quick", 1.0)
    for heading in ("## Method", "## Tuning set (seed 20261125)", "## Report set (seed 5)"):
        assert heading in report
    assert "| vllm | 1 |" in report and "| all | 4 |" in report
    for server_set in sets:
        for summary in summaries(server_set):
            assert summary.invalid == 0, [s.loop.iterations for s in summary.scores]
            assert summary.burst_advice == 0
        for score in server_set.scores:
            assert score.error is None, score.error
            assert score.oracle_top_rps >= max(g.goodput_rps for g in score.tpe.values())


def test_a_burst_server_gets_no_advice() -> None:
    slot = next(s for s in plan_fleet(TUNING_SEED, 40) if s.archetype == "burst")
    server = realize(slot, QUICK.window_plan())
    assert server.expected == set()
    loop = run_closed_loop(server, QUICK)
    assert [it.recommendations for it in loop.iterations] == [[]]
