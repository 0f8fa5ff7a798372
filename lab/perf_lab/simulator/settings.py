"""Each engine's own settings (flag names with '_'), their defaults, ranges and validation,
and their translation into the engine-independent knobs the server model runs on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from perf_pipelines.hardware import Gpu


class SettingsError(ValueError):
    """A setting is unknown or out of range; the message names it."""


@dataclass(frozen=True)
class Spec:
    kind: type
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None

    def check(self, name: str, value: Any) -> Any:
        if value is None and self.default is None:
            return None
        if self.kind is bool:
            if not isinstance(value, bool):
                raise SettingsError(f"{name} must be true or false, got {value!r}")
            return value
        if self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SettingsError(f"{name} must be a number, got {value!r}")
            if self.kind is int and float(value) != int(value):
                raise SettingsError(f"{name} must be a whole number, got {value!r}")
            value = self.kind(value)
            if (self.low is not None and value < self.low) or (
                self.high is not None and value > self.high
            ):
                raise SettingsError(f"{name} must be within [{self.low}, {self.high}], got {value}")
            return value
        if self.choices is not None and value not in self.choices:
            raise SettingsError(f"{name} must be one of {', '.join(map(str, self.choices))}")
        return value


# What each engine accepts, read from the engines' own source (file @ tag or commit). The
# simulator accepts only values it can model; each such value must be one the real engine accepts
# in every release the evaluation imitates (vLLM 0.8.5-0.33, SGLang 0.4.6-0.5, TGI 2.4.1-3.3,
# llama.cpp b4600+); tests/lab/simulator/test_model.py checks this against the product's truth
# table. A value a real engine rejects (vLLM has no `--quantization w8a8-int8`: INT8 W8A8 there is
# an INT8 compressed-tensors checkpoint) is refused here as the engine would refuse it.
#
# vLLM --quantization: vllm/model_executor/layers/quantization/__init__.py QUANTIZATION_METHODS
#   @ 0034007d (0.9) and @ v0.6.0..v0.34.0 (the truth table's reading); unset = unquantized or
#   whatever the checkpoint says. "compressed-tensors" is modelled as the INT8 W8A8 checkpoint.
# vLLM --kv-cache-dtype: CacheDType in vllm/config/cache.py (vllm/engine/arg_utils.py choices
#   before 0.8.5): auto, fp8, fp8_e4m3, fp8_e5m2 in every release since 0.6.0.
# vLLM --gpu-memory-utilization: CacheConfig Field(gt=0, le=1) @ v0.11.1 (vllm/config/cache.py).
_VLLM_QUANTIZATION = (None, "fp8", "compressed-tensors", "awq", "awq_marlin", "gptq", "gptq_marlin")
_VLLM_KV = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")
# SGLang --quantization / --kv-cache-dtype: python/sglang/srt/server_args.py QUANTIZATION_CHOICES
#   and the kv-cache-dtype choices @ v0.4.x (auto, fp8_e5m2, fp8_e4m3; bf16 only in later 0.5
#   releases) and @ 001067ff (main); w8a8_int8 and w8a8_fp8 are real SGLang methods.
_SGLANG_QUANTIZATION = (
    None,
    "fp8",
    "w8a8_int8",
    "w8a8_fp8",
    "awq",
    "awq_marlin",
    "gptq",
    "gptq_marlin",
)
_SGLANG_KV = ("auto", "fp8_e5m2", "fp8_e4m3")
# TGI --quantize: launcher/src/main.rs `enum Quantization` @ v2.4.1, v3.0.0, v3.3.7 (kebab-case
#   clap names); --kv-cache-dtype: `enum KVCacheDtype` @ v2.4.1..v3.3.7 (fp8_e4m3fn, fp8_e5m2, no
#   "auto": leave it unset); --max-concurrent-requests default 128, --cuda-memory-fraction 1.0,
#   --waiting-served-ratio 0.3, the batch limits Option<_> (unset) @ v3.3.7.
_TGI_QUANTIZE = (
    None,
    "awq",
    "compressed-tensors",
    "eetq",
    "exl2",
    "gptq",
    "marlin",
    "bitsandbytes",
    "bitsandbytes-nf4",
    "bitsandbytes-fp4",
    "fp8",
)
_TGI_KV = (None, "fp8_e4m3fn", "fp8_e5m2")
# llama.cpp --cache-type-k/-v: common/arg.cpp `kv_cache_types` (f32, f16, bf16, q8_0, q4_0, q4_1,
#   iq4_nl, q5_0, q5_1) @ 145b6280; f32 is left out here (the model has no 4-byte KV entry), and
#   so is bf16, which older builds (the copies vendored in llama-cpp-python 0.2/0.3) lack.
_LLAMACPP_KV = ("f16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
# GGUF file quantization: not a flag but the model file the server loads.
_LLAMACPP_FILES = ("fp16", "q8_0", "q4_k_m")

SCHEMAS: dict[str, dict[str, Spec]] = {
    "vllm": {
        "gpu_memory_utilization": Spec(float, 0.9, 0.01, 1.0),
        "max_num_seqs": Spec(int, 256, 1, 65536),
        "max_num_batched_tokens": Spec(int, 8192, 1, 1_048_576),
        "kv_cache_dtype": Spec(str, "auto", choices=_VLLM_KV),
        "quantization": Spec(str, None, choices=_VLLM_QUANTIZATION),
        "enable_prefix_caching": Spec(bool, True),
        "enable_chunked_prefill": Spec(bool, True),
        "tensor_parallel_size": Spec(int, 1, 1, 8),
        # Accepted, not modelled (a prompt cap; the simulator's prompts stay below it).
        "max_model_len": Spec(int, None, 1, 10_000_000),
    },
    "sglang": {
        "mem_fraction_static": Spec(float, 0.85, 0.01, 0.99),
        "max_running_requests": Spec(int, 256, 1, 65536),
        "chunked_prefill_size": Spec(int, 8192, 1, 1_048_576),
        "schedule_conservativeness": Spec(float, 1.0, 0.0, 100.0),
        "kv_cache_dtype": Spec(str, "auto", choices=_SGLANG_KV),
        "quantization": Spec(str, None, choices=_SGLANG_QUANTIZATION),
        "disable_radix_cache": Spec(bool, False),
        "tp_size": Spec(int, 1, 1, 8),
        # --max-total-tokens caps the KV pool (like TGI's max_batch_total_tokens).
        "max_total_tokens": Spec(int, None, 1024, 100_000_000),
        "context_length": Spec(int, None, 1, 10_000_000),  # accepted, not modelled
    },
    "tgi": {
        "max_batch_total_tokens": Spec(int, None, 1024, 100_000_000),
        "max_concurrent_requests": Spec(int, 128, 1, 1_000_000),
        "max_batch_prefill_tokens": Spec(int, 4096, 1, 1_048_576),
        "max_batch_size": Spec(int, None, 1, 65536),
        "waiting_served_ratio": Spec(float, 0.3, 0.0, 100.0),
        "quantize": Spec(str, None, choices=_TGI_QUANTIZE),
        "kv_cache_dtype": Spec(str, None, choices=_TGI_KV),
        "cuda_memory_fraction": Spec(float, 1.0, 0.01, 1.0),
        "num_shard": Spec(int, 1, 1, 8),
        # Per-request limits: accepted, not modelled.
        "max_total_tokens": Spec(int, None, 1, 10_000_000),
        "max_input_tokens": Spec(int, None, 1, 10_000_000),
    },
    "llamacpp": {
        "ctx_size": Spec(int, 16384, 256, 10_000_000),
        "parallel": Spec(int, 4, 1, 1024),
        "batch_size": Spec(int, 2048, 1, 1_048_576),
        "ubatch_size": Spec(int, 512, 1, 1_048_576),
        "cache_type_k": Spec(str, "f16", choices=_LLAMACPP_KV),
        "cache_type_v": Spec(str, "f16", choices=_LLAMACPP_KV),
        "model_quant": Spec(str, "q8_0", choices=_LLAMACPP_FILES),
        "n_gpu_layers": Spec(int, -1, -1, 100_000),
        "cont_batching": Spec(bool, True),  # accepted, not modelled (always on in the model)
    },
}

# Engine values -> the weight formats and KV dtypes the model computes with (hardware.py).
_WEIGHTS = {
    None: "fp16",
    "fp8": "fp8",
    "fbgemm_fp8": "fp8",
    "w8a8_fp8": "w8a8_fp8",
    "compressed-tensors": "w8a8_int8",  # the INT8 W8A8 checkpoint vLLM/TGI serve this way
    "w8a8_int8": "w8a8_int8",
    "awq": "awq",
    "awq_marlin": "awq",
    "gptq": "gptq",
    "gptq_marlin": "gptq",
    "marlin": "gptq",
    "exl2": "gptq",
    "bitsandbytes-nf4": "awq",
    "bitsandbytes-fp4": "awq",
    "eetq": "q8_0",  # 8-bit weights, FP16 GEMMs: the same bytes and arithmetic as GGUF q8_0
    "bitsandbytes": "q8_0",
    "fp16": "fp16",
    "q8_0": "q8_0",
    "q4_k_m": "q4_k_m",
}
_KV_MODEL = {
    None: "auto",
    "bfloat16": "bf16",
    "q4_1": "q4_0",
    "iq4_nl": "q4_0",
    "q5_0": "q4_0",
    "q5_1": "q4_0",
}


def weight_format(value: Any) -> str:
    return _WEIGHTS.get(value, str(value))


def kv_dtype(value: Any) -> str:
    return _KV_MODEL.get(value, str(value))


def validate_settings(
    engine: str, settings: dict[str, Any], base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Defaults, then `base`, then `settings` (a partial update), each value checked."""
    schema = SCHEMAS.get(engine)
    if schema is None:
        raise SettingsError(f"unknown engine {engine!r}")
    unknown = sorted(set(settings) - set(schema))
    if unknown:
        raise SettingsError(f"unknown {engine} setting(s): {', '.join(unknown)}")
    merged = {name: spec.default for name, spec in schema.items()}
    merged.update(base or {})
    for name, value in settings.items():
        merged[name] = schema[name].check(name, value)
    return merged


