"""The server model: capacity arithmetic, roofline and monotonic responses to settings."""

import math

import pytest

from perf_lab.simulator.exposition import VLLM_BUCKETS
from perf_lab.simulator.fleet import Fleet, ServerSpec
from perf_lab.simulator.model import ServerModel, StartupError, Workload
from perf_lab.simulator.scenarios import (
    LLAMA_8B,
    LLAMA_70B,
    QWEN_7B,
    kv_pressure,
    queue_saturation,
)
from perf_lab.simulator.settings import (
    SettingsError,
    hardware_error,
    to_knobs,
    validate_settings,
)
from perf_pipelines.hardware import GIB, gpu_by_name, model_by_name


def _model(engine: str, model: str, gpu: str, gpus: int, **settings: object) -> ServerModel:
    knobs = to_knobs(engine, validate_settings(engine, settings), gpus)
    return ServerModel(
        gpu_by_name(gpu), gpus, model_by_name(model), knobs, VLLM_BUCKETS, Workload(), 0.0, 1
    )


def test_kv_capacity_of_llama_8b_fp16_on_a100_by_hand() -> None:
    server = _model("vllm", LLAMA_8B, "A100-80GB", 1, gpu_memory_utilization=0.9)
    # 2 (K,V) × 32 layers × 8 KV heads × 128 dims × 2 bytes = 131,072 bytes per token
    assert server.kv_bytes_per_token == 131_072
    free = 80 * GIB * 0.9 - 8.03e9 * 2 - 1.5 * GIB
    assert server.kv_capacity_tokens == math.floor(free / 131_072)
    assert 440_000 < server.kv_capacity_tokens < 470_000


def test_fp8_kv_cache_doubles_capacity_per_byte() -> None:
    fp16 = _model("vllm", LLAMA_8B, "H100-SXM-80GB", 1)
    fp8 = _model("vllm", LLAMA_8B, "H100-SXM-80GB", 1, kv_cache_dtype="fp8")
    assert fp8.kv_capacity_tokens == pytest.approx(2 * fp16.kv_capacity_tokens, rel=0.001)


def test_weights_that_do_not_fit_fail_to_start() -> None:
    with pytest.raises(StartupError, match="out of memory"):
        _model("vllm", LLAMA_70B, "A100-80GB", 1)


def test_fp8_compute_needs_ada_or_hopper() -> None:
    def prefill_time(gpu: str, quantization: str | None) -> float:
        return _model("vllm", LLAMA_8B, gpu, 1, quantization=quantization).step_time(0, 8192, 0)

    # Unset --quantization: the checkpoint's own (here unquantized FP16) weights.
    assert prefill_time("H100-SXM-80GB", "fp8") < 0.6 * prefill_time("H100-SXM-80GB", None)
    # On Ampere FP8 weights are dequantised to FP16: no faster prefill, a little slower
    assert prefill_time("A100-80GB", "fp8") >= prefill_time("A100-80GB", None)


def test_decode_is_bandwidth_bound_and_grows_with_kv() -> None:
    server = _model("vllm", LLAMA_8B, "H100-SXM-80GB", 1)
    light, heavy = server.step_time(8, 0, 10_000), server.step_time(8, 0, 400_000)
    assert heavy > 2 * light


def _run(specs: list[ServerSpec], seconds: float = 300) -> Fleet:
    fleet = Fleet(specs, virtual=True, seed=3)
    fleet.advance(seconds)
    return fleet


def test_more_kv_memory_means_fewer_preemptions() -> None:
    def preemptions(utilization: float) -> float:
        (spec,) = kv_pressure()
        spec.settings["gpu_memory_utilization"] = utilization
        # At the scenario's 3.5 requests/s the 3,000-token prompts alone take ~60 % of the
        # four H100s (prefill is paid in full since the tick fix), so the queue grows and
        # refills KV whatever its size; at 2.5/s a roomy pool is enough.
        spec.workload.rate_rps = 2.5
        (server,) = _run([spec]).servers.values()
        assert server.model is not None
        return server.model.counters.preemptions

    tight, roomy = preemptions(0.56), preemptions(0.8)
    assert tight > 10
    assert roomy < tight / 3


def test_larger_batch_raises_throughput_and_itl_until_saturation() -> None:
    def measure(max_num_seqs: int) -> tuple[float, float]:
        (spec,) = queue_saturation()
        spec.settings["max_num_seqs"] = max_num_seqs
        (server,) = _run([spec], 200).servers.values()
        model = server.model
        assert model is not None
        return model.counters.generation_tokens / 200, model.itl.sum / model.itl.count

    (small_tps, small_itl), (big_tps, big_itl) = measure(8), measure(64)
    assert big_tps > 2 * small_tps
    assert big_itl > small_itl
    # past the offered load a larger cap changes nothing
    assert measure(512)[0] == pytest.approx(measure(1024)[0], rel=0.05)


