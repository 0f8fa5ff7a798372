"""The engine truth table: it loads, its facts are sane and sourced, and its answers hold."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from perf_pipelines.engines import truth
from perf_pipelines.engines.truth import (
    TruthTableError,
    Version,
    check_value,
    covered_versions,
    default_value,
    flag_fact,
    fp8_support,
    parse_version,
)
from perf_pipelines.hardware import GPUS, gpu_by_name, resolve_gpu

ENGINES = ("vllm", "sglang", "tgi", "llamacpp")
RECOMMENDED = {
    "vllm": {
        "gpu_memory_utilization",
        "max_num_seqs",
        "max_num_batched_tokens",
        "kv_cache_dtype",
        "quantization",
        "enable_prefix_caching",
        "enable_chunked_prefill",
        "max_model_len",
        "tensor_parallel_size",
    },
    "sglang": {
        "mem_fraction_static",
        "max_running_requests",
        "chunked_prefill_size",
        "schedule_conservativeness",
        "kv_cache_dtype",
        "quantization",
        "context_length",
        "tensor_parallel_size",
    },
    "tgi": {
        "max_concurrent_requests",
        "max_batch_prefill_tokens",
        "max_batch_total_tokens",
        "max_batch_size",
        "max_total_tokens",
        "max_input_tokens",
        "waiting_served_ratio",
        "quantize",
        "kv_cache_dtype",
        "cuda_memory_fraction",
        "tensor_parallel_size",
    },
    "llamacpp": {
        "parallel",
        "ctx_size",
        "batch_size",
        "ubatch_size",
        "cache_type_k",
        "cache_type_v",
        "cont_batching",
        "flash_attn",
        "n_gpu_layers",
    },
}


def v(engine: str, text: str) -> Version:
    version = parse_version(engine, text)
    assert version is not None, f"parse_version({engine!r}, {text!r}) gave None"
    return version


def every_release_point(engine: str) -> list[Version]:
    """Each range start and value since/until of an engine: the points where facts change."""
    spec = truth.load_table().engines[engine]
    points = {spec.covered_since}
    for param in spec.parameters.values():
        for r in param.ranges:
            points.update(p for p in (r.since, r.until) if p is not None)
        for value in param.values.values():
            points.update(p for p in (value.since, value.until) if p is not None)
    return sorted(p for p in points if spec.covers(p))


# --------------------------------------------------------------------------- the table itself


def test_table_loads_and_validates() -> None:
    table = truth.load_table()
    assert set(table.engines) == set(ENGINES), f"engines: {sorted(table.engines)}"
    problems = truth.validate(table)
    assert problems == [], f"problems: {problems}"


def test_every_recommended_flag_is_in_the_table() -> None:
    table = truth.load_table()
    for engine, wanted in RECOMMENDED.items():
        missing = wanted - set(table.engines[engine].parameters)
        assert not missing, f"{engine}: missing {sorted(missing)}"


def test_every_fact_names_a_repository_file_and_tag() -> None:
    for engine in truth.load_table().engines.values():
        for param in engine.parameters.values():
            assert param.restart_required, f"{engine.key}.{param.name} not marked restart"
            for r in param.ranges:
                source = r.source
                assert "/" in source.split()[0], f"{engine.key}.{param.name}: {source!r}"
                assert " @ " in source, f"{engine.key}.{param.name}: no tag in {source!r}"
            if param.values:
                assert param.values_source and " @ " in param.values_source, (
                    f"{engine.key}.{param.name}: values_source {param.values_source!r}"
                )


def test_defaults_lie_inside_their_own_range_or_choices() -> None:
    for engine in ENGINES:
        spec = truth.load_table().engines[engine]
        for name, param in spec.parameters.items():
            for r in param.ranges:
                fact = flag_fact(engine, r.since, name)
                assert fact is not None, f"{engine}.{name} has no fact at its own start {r.since}"
                if fact.default is None:
                    continue
                reason = check_value(engine, r.since, name, fact.default, GPUS["H100-SXM-80GB"])
                assert reason is None, f"{engine}.{name} default {fact.default!r}: {reason}"


def _raw_table() -> dict[str, Any]:
    text = truth.resources.files("perf_pipelines.engines").joinpath("truth_table.yaml").read_text()
    raw = yaml.safe_load(text)
    assert isinstance(raw, dict)
    return raw


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("vllm", "gpu_memory_utilization", 0, "default"), 1.5, "outside its own range"),
        (("vllm", "gpu_memory_utilization", 0, "source"), "somewhere", "lacks"),
        (("vllm", "gpu_memory_utilization", 0, "until"), "0.5.0", "not after since"),
        (("sglang", "kv_cache_dtype", 0, "default"), "fp9", "not among"),
    ],
)
def test_validation_catches_broken_entries(
    path: tuple[str, str, int, str], value: object, expected: str
) -> None:
    raw = copy.deepcopy(_raw_table())
    engine, parameter, index, key = path
    raw["engines"][engine]["parameters"][parameter]["ranges"][index][key] = value
    with pytest.raises(TruthTableError) as caught:
        truth.parse_table(raw)
    assert expected in str(caught.value), f"error was: {caught.value}"


def test_validation_catches_unknown_hardware_requirement() -> None:
    raw = copy.deepcopy(_raw_table())
    raw["engines"]["vllm"]["parameters"]["quantization"]["values"]["fp8"]["hardware"] = "fp9"
    with pytest.raises(TruthTableError) as caught:
        truth.parse_table(raw)
    assert "unknown hardware requirement" in str(caught.value), f"error was: {caught.value}"


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize(
    ("engine", "text", "expected"),
    [
        ("vllm", "0.10.2", "0.10.2"),
        ("vllm", "v0.10.2", "0.10.2"),
        ("vllm", "0.8.5.post1", "0.8.5"),
        ("vllm", "0.10.1.1", "0.10.1.1"),
        ("vllm", "0.11.0+cu128", "0.11.0"),
        ("tgi", "3.3.4", "3.3.4"),
        ("sglang", "0.4.6.post5", "0.4.6"),
        ("llamacpp", "b4567", "b4567"),
        ("llamacpp", "4567", "b4567"),
        ("llama.cpp", "version: 4567 (abcdef0)", "b4567"),
    ],
)
def test_parse_version(engine: str, text: str, expected: str) -> None:
    parsed = parse_version(engine, text)
    assert parsed is not None and str(parsed) == expected, f"{text!r} parsed as {parsed}"


@pytest.mark.parametrize(
    ("engine", "text"),
    [("vllm", None), ("vllm", "latest"), ("vllm", ""), ("llamacpp", "main"), ("nope", "1.0")],
)
def test_parse_version_rejects_what_it_cannot_read(engine: str, text: str | None) -> None:
    assert parse_version(engine, text) is None, f"{engine} {text!r} parsed"


def test_versions_compare() -> None:
    assert v("vllm", "0.9.2") < v("vllm", "0.10.0") < v("vllm", "0.10.1.1") < v("vllm", "0.10.2")
    assert v("vllm", "0.10") == v("vllm", "0.10.0"), "trailing zero changed the version"
    assert v("llamacpp", "b999") < v("llamacpp", "b3000")


def test_covered_versions_text() -> None:
    assert covered_versions("vllm") == "0.6.0 – 0.34.0", covered_versions("vllm")
    assert covered_versions("tgi") == "2.0.0 – 3.3.7", covered_versions("tgi")
    assert covered_versions("llamacpp").startswith("b3000"), covered_versions("llamacpp")
    assert covered_versions("nope") == ""


# --------------------------------------------------------------------------- key facts


def test_vllm_rejects_w8a8_int8_at_every_version() -> None:
    h100 = GPUS["H100-SXM-80GB"]
    versions: list[Version | None] = [None, *every_release_point("vllm"), v("vllm", "0.99.0")]
    for version in versions:
        for value in ("w8a8-int8", "w8a8_int8"):
            reason = check_value("vllm", version, "quantization", value, h100)
            assert reason is not None, f"vLLM {version} accepted --quantization {value}"
            assert "compressed-tensors" in reason, f"no hint in: {reason}"


def test_vllm_accepts_compressed_tensors_and_fp8_where_they_run() -> None:
    for version in (None, v("vllm", "0.6.0"), v("vllm", "0.10.2"), v("vllm", "0.34.0")):
        reason = check_value("vllm", version, "quantization", "compressed-tensors", GPUS["T4"])
        assert reason is None, f"vLLM {version} compressed-tensors on T4: {reason}"
        reason = check_value("vllm", version, "quantization", "fp8", GPUS["H100-SXM-80GB"])
        assert reason is None, f"vLLM {version} fp8 on H100: {reason}"


def test_sglang_accepts_w8a8_int8_from_0_4_2() -> None:
    for text in ("0.4.2", "0.4.10", "0.5.4", "0.5.23"):
        reason = check_value("sglang", v("sglang", text), "quantization", "w8a8_int8", GPUS["T4"])
        assert reason is None, f"SGLang {text} w8a8_int8 on T4: {reason}"
    reason = check_value("sglang", v("sglang", "0.4.1"), "quantization", "w8a8_int8", GPUS["T4"])
    assert reason is not None, "SGLang 0.4.1 accepted w8a8_int8 (added in 0.4.2)"
    reason = check_value(
        "sglang", v("sglang", "0.5.4"), "quantization", "w8a8_int8", GPUS["V100-32GB"]
    )
    assert reason is not None and "7.5" in str(reason), f"V100 (CC 7.0): {reason}"


FP8_VALUES = [
    ("vllm", "0.10.2", "kv_cache_dtype", "fp8"),
    ("vllm", "0.10.2", "quantization", "fp8"),
    ("vllm", None, "kv_cache_dtype", "fp8_e4m3"),
    ("sglang", "0.5.4", "kv_cache_dtype", "fp8_e4m3"),
    ("sglang", "0.5.4", "quantization", "w8a8_fp8"),
    ("sglang", "0.5.4", "quantization", "fp8"),
    ("tgi", "3.3.4", "kv_cache_dtype", "fp8_e4m3fn"),
    ("tgi", "3.3.4", "quantize", "fp8"),
]


@pytest.mark.parametrize(("engine", "version", "parameter", "value"), FP8_VALUES)
@pytest.mark.parametrize("gpu_name", ["T4", "A10", "A10G", "A100-80GB", None])
def test_fp8_rejected_without_fp8_compute(
    engine: str, version: str | None, parameter: str, value: str, gpu_name: str | None
) -> None:
    gpu = GPUS[gpu_name] if gpu_name else None
    parsed = v(engine, version) if version else None
    reason = check_value(engine, parsed, parameter, value, gpu)
    assert reason is not None, f"{engine} {version} {parameter}={value} accepted on {gpu_name}"


@pytest.mark.parametrize(("engine", "version", "parameter", "value"), FP8_VALUES)
@pytest.mark.parametrize("gpu_name", ["L4", "L40S", "H100-SXM-80GB", "H200", "B200", "MI300X"])
def test_fp8_accepted_with_fp8_compute(
    engine: str, version: str | None, parameter: str, value: str, gpu_name: str
) -> None:
    parsed = v(engine, version) if version else None
    reason = check_value(engine, parsed, parameter, value, GPUS[gpu_name])
    assert reason is None, f"{engine} {version} {parameter}={value} on {gpu_name}: {reason}"


def test_fp8_weight_only_only_when_allowed() -> None:
    a10 = GPUS["A10"]
    reason = check_value("vllm", v("vllm", "0.10.2"), "quantization", "fp8", a10)
    assert reason is not None and "weight-only" in reason, f"A10 fp8: {reason}"
    allowed = check_value(
        "vllm", v("vllm", "0.10.2"), "quantization", "fp8", a10, allow_weight_only=True
    )
    assert allowed is None, f"A10 fp8 with weight-only allowed: {allowed}"
    # FP8 KV cache is never weight-only: still rejected.
    kv = check_value(
        "vllm", v("vllm", "0.10.2"), "kv_cache_dtype", "fp8", a10, allow_weight_only=True
    )
    assert kv is not None, "FP8 KV cache accepted on an A10"


def test_tgi_kv_cache_dtype_values_and_since() -> None:
    h100 = GPUS["H100-SXM-80GB"]
    fact = flag_fact("tgi", v("tgi", "3.3.4"), "kv_cache_dtype")
    assert fact is not None and fact.choices == ("fp8_e4m3fn", "fp8_e5m2"), f"fact: {fact}"
    assert flag_fact("tgi", v("tgi", "2.3.1"), "kv_cache_dtype") is None, "exists before 2.4.0"
    reason = check_value("tgi", v("tgi", "3.3.4"), "kv_cache_dtype", "auto", h100)
    assert reason is not None, "TGI accepted --kv-cache-dtype auto"
    reason = check_value("tgi", v("tgi", "3.3.4"), "kv_cache_dtype", "fp8_e5m2", GPUS["MI300X"])
    assert reason is not None and "NVIDIA" in reason, f"e5m2 on ROCm: {reason}"


def test_tgi_quantize_choices_by_version() -> None:
    old = flag_fact("tgi", v("tgi", "2.0.4"), "quantize")
    new = flag_fact("tgi", v("tgi", "3.3.4"), "quantize")
    assert old is not None and new is not None
    assert old.choices is not None and "marlin" not in old.choices, f"2.0.4: {old.choices}"
    assert new.choices is not None and {"awq", "gptq", "fp8", "compressed-tensors"} <= set(
        new.choices
    ), f"3.3.4: {new.choices}"
    assert "bitsandbytes-nf4" in new.choices, f"clap names: {new.choices}"


def test_vllm_kv_cache_dtype_choices_by_version() -> None:
    early = flag_fact("vllm", v("vllm", "0.6.0"), "kv_cache_dtype")
    late = flag_fact("vllm", v("vllm", "0.11.0"), "kv_cache_dtype")
    assert early is not None and early.choices == ("auto", "fp8", "fp8_e5m2", "fp8_e4m3"), early
    assert late is not None and late.choices is not None and "bfloat16" in late.choices, late


def test_llamacpp_quantized_v_cache_needs_flash_attention() -> None:
    version = v("llamacpp", "b5000")
    reason = check_value("llamacpp", version, "cache_type_v", "q8_0", None)
    assert reason is not None and "flash_attn" in reason, f"q8_0 V without FA: {reason}"
    ok = check_value(
        "llamacpp", version, "cache_type_v", "q8_0", None, settings={"flash_attn": True}
    )
    assert ok is None, f"q8_0 V with FA: {ok}"
    assert check_value("llamacpp", version, "cache_type_k", "q8_0", None) is None
    assert check_value("llamacpp", version, "cache_type_v", "f16", None) is None


def test_llamacpp_flash_attn_syntax_changed() -> None:
    old = flag_fact("llamacpp", v("llamacpp", "b4000"), "flash_attn")
    new = flag_fact("llamacpp", v("llamacpp", "b6500"), "flash_attn")
    assert old is not None and old.kind == "bool", f"old: {old}"
    assert new is not None and new.choices == ("on", "off", "auto"), f"new: {new}"
    assert flag_fact("llamacpp", None, "flash_attn") is None, "no fact holds across the change"


# --------------------------------------------------------------------------- ranges, defaults


@pytest.mark.parametrize("version", [None, "0.6.0", "0.10.2", "0.17.0", "0.34.0"])
def test_gpu_memory_utilization_range(version: str | None) -> None:
    parsed = v("vllm", version) if version else None
    too_high = check_value("vllm", parsed, "gpu_memory_utilization", 1.2, None)
    assert too_high is not None and "1.2" in too_high, f"1.2 at {version}: {too_high}"
    ok = check_value("vllm", parsed, "gpu_memory_utilization", 0.92, None)
    assert ok is None, f"0.92 at {version}: {ok}"
    assert check_value("vllm", parsed, "gpu_memory_utilization", 0, None) is not None
    assert check_value("vllm", parsed, "gpu_memory_utilization", "x", None) is not None


def test_int_flags_reject_fractions_and_bools() -> None:
    version = v("vllm", "0.10.2")
    assert check_value("vllm", version, "max_num_seqs", 128, None) is None
    assert check_value("vllm", version, "max_num_seqs", 12.5, None) is not None
    assert check_value("vllm", version, "max_num_seqs", True, None) is not None
    assert check_value("vllm", version, "max_num_seqs", 0, None) is not None


def test_special_values() -> None:
    sglang = v("sglang", "0.5.4")
    assert check_value("sglang", sglang, "chunked_prefill_size", -1, None) is None
    assert check_value("sglang", sglang, "chunked_prefill_size", -2, None) is not None


def test_unknown_parameter_and_engine_are_rejected() -> None:
    reason = check_value("vllm", None, "warp_speed", 9, None)
    assert reason is not None and "warp_speed" in reason, reason
    assert check_value("nope", None, "max_num_seqs", 9, None) is not None
    assert flag_fact("vllm", None, "warp_speed") is None


def test_flags_removed_in_later_versions() -> None:
    assert flag_fact("vllm", v("vllm", "0.10.2"), "preemption_mode") is not None
    assert flag_fact("vllm", v("vllm", "0.11.0"), "preemption_mode") is None
    assert flag_fact("vllm", v("vllm", "0.17.1"), "swap_space") is not None
    reason = check_value("vllm", v("vllm", "0.18.0"), "swap_space", 4, None)
    assert reason is not None, "swap_space accepted after its removal"


def test_defaults() -> None:
    assert default_value("vllm", v("vllm", "0.10.2"), "gpu_memory_utilization") == 0.9
    assert default_value("vllm", v("vllm", "0.22.0"), "gpu_memory_utilization") == 0.92
    assert default_value("vllm", v("vllm", "0.7.3"), "max_num_seqs") == 256
    assert default_value("vllm", v("vllm", "0.10.2"), "max_num_seqs") is None  # hardware-derived
    assert default_value("vllm", v("vllm", "0.10.2"), "enable_prefix_caching") is True
    assert default_value("tgi", v("tgi", "2.0.1"), "waiting_served_ratio") == 1.2
    assert default_value("tgi", v("tgi", "3.3.4"), "waiting_served_ratio") == 0.3
    assert default_value("tgi", v("tgi", "3.3.4"), "max_concurrent_requests") == 128
    assert default_value("sglang", v("sglang", "0.5.4"), "schedule_conservativeness") == 1.0
    assert default_value("llamacpp", v("llamacpp", "b5000"), "batch_size") == 2048
    fact = flag_fact("vllm", v("vllm", "0.10.2"), "max_num_seqs")
    assert fact is not None and fact.default_note and "70 GiB" in fact.default_note, fact


# --------------------------------------------------------------------------- conservative facts


def test_unknown_version_gets_the_intersection() -> None:
    fact = flag_fact("sglang", None, "kv_cache_dtype")
    assert fact is not None and not fact.covered, f"fact: {fact}"
    # fp8_e4m3 arrived in 0.4.2, so it is not accepted at every covered version
    assert fact.choices == ("auto", "fp8_e5m2"), f"choices: {fact.choices}"
    vllm_quant = flag_fact("vllm", None, "quantization")
    assert vllm_quant is not None and vllm_quant.choices is not None
    assert "fp8" in vllm_quant.choices and "marlin" not in vllm_quant.choices, vllm_quant.choices
    gmu = flag_fact("vllm", None, "gpu_memory_utilization")
    assert gmu is not None and gmu.default is None, f"defaults differ by version: {gmu.default}"
    assert gmu.maximum == 1.0 and gmu.max_inclusive, gmu


def test_version_outside_coverage_is_conservative_and_said() -> None:
    version = v("vllm", "0.99.0")
    fact = flag_fact("vllm", version, "kv_cache_dtype")
    assert fact is not None and not fact.covered, f"fact: {fact}"
    reason = check_value("vllm", version, "kv_cache_dtype", "turboquant_k8v4", GPUS["B200"])
    assert reason is not None and "not covered" in reason, reason
    old = check_value("sglang", v("sglang", "0.2.0"), "quantization", "w8a8_int8", GPUS["T4"])
    assert old is not None and "not covered" in old, old


def test_reasons_are_one_line_and_name_a_source() -> None:
    reason = check_value("vllm", v("vllm", "0.10.2"), "quantization", "w8a8-int8", None)
    assert reason is not None and "\n" not in reason, reason
    assert reason.startswith("vLLM 0.10.2 --quantization"), reason
    assert "source: vllm-project/vllm" in reason, reason


# --------------------------------------------------------------------------- hardware


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", "H100-SXM-80GB"),
        ("h100-sxm5-80gb", "H100-SXM-80GB"),
        ("NVIDIA H100 PCIe", "H100-PCIe-80GB"),
        ("A100-SXM4-40GB", "A100-40GB"),
        ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
        ("Tesla T4", "T4"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA L4", "L4"),
        ("L40S", "L40S"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA B200", "B200"),
        ("Tesla V100-SXM2-32GB", "V100-32GB"),
        ("AMD Instinct MI300X", "MI300X"),
        ("MI300X", "MI300X"),
        ("AMD Instinct MI325X", "MI325X"),
        ("AMD Instinct MI250", "MI250"),
        ("h100-sxm-80gb", "H100-SXM-80GB"),
        # a family whose variants share compute capability: the variant with the smaller steps
        ("H100", "H100-PCIe-80GB"),
        ("A100", "A100-80GB"),
    ],
)
def test_resolve_gpu(name: str, expected: str) -> None:
    gpu = resolve_gpu(name)
    assert gpu is not None and gpu.name == expected, f"{name!r} -> {gpu}"


@pytest.mark.parametrize(
    "name",
    [
        "H100 NVL",
        "NVIDIA GeForce RTX 4090",
        "L40",
        "T4 32GB",
        "MI250X",
        "",
        "x" * 500,
    ],
)
def test_resolve_gpu_never_guesses(name: str) -> None:
    assert resolve_gpu(name) is None, f"{name!r} -> {resolve_gpu(name)}"


def test_gpu_by_name_still_raises_for_unknown() -> None:
    assert gpu_by_name("H100").name == "H100-SXM-80GB"
    with pytest.raises(ValueError, match="unknown GPU"):
        gpu_by_name("RTX 4090")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("T4", "none"),
        ("V100-32GB", "none"),
        ("A10G", "weight_only"),
        ("A100-80GB", "weight_only"),
        ("L4", "compute"),
        ("H100-SXM-80GB", "compute"),
        ("B200", "compute"),
        ("MI300X", "compute"),
        ("MI325X", "compute"),
        ("MI250", "none"),
    ],
)
def test_fp8_support(name: str, expected: str) -> None:
    assert fp8_support(GPUS[name]) == expected, f"{name}: {fp8_support(GPUS[name])}"
    assert GPUS[name].supports_fp8_compute == (expected == "compute")


def test_fp8_support_of_unknown_gpu_is_none() -> None:
    assert fp8_support(None) == "none"