@dataclass(frozen=True)
class Knobs:
    """What the server model needs, whatever the engine calls it."""

    memory_fraction: float
    kv_capacity_tokens_override: int | None  # TGI max_batch_total_tokens, llama.cpp ctx_size
    max_running: int
    max_batched_tokens: int
    chunked_prefill: bool
    weight_format: str
    kv_dtype: str
    prefix_caching: bool
    gpus: int
    # Share of free KV the scheduler keeps in reserve per admitted request's future growth:
    # SGLang's schedule_conservativeness; TGI reserves each request's whole max length.
    admission_reserve: float
    reserve_full_length: bool
    max_concurrent: int | None  # requests beyond this are rejected (TGI 429)


def to_knobs(engine: str, settings: dict[str, Any], gpus: int) -> Knobs:
    s = settings
    if engine == "vllm":
        return Knobs(
            s["gpu_memory_utilization"],
            None,
            s["max_num_seqs"],
            s["max_num_batched_tokens"],
            s["enable_chunked_prefill"],
            weight_format(s["quantization"]),
            kv_dtype(s["kv_cache_dtype"]),
            s["enable_prefix_caching"],
            s["tensor_parallel_size"],
            0.0,
            False,
            None,
        )
    if engine == "sglang":
        return Knobs(
            s["mem_fraction_static"],
            s.get("max_total_tokens"),
            s["max_running_requests"],
            s["chunked_prefill_size"],
            True,
            weight_format(s["quantization"]),
            kv_dtype(s["kv_cache_dtype"]),
            not s["disable_radix_cache"],
            s["tp_size"],
            0.3 * s["schedule_conservativeness"],
            False,
            None,
        )
    if engine == "tgi":
        return Knobs(
            0.9 * s["cuda_memory_fraction"],
            s["max_batch_total_tokens"],
            s["max_batch_size"] or 4096,
            s["max_batch_prefill_tokens"],
            True,
            weight_format(s["quantize"]),
            kv_dtype(s["kv_cache_dtype"]),
            False,
            s["num_shard"],
            0.0,
            True,
            s["max_concurrent_requests"],
        )
    k, v = kv_dtype(s["cache_type_k"]), kv_dtype(s["cache_type_v"])
    return Knobs(
        0.95,
        s["ctx_size"],
        s["parallel"],
        s["batch_size"],
        True,
        weight_format(s["model_quant"]),
        k if k == v else "q8_0",
        True,
        max(1, gpus),
        0.0,
        False,
        None,
    )


