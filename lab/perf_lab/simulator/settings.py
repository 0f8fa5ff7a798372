"""Each engine's own settings (flag names with '_'), their defaults, ranges and validation,
and their translation into the engine-independent knobs the server model runs on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from perf_pipelines.hardware import KV_DTYPE_BYTES, WEIGHT_FORMATS


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


_KV = tuple(KV_DTYPE_BYTES)
_WEIGHTS = tuple(WEIGHT_FORMATS)
SCHEMAS: dict[str, dict[str, Spec]] = {
    "vllm": {
        "gpu_memory_utilization": Spec(float, 0.9, 0.1, 0.99),
        "max_num_seqs": Spec(int, 256, 1, 4096),
        "max_num_batched_tokens": Spec(int, 8192, 64, 262144),
        "kv_cache_dtype": Spec(str, "auto", choices=("auto", "fp8", "fp8_e4m3", "fp8_e5m2")),
        "quantization": Spec(
            str, "fp16", choices=("fp16", "bf16", "fp8", "w8a8-int8", "awq", "gptq")
        ),
        "enable_prefix_caching": Spec(bool, True),
        "enable_chunked_prefill": Spec(bool, True),
        "tensor_parallel_size": Spec(int, 1, 1, 8),
    },
    "sglang": {
        "mem_fraction_static": Spec(float, 0.85, 0.1, 0.99),
        "max_running_requests": Spec(int, 256, 1, 4096),
        "chunked_prefill_size": Spec(int, 8192, 64, 262144),
        "schedule_conservativeness": Spec(float, 1.0, 0.1, 10.0),
        "kv_cache_dtype": Spec(str, "auto", choices=("auto", "fp8_e4m3", "fp8_e5m2", "bf16")),
        "quantization": Spec(
            str, "fp16", choices=("fp16", "bf16", "fp8", "w8a8_int8", "w8a8_fp8", "awq", "gptq")
        ),
        "disable_radix_cache": Spec(bool, False),
        "tp_size": Spec(int, 1, 1, 8),
    },
    "tgi": {
        "max_batch_total_tokens": Spec(int, None, 1024, 10_000_000),
        "max_concurrent_requests": Spec(int, 128, 1, 100_000),
        "max_batch_prefill_tokens": Spec(int, 4096, 64, 262144),
        "max_batch_size": Spec(int, None, 1, 4096),
        "waiting_served_ratio": Spec(float, 0.3, 0.0, 10.0),
        "quantize": Spec(str, "fp16", choices=("fp16", "fp8", "awq", "gptq")),
        "kv_cache_dtype": Spec(str, "auto", choices=("auto", "fp8_e4m3fn", "fp8_e5m2")),
        "cuda_memory_fraction": Spec(float, 1.0, 0.1, 1.0),
        "num_shard": Spec(int, 1, 1, 8),
    },
    "llamacpp": {
        "ctx_size": Spec(int, 16384, 256, 1_048_576),
        "parallel": Spec(int, 4, 1, 256),
        "batch_size": Spec(int, 2048, 32, 65536),
        "ubatch_size": Spec(int, 512, 32, 65536),
        "cache_type_k": Spec(str, "f16", choices=("f16", "q8_0", "q4_0")),
        "cache_type_v": Spec(str, "f16", choices=("f16", "q8_0", "q4_0")),
        "model_quant": Spec(str, "q8_0", choices=("fp16", "q8_0", "q4_k_m")),
        "n_gpu_layers": Spec(int, -1, -1, 1000),
    },
}


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
            s["quantization"],
            s["kv_cache_dtype"],
            s["enable_prefix_caching"],
            s["tensor_parallel_size"],
            0.0,
            False,
            None,
        )
    if engine == "sglang":
        return Knobs(
            s["mem_fraction_static"],
            None,
            s["max_running_requests"],
            s["chunked_prefill_size"],
            True,
            s["quantization"],
            s["kv_cache_dtype"],
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
            s["quantize"],
            s["kv_cache_dtype"],
            False,
            s["num_shard"],
            0.0,
            True,
            s["max_concurrent_requests"],
        )
    kv = s["cache_type_k"] if s["cache_type_k"] == s["cache_type_v"] else "q8_0"
    return Knobs(
        0.95,
        s["ctx_size"],
        s["parallel"],
        s["batch_size"],
        True,
        s["model_quant"],
        kv,
        True,
        max(1, gpus),
        0.0,
        False,
        None,
    )