def test_settings_are_validated_with_their_names() -> None:
    with pytest.raises(SettingsError, match="unknown vllm setting"):
        validate_settings("vllm", {"max_num_seq": 3})
    with pytest.raises(SettingsError, match="gpu_memory_utilization must be within"):
        validate_settings("vllm", {"gpu_memory_utilization": 1.5})
    with pytest.raises(SettingsError, match="max_num_seqs must be a whole number"):
        validate_settings("vllm", {"max_num_seqs": 2.5})
    with pytest.raises(SettingsError, match="kv_cache_dtype must be one of"):
        validate_settings("sglang", {"kv_cache_dtype": "int3"})


# -- what the engines accept (settings.SCHEMAS, from the engines' source) ------------------------


@pytest.mark.parametrize(
    ("engine", "setting", "value"),
    [
        ("vllm", "quantization", "w8a8-int8"),  # INT8 W8A8 is a compressed-tensors checkpoint
        ("vllm", "quantization", "w8a8_int8"),
        ("vllm", "quantization", "fp16"),  # a dtype, not a quantization method (--dtype)
        ("sglang", "quantization", "fp16"),
        ("tgi", "quantize", "fp16"),
        ("tgi", "kv_cache_dtype", "auto"),  # TGI has no "auto": leave the flag unset
        ("tgi", "kv_cache_dtype", "fp8"),
        ("llamacpp", "cache_type_k", "fp8"),
    ],
)
def test_values_the_real_engine_rejects_are_rejected(engine: str, setting: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"{setting} must be one of"):
        validate_settings(engine, {setting: value})


@pytest.mark.parametrize(
    ("engine", "setting", "value"),
    [
        ("vllm", "quantization", "compressed-tensors"),
        ("vllm", "quantization", None),
        ("vllm", "kv_cache_dtype", "fp8_e4m3"),
        ("sglang", "quantization", "w8a8_int8"),
        ("sglang", "quantization", "w8a8_fp8"),
        ("sglang", "kv_cache_dtype", "fp8_e5m2"),
        ("tgi", "quantize", "eetq"),
        ("tgi", "quantize", "bitsandbytes-nf4"),
        ("tgi", "kv_cache_dtype", "fp8_e4m3fn"),
        ("llamacpp", "cache_type_v", "q5_1"),
        ("llamacpp", "cache_type_k", "iq4_nl"),
    ],
)
def test_values_the_real_engine_accepts_are_accepted(
    engine: str, setting: str, value: str | None
) -> None:
    assert validate_settings(engine, {setting: value})[setting] == value


@pytest.mark.parametrize(
    ("engine", "settings", "gpu", "problem"),
    [
        ("vllm", {"quantization": "fp8"}, "T4", "compute capability 8.0"),
        ("tgi", {"quantize": "fp8"}, "T4", "compute capability 8.0"),
        ("sglang", {"quantization": "w8a8_fp8"}, "A100-80GB", "FP8 tensor cores"),
        ("vllm", {"quantization": "awq_marlin"}, "T4", "Marlin"),
        ("vllm", {"kv_cache_dtype": "fp8"}, "T4", "FP8 KV cache"),
        ("vllm", {"tensor_parallel_size": 2}, "H100-SXM-80GB", "needs 2 GPUs"),
    ],
)
def test_settings_the_hardware_cannot_run_are_refused(
    engine: str, settings: dict[str, object], gpu: str, problem: str
) -> None:
    merged = validate_settings(engine, settings)
    error = hardware_error(engine, merged, gpu_by_name(gpu), 1)
    assert error is not None and problem in error


@pytest.mark.parametrize(
    ("engine", "settings", "gpu"),
    [
        ("vllm", {"quantization": "fp8"}, "A100-80GB"),  # FP8 Marlin, weight-only
        ("vllm", {"quantization": "compressed-tensors"}, "T4"),  # INT8 W8A8 from 7.5
        ("sglang", {"quantization": "w8a8_int8"}, "A10"),
        ("tgi", {"quantize": "eetq"}, "T4"),
        ("vllm", {"quantization": "fp8", "kv_cache_dtype": "fp8"}, "H100-SXM-80GB"),
    ],
)
def test_settings_the_hardware_runs_pass(
    engine: str, settings: dict[str, object], gpu: str
) -> None:
    assert hardware_error(engine, validate_settings(engine, settings), gpu_by_name(gpu), 1) is None