# What needs which hardware, from the engines' own checks. FP8 weights: vLLM Fp8Config
# .get_min_capability() == 80 (FP8 Marlin, weight-only, on 8.0-8.6) @ v0.10.2; TGI
# server/text_generation_server/layers/fp8.py (Marlin on capability 8.x) @ v3.3.7; SGLang fp8
# likewise. W8A8 FP8 (SGLang w8a8_fp8) needs FP8 tensor cores (8.9+, MI300). INT8 W8A8:
# CompressedTensorsW8A8Int8 min capability 75 @ v0.10.2. Marlin kernels: capability 8.0, CUDA
# only. FP8 KV cache: the engines check no capability, their attention kernels need Ampere or
# newer; e5m2 is not supported on ROCm (TGI layers/attention/kv_cache.py @ v3.3.7).
_FP8_WEIGHTS = {"fp8", "fbgemm_fp8"}
_MARLIN = {"awq_marlin", "gptq_marlin", "marlin"}
_SETTING_TP = {"vllm": "tensor_parallel_size", "sglang": "tp_size", "tgi": "num_shard"}
_QUANT_SETTING = {"vllm": "quantization", "sglang": "quantization", "tgi": "quantize"}


def _is_amd(gpu: Gpu) -> bool:
    return getattr(gpu, "vendor", "nvidia") == "amd"


