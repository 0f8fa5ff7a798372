"""Every tuning rule through `recommend()`, on small realistic windows (15 s samples).

Input is built as the pipeline builds it: canonical rows → `window_stats` → `detect` →
`recommend`. Step sizes of the memory and batch rules are asserted as contract properties
(direction, bounds, strict movement) rather than exact numbers.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from perf_pipelines.analysis.detection import detect
from perf_pipelines.analysis.window import window_stats
from perf_pipelines.engines.canonical import Histogram
from perf_pipelines.findings import Recommendation, recommendation_id
from perf_pipelines.recommendations.rules import QUALITY_NOTE, contradictions, recommend
from perf_pipelines.targets import Target
from tests.support.windows import frame, itl_histogram, window_bounds

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
QWEN_7B = "Qwen/Qwen2.5-7B-Instruct"
# vLLM's default TTFT and request-latency buckets (engine-metrics.md §2.5), shortened.
TTFT_BOUNDS = (0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
QUEUE_BOUNDS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0)
FP8_GPUS = ["H100", "L4"]
PRE_ADA_GPUS = ["A100-80GB", "A10G"]


# A release of each engine the truth table covers: its defaults are the ones assumed.
VERSIONS = {"vllm": "0.10.2", "sglang": "0.4.6", "tgi": "3.3.4", "llamacpp": "b5000"}


def _target(name: str = "vllm-a", engine: str = "vllm", **fields: Any) -> Target:
    fields.setdefault("version", VERSIONS[engine])
    return Target.model_validate(
        {"name": name, "url": f"http://127.0.0.1:8000/{name}/metrics", "engine": engine, **fields}
    )


def _recommend(
    rows: list[dict[str, Any]],
    target: Target | None = None,
    *,
    name: str = "vllm-a",
    engine: str = "vllm",
    model: str | None = LLAMA_8B,
    extra: dict[str, float] | None = None,
) -> list[Recommendation]:
    data = frame(rows, target=name, engine=engine, model=model)
    if extra is not None:
        data["extra"] = [extra] * len(data)
    targets = {target.name: target} if target else {}
    stats = window_stats(data, targets, *window_bounds(data))
    recommendations = recommend(stats, detect(stats, targets).reports, targets)
    # Whatever the input, advice for one target never pulls one knob two ways.
    assert contradictions(recommendations) == []
    assert len({(r.target, r.parameter) for r in recommendations}) == len(recommendations)
    for rec in recommendations:
        if rec.capability == "quantization_optimization" or "fp8" in str(rec.recommended_value):
            assert QUALITY_NOTE in rec.rationale
    return recommendations


def _by_parameter(recommendations: list[Recommendation]) -> dict[str, Recommendation]:
    return {r.parameter: r for r in recommendations}


def _histogram(bounds: tuple[float, ...], count: float, at_bucket: int) -> Histogram:
    """`count` observations, all in bucket `at_bucket` (cumulative counts)."""
    cumulative = (*(0.0 if i < at_bucket else count for i in range(len(bounds))), count)
    return Histogram(bounds, cumulative, sum=count * bounds[at_bucket], count=count)


def _sample(i: int, **overrides: Any) -> dict[str, Any]:
    """A busy but healthy vLLM server; `i` is the sample index (counters grow with it)."""
    values: dict[str, Any] = {
        "requests_running": 40.0,
        "requests_waiting": 0.0,
        "kv_cache_usage": 0.5,
        "kv_cache_capacity_tokens": 455_000.0,
        "preemptions_total": 3.0,
        "prompt_tokens_total": 12_000.0 * i,
        "generation_tokens_total": 6_000.0 * i,
        "requests_finished_total": 20.0 * i,
    }
    values.update(overrides)
    return values


def _kv_pressure(n: int = 8, kv: float = 0.93, **overrides: Any) -> list[dict[str, Any]]:
    """KV cache at 93–95 % (or `kv`) and two preemptions every 15 s: vLLM runs out of free
    blocks."""
    return [
        _sample(i, kv_cache_usage=kv + 0.01 * (i % 3), preemptions_total=3.0 + 2 * i, **overrides)
        for i in range(n)
    ]


def _queue(limit: float, waiting: float = 30.0, kv: float = 0.35) -> list[dict[str, Any]]:
    """Running pinned at the batch cap with a queue behind it."""
    return [
        _sample(i, requests_running=limit, requests_waiting=waiting + i, kv_cache_usage=kv)
        for i in range(8)
    ]


def _itl_breach(running: float = 40.0, waiting: float = 0.0) -> list[dict[str, Any]]:
    """Every token in the 75–100 ms ITL bucket (p95 ≈ 99 ms)."""
    return [
        _sample(
            i,
            requests_running=running,
            requests_waiting=waiting + (i if waiting else 0),
            itl_seconds=itl_histogram(600.0 * i, at_bucket=4),
        )
        for i in range(8)
    ]


def _ttft_breach(queue_bucket: int) -> list[dict[str, Any]]:
    """Long documents (12,000-token prompts, 20 per 15 s): TTFT p95 in (1.0, 2.5] s; queue
    time p95 in the given bucket of QUEUE_BOUNDS."""
    return [
        _sample(
            i,
            prompt_tokens_total=20 * 12_000.0 * i,
            ttft_seconds=_histogram(TTFT_BOUNDS, 20.0 * i, at_bucket=5),
            queue_seconds=_histogram(QUEUE_BOUNDS, 20.0 * i, at_bucket=queue_bucket),
        )
        for i in range(8)
    ]


def _quantified(text: str | None) -> bool:
    return text is not None and re.search(r"\d", text) is not None


# --- KV cache ------------------------------------------------------------------------------


@pytest.mark.parametrize("current", [0.6, 0.85, 0.93])
def test_vllm_kv_pressure_raises_gpu_memory_utilization_never_above_095(current: float) -> None:
    target = _target(
        hardware={"gpu": "H100", "count": 1}, config={"gpu_memory_utilization": current}
    )
    (rec,) = _recommend(_kv_pressure(), target)
    assert (rec.parameter, rec.engine_flag, rec.capability) == (
        "gpu_memory_utilization",
        "--gpu-memory-utilization",
        "kv_cache_optimization",
    )
    assert rec.direction == "raise"
    assert rec.current_value == current
    assert current < rec.recommended_value <= 0.95
    assert "--gpu-memory-utilization" in rec.rationale and str(current) in rec.rationale
    assert "assumed" not in rec.rationale
    # H100 + a known model: the effect is given in GiB and tokens, not just "more memory".
    assert "GiB" in rec.expected_effect and "tokens" in rec.expected_effect
    assert _quantified(rec.expected_effect)
    assert rec.evidence["kv_usage_mean"] >= 0.9
    assert rec.severity == "critical" and 0 < rec.confidence <= 0.95


@pytest.mark.parametrize("gpu", FP8_GPUS)
def test_at_the_memory_ceiling_fp8_kv_cache_on_ada_and_hopper(gpu: str) -> None:
    target = _target(hardware={"gpu": gpu, "count": 1}, config={"gpu_memory_utilization": 0.95})
    recommendations = _recommend(_kv_pressure(), target)
    assert "gpu_memory_utilization" not in _by_parameter(recommendations)
    rec = _by_parameter(recommendations)["kv_cache_dtype"]
    assert (rec.engine_flag, rec.recommended_value, rec.current_value) == (
        "--kv-cache-dtype",
        "fp8",
        "auto",
    )
    assert "compute capability" in rec.rationale and QUALITY_NOTE in rec.rationale
    assert "2×" in rec.expected_effect and "910,000" in rec.expected_effect  # 455,000 doubled
    assert rec.evidence["passed_over"] == [
        "gpu_memory_utilization: already 0.95, at the cap of 0.95"
    ]


@pytest.mark.parametrize("gpu", PRE_ADA_GPUS)
def test_at_the_memory_ceiling_ampere_gets_fp8_weights_weight_only_never_fp8_kv(gpu: str) -> None:
    target = _target(hardware={"gpu": gpu, "count": 1}, config={"gpu_memory_utilization": 0.95})
    recommendations = _recommend(_kv_pressure(), target)
    assert "kv_cache_dtype" not in _by_parameter(recommendations)
    (rec,) = recommendations
    # vLLM has no w8a8-int8 value; on Ampere --quantization fp8 runs weight-only (FP8 Marlin).
    assert (rec.capability, rec.parameter, rec.engine_flag, rec.recommended_value) == (
        "quantization_optimization",
        "quantization",
        "--quantization",
        "fp8",
    )
    assert "weight-only" in rec.rationale and QUALITY_NOTE in rec.rationale
    assert rec.evidence["step"]["fp8_support"] == "weight_only"


def test_at_the_memory_ceiling_turing_gets_fewer_sequences_never_fp8() -> None:
    target = _target(
        hardware={"gpu": "T4", "count": 1},
        config={"gpu_memory_utilization": 0.95, "max_num_seqs": 64},
    )
    (rec,) = _recommend(_kv_pressure(), target)
    assert (rec.parameter, rec.direction) == ("max_num_seqs", "lower")
    # 85 % of the KV cache at 40 running and 94 % use: floor(0.85 × 40 / 0.94) = 36
    assert rec.recommended_value == 36, rec.evidence["step"]
    assert "Cost:" in rec.rationale and len(rec.evidence["passed_over"]) == 3


@pytest.mark.parametrize("gpu", PRE_ADA_GPUS)
def test_pre_ada_with_an_already_quantized_model_gets_fewer_sequences(gpu: str) -> None:
    target = _target(
        hardware={"gpu": gpu, "count": 1},
        config={"gpu_memory_utilization": 0.95, "quantization": "awq", "max_num_seqs": 64},
    )
    (rec,) = _recommend(_kv_pressure(), target)
    assert (rec.parameter, rec.direction, rec.report_kind) == (
        "max_num_seqs",
        "lower",
        "kv_cache_pressure",
    )
    assert any("already awq" in reason for reason in rec.evidence["passed_over"])


def test_fp8_kv_cache_already_on_moves_to_fp8_weights_on_hopper() -> None:
    target = _target(
        hardware={"gpu": "H100", "count": 2},
        config={"gpu_memory_utilization": 0.95, "kv_cache_dtype": "fp8"},
    )
    (rec,) = _recommend(_kv_pressure(), target)
    assert (rec.parameter, rec.recommended_value) == ("quantization", "fp8")
    assert "W8A8" in rec.rationale and QUALITY_NOTE in rec.rationale
    assert "GiB" in rec.expected_effect  # the model is known: weight memory freed, in GiB


@pytest.mark.parametrize("gpu", [None, "NVIDIA RTX PRO 6000 Blackwell"])
def test_unknown_hardware_gets_conservative_advice_never_silence(gpu: str | None) -> None:
    hardware = {"hardware": {"gpu": gpu}} if gpu else {}
    at_ceiling = _target(config={"gpu_memory_utilization": 0.95, "max_num_seqs": 64}, **hardware)
    (rec,) = _recommend(_kv_pressure(), at_ceiling)
    assert (rec.parameter, rec.direction) == ("max_num_seqs", "lower")
    assert all("fp8" not in str(r) for r in (rec.recommended_value, rec.parameter))
    itl = _target(config={"max_num_seqs": 64}, slo={"itl_p95_ms": 60}, **hardware)
    recommendations = _recommend(_itl_breach(), itl)
    assert [r.capability for r in recommendations] == ["batch_size_tuning"]


def test_mi300x_has_fp8_by_architecture_not_compute_capability() -> None:
    target = _target(
        hardware={"gpu": "AMD Instinct MI300X"}, config={"gpu_memory_utilization": 0.95}
    )
    (rec,) = _recommend(_kv_pressure(), target)
    assert (rec.parameter, rec.recommended_value) == ("kv_cache_dtype", "fp8")
    assert "gfx942" in rec.rationale


def test_sglang_kv_pressure_and_retractions_use_sglang_flags() -> None:
    target = _target(
        "sglang-a",
        "sglang",
        hardware={"gpu": "A100-80GB"},
        config={"mem_fraction_static": 0.8, "schedule_conservativeness": 1.0},
    )
    rows = _kv_pressure(kv_cache_capacity_tokens=88_000.0)
    recs = _by_parameter(_recommend(rows, target, name="sglang-a", engine="sglang", model=QWEN_7B))
    # KV high and retracting: one bottleneck (KV pressure), its first rung is more memory.
    assert set(recs) == {"mem_fraction_static"}
    memory = recs["mem_fraction_static"]
    assert memory.engine_flag == "--mem-fraction-static" and memory.direction == "raise"
    assert 0.8 < memory.recommended_value <= 0.95
    assert "--mem-fraction-static" in memory.rationale
    # Retractions with the KV cache far from full: SGLang's admission is too optimistic.
    rows = _kv_pressure(kv=0.55, kv_cache_capacity_tokens=88_000.0)
    recs = _by_parameter(_recommend(rows, target, name="sglang-a", engine="sglang", model=QWEN_7B))
    retract = recs["schedule_conservativeness"]
    assert retract.engine_flag == "--schedule-conservativeness"
    assert retract.report_kind == "preemption"
    assert retract.recommended_value > 1.0 and "--schedule-conservativeness" in retract.rationale


def test_sglang_at_the_ceiling_on_l4_gets_its_own_fp8_kv_spelling() -> None:
    target = _target(
        "sglang-a", "sglang", hardware={"gpu": "L4"}, config={"mem_fraction_static": 0.95}
    )
    recs = _by_parameter(
        _recommend(_kv_pressure(), target, name="sglang-a", engine="sglang", model=QWEN_7B)
    )
    assert recs["kv_cache_dtype"].recommended_value == "fp8_e4m3"
    assert "mem_fraction_static" not in recs


# --- batch size ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("engine", "parameter", "flag", "limit"),
    [
        ("vllm", "max_num_seqs", "--max-num-seqs", 16),
        ("sglang", "max_running_requests", "--max-running-requests", 32),
        ("llamacpp", "parallel", "--parallel", 4),
    ],
)
def test_queue_raises_the_batch_limit_within_the_kv_headroom_and_at_most_fourfold(
    engine: str, parameter: str, flag: str, limit: int
) -> None:
    name = f"{engine}-a"
    target = _target(name, engine, config={parameter: limit})
    rows = _queue(limit, waiting=100.0)  # a long queue would justify far more than ×2
    if engine == "llamacpp":  # llama.cpp exports no KV gauge
        for row in rows:
            row["kv_cache_usage"] = None
    (rec,) = _recommend(rows, target, name=name, engine=engine)
    assert (rec.parameter, rec.engine_flag, rec.direction) == (parameter, flag, "raise")
    assert rec.current_value == limit
    # ×4 at most where the KV gauge shows room (and never past 85 % of it), ×2 where it cannot
    # be seen (llama.cpp): a long queue would justify far more.
    bound = 2 * limit if engine == "llamacpp" else min(4 * limit, int(0.85 * limit / 0.35))
    assert limit < rec.recommended_value <= bound, rec.evidence["step"]
    assert isinstance(rec.recommended_value, int)
    assert flag in rec.rationale and rec.report_kind == "queue_saturation"
    assert _quantified(rec.expected_effect)
    if engine == "llamacpp":
        assert "--ctx-size" in rec.rationale


def test_queue_raise_keeps_projected_kv_use_below_pressure() -> None:
    target = _target(config={"max_num_seqs": 16})
    (rec,) = _recommend(_queue(16, kv=0.6), target)
    # 16 × 0.85 / 0.6 = 22.7: more would push the KV cache towards pressure
    assert rec.recommended_value == 22, rec.evidence["step"]
    assert "60%" in rec.rationale  # the KV room the advice relies on is stated


def test_queue_with_kv_under_pressure_never_raises_concurrency() -> None:
    target = _target(hardware={"gpu": "H100"}, config={"max_num_seqs": 16})
    rows = _kv_pressure(requests_running=16.0, requests_waiting=30.0)
    recs = _by_parameter(_recommend(rows, target))
    assert "max_num_seqs" not in recs
    assert all(r.direction != "raise" or r.capability != "batch_size_tuning" for r in recs.values())
    assert recs["gpu_memory_utilization"].direction == "raise"


def test_queue_near_but_not_at_kv_pressure_climbs_past_the_raise() -> None:
    # KV at 85 %: not a sustained pressure report, but no room to grow concurrency either; with
    # the memory at its cap and no FP8, what is left is capacity.
    target = _target(config={"max_num_seqs": 16, "gpu_memory_utilization": 0.95})
    (rec,) = _recommend(_queue(16, kv=0.85), target)
    assert (rec.parameter, rec.recommended_value) == ("replicas", "+1")
    assert "no room for more than 16" in rec.evidence["passed_over"][0]
    with_memory = _target(hardware={"gpu": "H100"}, config={"max_num_seqs": 16})
    (rec,) = _recommend(_queue(16, kv=0.85), with_memory)
    assert (rec.parameter, rec.direction) == ("gpu_memory_utilization", "raise")


def test_itl_breach_lowers_the_batch_limit_even_with_a_queue() -> None:
    target = _target(config={"max_num_seqs": 64}, slo={"itl_p95_ms": 60})
    rows = _itl_breach(running=64.0, waiting=20.0)  # queue saturation *and* ITL breach
    recs = _recommend(rows, target)
    (rec,) = [r for r in recs if r.parameter == "max_num_seqs"]
    assert rec.direction == "lower" and rec.report_kind == "itl_slo_breach"
    assert 32 <= rec.recommended_value < 64  # at most ÷2 per step
    assert "--max-num-seqs" in rec.rationale and "60 ms" in rec.expected_effect
    assert not any(r.direction == "raise" and r.capability == "batch_size_tuning" for r in recs)


def test_itl_breach_lowers_the_batch_first_fp8_weights_when_it_cannot() -> None:
    target = _target(hardware={"gpu": "H100"}, config={"max_num_seqs": 256}, slo={"itl_p95_ms": 60})
    recs = _by_parameter(_recommend(_itl_breach(), target))
    assert set(recs) == {"max_num_seqs"}
    assert 128 <= recs["max_num_seqs"].recommended_value < 256
    # One sequence at a time and still too slow per token: fewer bytes per decode step.
    at_one = _target(hardware={"gpu": "H100"}, config={"max_num_seqs": 1}, slo={"itl_p95_ms": 60})
    recs = _by_parameter(_recommend(_itl_breach(running=1.0), at_one))
    assert recs["quantization"].recommended_value == "fp8"


def test_ttft_breach_not_caused_by_queueing_raises_the_prefill_budget() -> None:
    target = _target(config={"max_num_batched_tokens": 2048}, slo={"ttft_p95_ms": 800})
    (rec,) = _recommend(_ttft_breach(queue_bucket=0), target)  # queue p95 ≤ 0.3 s
    assert (rec.parameter, rec.engine_flag, rec.direction) == (
        "max_num_batched_tokens",
        "--max-num-batched-tokens",
        "raise",
    )
    # 12,000-token prompts: the next power of two is 16,384, at most ×4 of 2,048 in one step
    assert rec.recommended_value == 8192, rec.evidence["step"]
    assert rec.report_kind == "ttft_slo_breach" and "--max-num-batched-tokens" in rec.rationale


def test_ttft_breach_caused_by_queueing_below_the_cap_raises_the_prefill_budget() -> None:
    # The queue is most of TTFT (p95 ≈ 2 s of ≈ 2.4 s) but the batch is not full and the KV cache
    # has room: each step admits a budget of prompt tokens, so the budget is what holds them.
    target = _target(config={"max_num_batched_tokens": 2048}, slo={"ttft_p95_ms": 800})
    (rec,) = _recommend(_ttft_breach(queue_bucket=5), target)
    assert (rec.parameter, rec.direction) == ("max_num_batched_tokens", "raise")
    assert "Requests wait although the batch is not full" in rec.rationale


def test_ttft_breach_without_a_queue_histogram_does_not_invent_a_queue_time() -> None:
    target = _target("sglang-a", "sglang", slo={"ttft_p95_ms": 800})
    rows = _ttft_breach(queue_bucket=0)
    for row in rows:
        row["queue_seconds"] = None
    (rec,) = _recommend(rows, target, name="sglang-a", engine="sglang", model=QWEN_7B)
    assert rec.parameter == "chunked_prefill_size"
    assert "queue p95 0 ms" not in rec.rationale


# --- what gets no advice -------------------------------------------------------------------


def test_tgi_without_a_kv_gauge_is_not_guessed_at() -> None:
    target = _target("tgi-a", "tgi", hardware={"gpu": "H100"})
    rows = [
        {
            "requests_running": 32.0,
            "requests_waiting": 20.0 + i,
            "generation_tokens_total": 5_000.0 * i,
            "requests_finished_total": 10.0 * i,
        }
        for i in range(8)
    ]
    data = frame(rows, target="tgi-a", engine="tgi", model=None)
    stats = window_stats(data, {"tgi-a": target}, *window_bounds(data))
    detection = detect(stats, {"tgi-a": target})
    assert "kv_cache_pressure" not in {r.kind for r in detection.reports}
    assert any("no KV-cache usage gauge" in reason for reason in detection.not_judged["tgi-a"])
    # The queue is real, but TGI batches by tokens: no count cap to raise and no memory fraction;
    # whatever is advised makes room in the token budget instead.
    for rec in _recommend(rows, target, name="tgi-a", engine="tgi", model=None):
        assert rec.parameter in ("kv_cache_dtype", "quantize", "replicas"), rec.parameter


def test_tgi_reservation_proxy_at_the_limit_gets_no_memory_fraction_advice() -> None:
    target = _target("tgi-a", "tgi", hardware={"gpu": "A10G"})
    rows = [
        {"requests_running": 30.0, "requests_waiting": 0.0, "generation_tokens_total": 100.0 * i}
        for i in range(6)
    ]
    recs = _recommend(
        rows, target, name="tgi-a", engine="tgi", model=None, extra={"kv_reservation_ratio": 0.97}
    )
    # No memory-fraction knob for TGI and no FP8 on an A10G: 8-bit weights made at load time
    # (an AWQ value would need an AWQ checkpoint).
    (rec,) = recs
    assert (rec.parameter, rec.engine_flag, rec.recommended_value) == (
        "quantize",
        "--quantize",
        "eetq",
    )
    assert "kv_reservation_ratio" in rec.evidence["source"]


def test_a_target_that_is_down_gets_no_advice() -> None:
    target = _target(hardware={"gpu": "H100"}, config={"gpu_memory_utilization": 0.8})
    assert _recommend([{"down": "timeout after 5s"}] * 6, target) == []


def test_thin_data_gets_no_advice() -> None:
    target = _target(hardware={"gpu": "H100"}, config={"gpu_memory_utilization": 0.8})
    assert _recommend(_kv_pressure(n=2), target) == []


def test_underutilization_alone_gets_no_advice() -> None:
    target = _target(config={"max_num_seqs": 256})
    rows = [_sample(i, requests_running=2.0, kv_cache_usage=0.05) for i in range(8)]
    assert _recommend(rows, target) == []


# --- identity, consistency and current values ----------------------------------------------


def test_ids_are_deterministic_and_follow_the_advice() -> None:
    target = _target(hardware={"gpu": "H100"}, config={"gpu_memory_utilization": 0.8})
    first = _recommend(_kv_pressure(), target)
    second = _recommend(_kv_pressure(), target)
    assert [r.id for r in first] == [r.id for r in second] and first
    (rec,) = first
    assert rec.id == recommendation_id(rec.target, rec.model, rec.parameter, rec.recommended_value)
    other_value = recommendation_id(rec.target, rec.model, rec.parameter, 0.99)
    other_target = recommendation_id("vllm-b", rec.model, rec.parameter, rec.recommended_value)
    assert len({rec.id, other_value, other_target}) == 3
    assert re.fullmatch(r"rec-[0-9a-f]{24}", rec.id)


def test_contradictions_flags_a_knob_pulled_two_ways() -> None:
    target = _target(config={"max_num_seqs": 64}, slo={"itl_p95_ms": 60})
    (lower,) = [r for r in _recommend(_itl_breach(64.0, 20.0), target) if r.direction == "lower"]
    raise_ = Recommendation(
        lower.target,
        lower.engine,
        lower.model,
        "batch_size_tuning",
        "max_num_seqs",
        "--max-num-seqs",
        64,
        128,
        "raise --max-num-seqs from 64 to 128",
        {},
        None,
        0.5,
        "warning",
        "queue_saturation",
        "raise",
    )
    (problem,) = contradictions([lower, raise_])
    assert "vllm-a" in problem and "max_num_seqs" in problem and "128" in problem
    assert contradictions([lower, lower]) == []  # the same advice twice is not a contradiction
    elsewhere = Recommendation(**{**_fields(raise_), "target": "vllm-b"})
    assert contradictions([lower, elsewhere]) == []


def _fields(rec: Recommendation) -> dict[str, Any]:
    return {k: v for k, v in vars(rec).items() if k != "id"}


def test_targets_file_value_beats_the_server_settings() -> None:
    server_says = {"settings": {"gpu_memory_utilization": 0.9, "cache_dtype": "auto"}}
    rows = _kv_pressure(**server_says)
    hardware = {"hardware": {"gpu": "H100"}}
    (from_file,) = _recommend(rows, _target(config={"gpu_memory_utilization": 0.8}, **hardware))
    assert from_file.current_value == 0.8 and 0.8 < from_file.recommended_value <= 0.95
    (from_server,) = _recommend(rows, _target(**hardware))
    assert from_server.current_value == 0.9 and "assumed" not in from_server.rationale


def test_unknown_current_value_is_assumed_default_with_lower_confidence() -> None:
    hardware = {"hardware": {"gpu": "H100"}}
    (known,) = _recommend(
        _kv_pressure(), _target(config={"gpu_memory_utilization": 0.9}, **hardware)
    )
    (assumed,) = _recommend(_kv_pressure(), _target(**hardware))
    assert assumed.current_value == 0.9  # vLLM 0.10.2's default
    assert re.search(r"assumed .*vllm default", assumed.rationale)
    assert "assumed" not in known.rationale
    assert assumed.confidence < known.confidence


_CEILING = {"gpu_memory_utilization": 0.95}


@pytest.mark.parametrize(
    ("rows", "engine", "target_fields", "parameter"),
    [
        (_kv_pressure(), "vllm", {"config": {"gpu_memory_utilization": 0.95}}, "max_num_seqs"),
        (_kv_pressure(), "vllm", {"hardware": {"gpu": "L4"}, "config": _CEILING}, "kv_cache_dtype"),
        (_kv_pressure(kv=0.5), "sglang", {}, "schedule_conservativeness"),
        (_kv_pressure(), "vllm", {}, "gpu_memory_utilization"),
    ],
    ids=["cap", "fp8-kv", "conservativeness", "mem-fraction"],
)
def test_every_rule_says_when_it_assumed_the_current_value(
    rows: list[dict[str, Any]], engine: str, target_fields: dict[str, Any], parameter: str
) -> None:
    name = f"{engine}-a"
    target = _target(name, engine, **target_fields)
    rec = _by_parameter(_recommend(rows, target, name=name, engine=engine))[parameter]
    assumed = f"assumed to be the {engine} default" in rec.rationale
    inferred = "ran at once at most" in rec.rationale or "running plateau" in rec.rationale
    assert assumed or inferred, rec.rationale
    shown = rec.current_value
    if isinstance(shown, float):
        shown = f"{shown:g}"
    assert shown is None or str(shown) in rec.rationale


def test_an_unconfigured_cap_is_read_from_the_running_plateau_not_the_default() -> None:
    # 16 run with 30+ waiting and KV at 35 %: the cap in force is 16, whatever vLLM's default.
    (rec,) = _recommend(_queue(16), _target())
    assert rec.current_value == 16
    assert 16 < rec.recommended_value <= 38  # the KV headroom: floor(0.85 × 16 / 0.35)
    assert "running plateau" in rec.rationale and "from 16 to" in rec.rationale
    assert (
        rec.confidence < _recommend(_queue(16), _target(config={"max_num_seqs": 16}))[0].confidence
    )


def test_advice_says_what_it_could_not_rely_on() -> None:
    """An unknown version, a version past the truth table and an unknown GPU are said beside the
    advice; none of them silences it."""
    config = {"gpu_memory_utilization": 0.95, "max_num_seqs": 64}
    cases = {
        None: "engine version not given",
        "99.1.0": "outside the truth table",
        "banana": "not understood",
    }
    for version, said in cases.items():
        target = Target.model_validate(
            {
                "name": "vllm-a",
                "url": "http://127.0.0.1:8000/vllm-a/metrics",
                "engine": "vllm",
                "version": version,
                "hardware": {"gpu": "Quantum GPU 9000"},
                "config": config,
            }
        )
        (rec,) = _recommend(_kv_pressure(), target)
        limits = rec.evidence["limits"]
        assert any(said in line for line in limits), limits
        assert any("unknown GPU 'Quantum GPU 9000'" in line for line in limits), limits
        assert (rec.parameter, rec.direction) == ("max_num_seqs", "lower")


def test_itl_never_lowers_the_cap_below_what_the_load_keeps_in_flight() -> None:
    """20 requests finish per 15 s with 300 output tokens each: at a 60 ms SLO the load keeps
    ceil(1.2 × 1.33 × 300 × 0.06) = 29 in flight; a smaller cap would queue without bound."""
    target = _target(config={"max_num_seqs": 40}, slo={"itl_p95_ms": 60})
    (rec,) = _recommend(_itl_breach(running=40.0), target)
    step = rec.evidence["step"]
    assert step["load_floor"] == 29, step
    assert rec.recommended_value >= 29 and rec.direction == "lower"
    # Already at the floor: the cap is not the lever, the ladder moves on.
    at_floor = _target(config={"max_num_seqs": 29}, slo={"itl_p95_ms": 60})
    (rec,) = _recommend(_itl_breach(running=29.0), at_floor)
    assert rec.parameter != "max_num_seqs", rec


def test_itl_on_a_weight_bound_decode_quantizes_before_shrinking_the_batch() -> None:
    # Llama 3.1 70B on H100s with 4 short chats running: 141 GB of weights per step against a
    # few hundred MB of KV, so a smaller batch would not shorten the step.
    target = _target(
        hardware={"gpu": "H100", "count": 4},
        config={"max_num_seqs": 8},
        slo={"itl_p95_ms": 60},
    )
    rows = [{**row, "kv_cache_usage": 0.02} for row in _itl_breach(running=4.0)]
    (rec,) = _recommend(rows, target, model="meta-llama/Llama-3.1-70B-Instruct")
    assert (rec.parameter, rec.recommended_value) == ("quantization", "fp8")
    assert rec.evidence["step"]["weight_share_of_step_bytes"] > 0.5


def _tgi_at_budget(i: int) -> dict[str, Any]:
    """TGI with 31,000 of its 32,000-token budget reserved and a queue growing behind it."""
    return {
        "requests_running": 12.0 + i % 2,
        "requests_waiting": 20.0 + i,
        "kv_cache_capacity_tokens": 32_000.0,
        "settings": {"max_batch_total_tokens": 32_000},
        "extra": {"kv_reservation_ratio": (31_000.0 - 200 * (i % 3)) / 32_000.0},
        "prompt_tokens_total": 12_000.0 * i,
        "generation_tokens_total": 3_000.0 * i,
        "requests_finished_total": 10.0 * i,
    }


def test_tgi_budget_set_below_memory_is_raised_to_what_the_memory_holds() -> None:
    # Llama 3.1 8B on one H100: (80 GiB × 0.85 − 16 GB of weights) / 128 KiB per token ≈ 434k
    # tokens, far above the 32,000 the server reports: a cap someone set.
    target = _target("tgi-a", "tgi", hardware={"gpu": "H100"})
    rows = [_tgi_at_budget(i) for i in range(10)]
    recs = _by_parameter(_recommend(rows, target, name="tgi-a", engine="tgi"))
    rec = recs["max_batch_total_tokens"]
    assert (rec.engine_flag, rec.direction, rec.current_value) == (
        "--max-batch-total-tokens",
        "raise",
        32_000,
    )
    step = rec.evidence["step"]
    assert (
        rec.recommended_value == step["memory_budget_tokens"] and rec.recommended_value % 256 == 0
    )
    assert 400_000 < rec.recommended_value < 460_000, step
    # The GPU unknown: no memory figures, so the budget is left alone.
    unknown = _target("tgi-a", "tgi", hardware={"gpu": "Quantum GPU 9000"})
    recs = _by_parameter(_recommend(rows, unknown, name="tgi-a", engine="tgi"))
    assert "max_batch_total_tokens" not in recs and recs, recs