def test_engine_values_map_to_what_the_model_computes_with() -> None:
    int8 = to_knobs("vllm", validate_settings("vllm", {"quantization": "compressed-tensors"}), 1)
    assert int8.weight_format == "w8a8_int8"
    assert to_knobs("vllm", validate_settings("vllm", {}), 1).weight_format == "fp16"
    tgi = to_knobs("tgi", validate_settings("tgi", {}), 1)
    assert (tgi.weight_format, tgi.kv_dtype) == ("fp16", "auto")
    budget = to_knobs("sglang", validate_settings("sglang", {"max_total_tokens": 50_000}), 1)
    assert budget.kv_capacity_tokens_override == 50_000


# -- the tick ------------------------------------------------------------------------------------


def _qwen_on_l4(workload: Workload, seed: int, **settings: object) -> ServerModel:
    knobs = to_knobs("vllm", validate_settings("vllm", settings), 1)
    gpu, model = gpu_by_name("L4"), model_by_name(QWEN_7B)
    return ServerModel(gpu, 1, model, knobs, VLLM_BUCKETS, workload, 0.0, seed)


def _served(tick: float, seed: int) -> tuple[float, float]:
    """Output tokens/s and goodput (finished requests/s with a mean time per output token of at
    most 90 ms) of a saturated server: Qwen2.5-7B on an L4, 32 sequences, 600-token prompts
    and 150-token answers (log-normal), offered 6 requests/s against ~2.7 served, 240 s after
    a 60 s warm-up. No TTFT in the SLO: the queue in front of a saturated server only grows."""
    workload = Workload(
        rate_rps=6.0, prompt_tokens_mean=600, output_tokens_mean=150, client_timeout_s=1e9
    )
    server = _qwen_on_l4(workload, seed, max_num_seqs=32)
    server.slo_tpot_s = 0.09
    server.advance(60, tick)
    tokens, good = server.counters.generation_tokens, server.counters.finished_within_slo
    server.advance(300, tick)
    c = server.counters
    return (c.generation_tokens - tokens) / 240, (c.finished_within_slo - good) / 240


def test_throughput_and_goodput_do_not_depend_on_the_tick() -> None:
    """Bounds on |ln(x(tick) / x(0.25 s))|, each the mean of seeds 0 and 1, from measurement:
    over seeds 0-7 at ticks 0.05, 0.5 and 2 s the largest deviation of one seed's run from the
    same seed at 0.25 s was 0.055 in throughput and 0.07 in goodput (arrivals are drawn per
    tick, so runs at different ticks see different requests: seed-to-seed spread ~1 %); the
    bounds are about 1.5 times that. Before the step fraction was carried, a 0.05 s tick gave
    no output at all and 0.5 s gave +13 % throughput and +15 % goodput against 0.25 s."""
    measured = {tick: [_served(tick, seed) for seed in (0, 1)] for tick in (0.05, 0.25, 0.5, 2.0)}
    mean = {
        tick: [sum(run[i] for run in runs) / 2 for i in (0, 1)] for tick, runs in measured.items()
    }
    (base_tokens, base_good) = mean[0.25]
    assert base_tokens > 300 and base_good > 1.5
    for tick, (tokens, good) in mean.items():
        assert tokens > 0 and good > 0, tick
        assert abs(math.log(tokens / base_tokens)) <= 0.08, (tick, tokens, base_tokens)
        assert abs(math.log(good / base_good)) <= 0.10, (tick, good, base_good)


def test_a_step_longer_than_the_tick_still_produces_tokens() -> None:
    fixed = Workload(
        rate_rps=2.0,
        prompt_tokens_mean=200,
        output_tokens_mean=128,
        length_sigma=0.0,
        shared_prefix_ratio=0.0,
        client_timeout_s=1e9,
    )

    def one_stream(tick: float) -> tuple[float, float]:
        server = _qwen_on_l4(fixed, 7, max_num_seqs=1)
        server.advance(40, tick)
        tokens = server.counters.generation_tokens
        server.advance(120, tick)
        return (server.counters.generation_tokens - tokens) / 80, server.step_time(1, 0, 300)

    rate, step = one_stream(0.02)
    assert step > 2.5 * 0.02  # an L4 reads 15 GB of weights per step: ~60 ms
    # about one token a step (a prefill step emits one too): as fast as with a longer tick
    assert 0.9 / step < rate < 1.1 / step
    assert rate == pytest.approx(one_stream(0.25)[0], rel=0.02)