def _fp8_compute(gpu: Gpu) -> bool:
    return bool(gpu.supports_fp8_compute)


def _quantization_error(method: Any, gpu: Gpu) -> str | None:
    amd, cc = _is_amd(gpu), gpu.compute_capability
    if method in _FP8_WEIGHTS and not amd and cc < 8.0:
        return f"{method} needs compute capability 8.0 or newer ({gpu.name} has {cc})"
    if method == "w8a8_fp8" and not _fp8_compute(gpu):
        return f"w8a8_fp8 needs FP8 tensor cores ({gpu.name} has none)"
    if method in ("w8a8_int8", "compressed-tensors") and not amd and cc < 7.5:
        return f"INT8 W8A8 needs compute capability 7.5 or newer ({gpu.name} has {cc})"
    if method in _MARLIN and (amd or cc < 8.0):
        return f"{method} (Marlin kernels) needs an NVIDIA GPU of compute capability 8.0+"
    return None


def _kv_error(value: Any, gpu: Gpu) -> str | None:
    if not isinstance(value, str) or not value.startswith("fp8"):
        return None
    if _is_amd(gpu):
        return "fp8_e5m2 KV cache is not supported on ROCm" if value == "fp8_e5m2" else None
    if gpu.compute_capability < 8.0:
        return f"FP8 KV cache needs compute capability 8.0 or newer ({gpu.name})"
    return None


def hardware_error(engine: str, settings: dict[str, Any], gpu: Gpu, gpu_count: int) -> str | None:
    """Why the engine would refuse these (validated) settings on this hardware, or None."""
    tp = _SETTING_TP.get(engine)
    if tp is not None and settings.get(tp, 1) > gpu_count:
        return f"{tp} {settings[tp]} needs {settings[tp]} GPUs; the server has {gpu_count}"
    quant = _QUANT_SETTING.get(engine)
    error = _quantization_error(settings.get(quant), gpu) if quant else None
    if error is None and engine != "llamacpp":
        error = _kv_error(settings.get("kv_cache_dtype"), gpu)
    return error
