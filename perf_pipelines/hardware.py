"""Hardware and model profiles from public spec sheets and model configs.

Shared by the simulator (capacity, roofline) and the recommender (quantization needs compute
capability; KV arithmetic needs bytes per token).

GPU figures are dense (no sparsity) tensor-core peaks from NVIDIA's data sheets; model figures
from each model's config.json. They feed a roofline, so round numbers are enough.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    hbm_tb_s: float  # memory bandwidth, TB/s
    fp16_tflops: float  # dense BF16/FP16 tensor
    fp8_tflops: float | None  # dense FP8 tensor; None before Ada/Hopper
    int8_tops: float
    compute_capability: float

    @property
    def supports_fp8_compute(self) -> bool:
        return self.compute_capability >= 8.9


GPUS: dict[str, Gpu] = {
    gpu.name: gpu
    for gpu in (
        Gpu("T4", 16, 0.32, 65, None, 130, 7.5),
        Gpu("A10G", 24, 0.60, 70, None, 140, 8.6),
        Gpu("L4", 24, 0.30, 121, 242, 242, 8.9),
        Gpu("L40S", 48, 0.864, 362, 733, 733, 8.9),
        Gpu("A100-40GB", 40, 1.555, 312, None, 624, 8.0),
        Gpu("A100-80GB", 80, 2.039, 312, None, 624, 8.0),
        Gpu("H100-SXM-80GB", 80, 3.35, 989, 1979, 1979, 9.0),
        Gpu("H200", 141, 4.8, 989, 1979, 1979, 9.0),
    )
}
GPU_ALIASES = {
    "H100": "H100-SXM-80GB",
    "H100-SXM": "H100-SXM-80GB",
    "A100": "A100-80GB",
    "A10": "A10G",
}


def gpu_by_name(name: str) -> Gpu:
    canonical = GPU_ALIASES.get(name, name)
    if canonical not in GPUS:
        raise ValueError(f"unknown GPU {name!r}; known: {', '.join(sorted(GPUS))}")
    return GPUS[canonical]


@dataclass(frozen=True)
class ModelProfile:
    name: str
    params_b: float  # total parameters (memory)
    active_params_b: float  # parameters used per token (compute, weight reads); < total for MoE
    layers: int
    kv_heads: int
    head_dim: int
    max_context: int

    def kv_bytes_per_token(self, kv_dtype_bytes: float) -> float:
        # K and V, per layer, per KV head
        return 2 * self.layers * self.kv_heads * self.head_dim * kv_dtype_bytes


MODELS: dict[str, ModelProfile] = {
    model.name: model
    for model in (
        ModelProfile("meta-llama/Llama-3.1-8B-Instruct", 8.03, 8.03, 32, 8, 128, 131072),
        ModelProfile("meta-llama/Llama-3.1-70B-Instruct", 70.6, 70.6, 80, 8, 128, 131072),
        ModelProfile("Qwen/Qwen2.5-7B-Instruct", 7.62, 7.62, 28, 4, 128, 32768),
        ModelProfile("mistralai/Mixtral-8x7B-Instruct-v0.1", 46.7, 12.9, 32, 8, 128, 32768),
    )
}


def model_by_name(name: str) -> ModelProfile:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


# Bytes per weight and the arithmetic each weight format runs on.
@dataclass(frozen=True)
class WeightFormat:
    bytes_per_param: float
    compute: str  # "fp16" | "fp8" | "int8": which tensor-core peak the GEMMs use
    needs_fp8_hardware: bool = False


WEIGHT_FORMATS: dict[str, WeightFormat] = {
    "fp16": WeightFormat(2.0, "fp16"),
    "bf16": WeightFormat(2.0, "fp16"),
    "fp8": WeightFormat(1.0, "fp8", needs_fp8_hardware=True),  # W8A8 FP8
    "w8a8_fp8": WeightFormat(1.0, "fp8", needs_fp8_hardware=True),  # SGLang's name
    "w8a8-int8": WeightFormat(1.0, "int8"),  # vLLM's name (compressed-tensors)
    "w8a8_int8": WeightFormat(1.0, "int8"),  # SGLang's name for the same scheme
    "awq": WeightFormat(0.53, "fp16"),  # 4-bit weight-only (+ scales)
    "gptq": WeightFormat(0.53, "fp16"),
    "q8_0": WeightFormat(1.06, "fp16"),  # llama.cpp GGUF, 8.5 bits per weight
    "q4_k_m": WeightFormat(0.61, "fp16"),  # ~4.85 bits per weight
}
KV_DTYPE_BYTES: dict[str, float] = {
    "auto": 2.0,
    "fp16": 2.0,
    "f16": 2.0,
    "bf16": 2.0,
    "fp8": 1.0,
    "fp8_e4m3": 1.0,
    "fp8_e5m2": 1.0,
    "fp8_e4m3fn": 1.0,
    "q8_0": 1.06,
    "q4_0": 0.56,
}
