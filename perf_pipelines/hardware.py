"""Hardware and model profiles from public spec sheets and model configs.

Shared by the simulator (capacity, roofline) and the recommender (quantization needs compute
capability; KV arithmetic needs bytes per token).

GPU figures are dense (no sparsity) tensor-core peaks from NVIDIA's data sheets; model figures
from each model's config.json. They feed a roofline, so round numbers are enough.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GIB = 1024**3

FP8_COMPUTE = "compute"  # W8A8 FP8 on FP8 tensor cores / matrix cores
FP8_WEIGHT_ONLY = "weight_only"  # FP8 weights dequantized to FP16/BF16 (Marlin W8A16)
FP8_NONE = "none"

# AMD architectures (LLVM target names) whose matrix cores run FP8: CDNA3, gfx942 (MI300X and
# MI325X: ROCm "AMD GPU specifications", rocm.docs.amd.com/en/latest/reference/gpu-specs.html;
# FP8 W8A8 on MI300x: vLLM docs features/quantization/fp8). CDNA2 (gfx90a, MI250) has no FP8.
# Later architectures are left out until read.
_AMD_FP8_ARCHS = frozenset({"gfx942"})


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    hbm_tb_s: float  # memory bandwidth, TB/s
    fp16_tflops: float  # dense BF16/FP16 tensor
    fp8_tflops: float | None  # dense FP8 tensor; None before Ada/Hopper (and on CDNA2)
    int8_tops: float
    compute_capability: float  # NVIDIA CUDA compute capability; 0.0 for AMD (see `arch`)
    vendor: str = "nvidia"  # "nvidia" | "amd"
    arch: str = ""  # e.g. "sm_90", "gfx942"

    @property
    def fp8_support(self) -> str:
        """`FP8_COMPUTE`, `FP8_WEIGHT_ONLY` or `FP8_NONE`.

        NVIDIA: FP8 tensor cores from compute capability 8.9 (Ada, Hopper, Blackwell); on 8.0–8.6
        (Ampere) engines run FP8 checkpoints weight-only through FP8 Marlin (vLLM PR #5975,
        `Fp8Config.get_min_capability() == 80` in vLLM 0.6–0.13; TGI `layers/fp8.py` uses Marlin
        on capability 8.x). AMD: by architecture, not compute capability.
        """
        if self.vendor == "amd":
            return FP8_COMPUTE if self.arch in _AMD_FP8_ARCHS else FP8_NONE
        if self.compute_capability >= 8.9:
            return FP8_COMPUTE
        if self.compute_capability >= 8.0:
            return FP8_WEIGHT_ONLY
        return FP8_NONE

    @property
    def supports_fp8_compute(self) -> bool:
        return self.fp8_support == FP8_COMPUTE


# Sources. Compute capability: NVIDIA "CUDA GPUs – Compute Capability"
# (developer.nvidia.com/cuda-gpus). Memory, bandwidth and dense tensor peaks: each product's
# data sheet (T4, V100, A10, A100, L4, L40S, H100, H200, HGX B200 divided by its 8 GPUs; AMD
# Instinct MI250, MI300X, MI325X); AMD LLVM targets from ROCm "AMD GPU specifications". A10G is
# the AWS variant of the A10 (same GA102, 24 GB, 600 GB/s; AWS publishes no tensor peaks, the
# figures below are this project's earlier estimates). V100 has no INT8 tensor cores: its
# int8_tops is the DP4A peak. MI250 is two GCDs that the driver shows as two 64 GB devices.
GPUS: dict[str, Gpu] = {
    gpu.name: gpu
    for gpu in (
        Gpu("T4", 16, 0.32, 65, None, 130, 7.5, arch="sm_75"),
        Gpu("V100-16GB", 16, 0.90, 125, None, 62, 7.0, arch="sm_70"),
        Gpu("V100-32GB", 32, 0.90, 125, None, 62, 7.0, arch="sm_70"),
        Gpu("A10", 24, 0.60, 125, None, 250, 8.6, arch="sm_86"),
        Gpu("A10G", 24, 0.60, 70, None, 140, 8.6, arch="sm_86"),
        Gpu("L4", 24, 0.30, 121, 242, 242, 8.9, arch="sm_89"),
        Gpu("L40S", 48, 0.864, 362, 733, 733, 8.9, arch="sm_89"),
        Gpu("A100-40GB", 40, 1.555, 312, None, 624, 8.0, arch="sm_80"),
        Gpu("A100-80GB", 80, 2.039, 312, None, 624, 8.0, arch="sm_80"),
        Gpu("H100-SXM-80GB", 80, 3.35, 989, 1979, 1979, 9.0, arch="sm_90"),
        Gpu("H100-PCIe-80GB", 80, 2.0, 756, 1513, 1513, 9.0, arch="sm_90"),
        Gpu("H200", 141, 4.8, 989, 1979, 1979, 9.0, arch="sm_90"),
        Gpu("B200", 180, 8.0, 2250, 4500, 4500, 10.0, arch="sm_100"),
        Gpu("MI250", 128, 3.2768, 362.1, None, 362.1, 0.0, vendor="amd", arch="gfx90a"),
        Gpu("MI300X", 192, 5.3, 1307.4, 2614.9, 2614.9, 0.0, vendor="amd", arch="gfx942"),
        Gpu("MI325X", 256, 6.0, 1307.4, 2614.9, 2614.9, 0.0, vendor="amd", arch="gfx942"),
    )
}
# Short names the targets file has always accepted (gpu_by_name). They pick one variant where
# the short name is ambiguous; resolve_gpu() does not use them, it never guesses.
GPU_ALIASES = {
    "H100": "H100-SXM-80GB",
    "H100-SXM": "H100-SXM-80GB",
    "A100": "A100-80GB",
}


def gpu_by_name(name: str) -> Gpu:
    canonical = GPU_ALIASES.get(name, name)
    if canonical not in GPUS:
        raise ValueError(f"unknown GPU {name!r}; known: {', '.join(sorted(GPUS))}")
    return GPUS[canonical]


_VENDOR_WORDS = frozenset({"nvidia", "amd", "instinct", "tesla", "radeon", "graphics", "gpu"})
_MEMORY_TOKEN = re.compile(r"^(\d+)(?:gb|gib|g)$")
# family -> {memory GB (None: the name gave none) -> GPUS key}; a family whose memory size
# decides the model needs it in the name.
_FAMILIES: dict[str, dict[int | None, str]] = {
    "t4": {None: "T4", 16: "T4"},
    "v100": {16: "V100-16GB", 32: "V100-32GB"},
    "a10": {None: "A10", 24: "A10"},
    "a10g": {None: "A10G", 24: "A10G"},
    "l4": {None: "L4", 24: "L4"},
    "l40s": {None: "L40S", 48: "L40S"},
    # "A100" alone: 40 or 80 GB, the same compute capability. Read as 80 GB, the variant that
    # makes every memory-sized step smaller (a memory fraction of more GiB holds more tokens).
    "a100": {None: "A100-80GB", 40: "A100-40GB", 80: "A100-80GB"},
    "h200": {None: "H200", 141: "H200"},
    "b200": {None: "B200", 180: "B200"},
    "mi250": {None: "MI250", 128: "MI250"},
    "mi300x": {None: "MI300X", 192: "MI300X"},
    "mi325x": {None: "MI325X", 256: "MI325X"},
}
# Words that name a different product than the family alone (H100 NVL, H200 NVL, ...).
_OTHER_VARIANTS = frozenset({"nvl", "mig", "max", "q"})


def _tokens(name: str) -> list[str]:
    text = re.sub(r"[^a-z0-9]+", " ", name.lower())
    return [token for token in text.split() if token not in _VENDOR_WORDS]


def _h100(tokens: list[str], memory: int | None) -> str | None:
    if memory not in (None, 80):
        return None
    if "pcie" in tokens:
        return "H100-PCIe-80GB"
    # nvidia-smi names the SXM part "NVIDIA H100 80GB HBM3"; the PCIe part says "PCIe".
    if any(t.startswith("sxm") for t in tokens) or "hbm3" in tokens:
        return "H100-SXM-80GB"
    # "H100" alone: SXM or PCIe, both 80 GB and compute capability 9.0, which is all the advice
    # reads; the PCIe part's lower bandwidth is the conservative reading for the simulator.
    return "H100-PCIe-80GB"


def resolve_gpu(name: str) -> Gpu | None:
    """The GPU a user or `nvidia-smi`/`rocm-smi` names, or None when it is unknown or ambiguous.

    Accepts e.g. "NVIDIA H100 80GB HBM3", "h100-sxm5-80gb", "A100-SXM4-40GB", "Tesla T4",
    "NVIDIA A10G", "AMD Instinct MI300X", "L40S", "MI300X" and the keys of `GPUS`. A family
    name whose variants share vendor and compute capability ("A100", "H100") is read as the
    variant that keeps memory-sized steps smallest; a name that could be another product
    ("H100 NVL", "L40") or a memory size the model does not come in gives None.
    """
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        return None
    exact = {key.lower(): gpu for key, gpu in GPUS.items()}
    if name.strip().lower() in exact:
        return exact[name.strip().lower()]
    tokens = _tokens(name)
    if _OTHER_VARIANTS.intersection(tokens):
        return None
    memories = {int(m.group(1)) for t in tokens if (m := _MEMORY_TOKEN.match(t))}
    if len(memories) > 1:
        return None
    memory = next(iter(memories), None)
    families = [t for t in tokens if t in _FAMILIES or t == "h100"]
    if len(families) != 1:
        return None
    family = families[0]
    found = _h100(tokens, memory) if family == "h100" else _FAMILIES[family].get(memory)
    return GPUS.get(found) if found is not None else None


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
