"""Tuning rules: from a window's bottlenecks to engine-native flag changes, with evidence.

Principles, in order:
1. No advice on thin evidence: only for bottlenecks detected in a sustained way, and never for a
   server that is down.
2. One recommendation per (target, parameter), and never two that pull one knob in opposite
   directions: a breached ITL SLO forbids raising the batch size; KV pressure forbids raising
   concurrency (it would preempt more).
3. Bounded steps from the current value (from the targets file, else the server's info metrics,
   else the engine's default — said in the rationale, with lower confidence):
   memory fractions never above 0.95, batch limits at most ×2 or ÷2 per step.
4. Quantization is hardware-aware: FP8 only on compute capability ≥ 8.9; on Turing/Ampere the
   step after FP16 is INT8 W8A8 (or 4-bit weight-only); no FP8 KV cache there; unknown hardware
   gets no quantization advice. Every quantization step asks for output-quality validation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from perf_pipelines.analysis.window import WindowStats
from perf_pipelines.findings import BottleneckReport, Recommendation
from perf_pipelines.hardware import GIB, GPU_ALIASES, GPUS, MODELS, Gpu
from perf_pipelines.targets import Target

MAX_MEMORY_FRACTION = 0.95
MEMORY_STEP = 0.05
MAX_BATCH_FACTOR = 2.0
QUALITY_NOTE = (
    "Validate output quality (e.g. your eval set or a perplexity check) on a canary before "
    "rolling this out: quantization changes the model's numerics."
)

# Engine defaults (shared/reference/engine-metrics.md), used when the current value is unknown.
DEFAULTS: dict[str, dict[str, Any]] = {
    "vllm": {
        "gpu_memory_utilization": 0.9,
        "max_num_seqs": 256,
        "max_num_batched_tokens": 8192,
        "kv_cache_dtype": "auto",
        "quantization": "fp16",
    },
    "sglang": {
        "mem_fraction_static": 0.85,
        "max_running_requests": 256,
        "chunked_prefill_size": 8192,
        "schedule_conservativeness": 1.0,
        "kv_cache_dtype": "auto",
        "quantization": "fp16",
    },
    "tgi": {
        "max_concurrent_requests": 128,
        "max_batch_prefill_tokens": 4096,
        "kv_cache_dtype": "auto",
        "quantize": "fp16",
        "max_batch_size": None,
    },
    "llamacpp": {
        "parallel": 4,
        "ctx_size": 16384,
        "batch_size": 2048,
        "cache_type_k": "f16",
        "model_quant": "q8_0",
    },
}
FLAGS = {
    ("vllm", "gpu_memory_utilization"): "--gpu-memory-utilization",
    ("vllm", "kv_cache_dtype"): "--kv-cache-dtype",
    ("vllm", "max_num_seqs"): "--max-num-seqs",
    ("vllm", "max_num_batched_tokens"): "--max-num-batched-tokens",
    ("vllm", "quantization"): "--quantization",
    ("sglang", "mem_fraction_static"): "--mem-fraction-static",
    ("sglang", "schedule_conservativeness"): "--schedule-conservativeness",
    ("sglang", "max_running_requests"): "--max-running-requests",
    ("sglang", "chunked_prefill_size"): "--chunked-prefill-size",
    ("sglang", "kv_cache_dtype"): "--kv-cache-dtype",
    ("sglang", "quantization"): "--quantization",
    ("tgi", "max_concurrent_requests"): "--max-concurrent-requests",
    ("tgi", "max_batch_prefill_tokens"): "--max-batch-prefill-tokens",
    ("tgi", "max_batch_size"): "--max-batch-size",
    ("tgi", "kv_cache_dtype"): "--kv-cache-dtype",
    ("tgi", "quantize"): "--quantize",
    ("llamacpp", "parallel"): "--parallel",
    ("llamacpp", "ctx_size"): "--ctx-size",
    ("llamacpp", "cache_type_k"): "--cache-type-k/--cache-type-v",
    ("llamacpp", "batch_size"): "--batch-size",
    ("llamacpp", "model_quant"): "model file quantization (GGUF)",
}
BATCH_PARAMETER = {
    "vllm": "max_num_seqs",
    "sglang": "max_running_requests",
    "tgi": "max_batch_size",
    "llamacpp": "parallel",
}
PREFILL_PARAMETER = {
    "vllm": "max_num_batched_tokens",
    "sglang": "chunked_prefill_size",
    "tgi": "max_batch_prefill_tokens",
    "llamacpp": "batch_size",
}
FP8_KV = {"vllm": "fp8", "sglang": "fp8_e4m3", "tgi": "fp8_e4m3fn"}
UNQUANTIZED = {"fp16", "bf16", "auto", "none", "None", None}


def _gpu(target: Target | None) -> Gpu | None:
    if target is None or target.hardware is None:
        return None
    return GPUS.get(GPU_ALIASES.get(target.hardware.gpu, target.hardware.gpu))


def _current(stats: WindowStats, engine: str, parameter: str) -> tuple[Any, bool]:
    """The current value and whether it is known (targets file or server) or an engine default."""
    if parameter in stats.settings and stats.settings[parameter] is not None:
        return stats.settings[parameter], True
    if engine == "vllm" and parameter == "kv_cache_dtype" and "cache_dtype" in stats.settings:
        return stats.settings["cache_dtype"], True
    return DEFAULTS.get(engine, {}).get(parameter), False


def _assumed(engine: str, known: bool) -> str:
    """The rationale's note when the current value is the engine's default, not a known value."""
    return "" if known else f" (current value assumed to be the {engine} default)"


def _confidence(report: BottleneckReport, known: bool, base: float = 0.55) -> float:
    value = base + 0.4 * report.score
    return round(min(0.95, value if known else value * 0.8), 3)


def _kv_tokens_per_gib(stats: WindowStats, engine: str) -> float | None:
    model = MODELS.get(stats.model or "")
    if model is None:
        return None
    dtype_bytes = (
        1.0 if str(_current(stats, engine, "kv_cache_dtype")[0]).startswith("fp8") else 2.0
    )
    return GIB / model.kv_bytes_per_token(dtype_bytes)


def _memory_rule(
    stats: WindowStats, report: BottleneckReport, target: Target | None
) -> Recommendation | None:
    engine = stats.engine or ""
    parameter = {"vllm": "gpu_memory_utilization", "sglang": "mem_fraction_static"}.get(engine)
    if parameter is None:
        return None
    current, known = _current(stats, engine, parameter)
    if not isinstance(current, int | float) or current >= MAX_MEMORY_FRACTION:
        return None
    new = round(min(MAX_MEMORY_FRACTION, current + MEMORY_STEP), 2)
    gpu = _gpu(target)
    effect = f"more KV-cache memory: +{(new - current) * 100:.0f} % of GPU memory"
    tokens_per_gib = _kv_tokens_per_gib(stats, engine)
    if gpu is not None and target is not None and target.hardware is not None:
        extra_gib = (new - current) * gpu.memory_gib * target.hardware.count
        effect = f"KV cache +{extra_gib:.1f} GiB"
        if tokens_per_gib is not None:
            extra_tokens = extra_gib * tokens_per_gib
            effect += f" ≈ +{extra_tokens:,.0f} tokens"
            if stats.kv_capacity_tokens:
                share = extra_tokens / stats.kv_capacity_tokens
                effect += f" (+{share:.0%} of {stats.kv_capacity_tokens:,.0f})"
        effect += "; fewer preemptions and a shorter queue while memory is the limit"
    source = "" if known else f" (current value assumed to be the {engine} default)"
    return Recommendation(
        stats.target,
        engine,
        stats.model,
        "kv_cache_optimization",
        parameter,
        FLAGS[(engine, parameter)],
        current,
        new,
        f"{report.summary} Give the KV cache more of the GPU memory: raise "
        f"{FLAGS[(engine, parameter)]} from {current} to {new}{source}. Keep ≥ 5 % headroom "
        "for activations and CUDA graphs.",
        report.evidence,
        effect,
        _confidence(report, known),
        report.severity,
        report.kind,
        "raise",
    )


def _fp8_kv_rule(
    stats: WindowStats, report: BottleneckReport, target: Target | None
) -> Recommendation | None:
    engine = stats.engine or ""
    if engine not in FP8_KV:
        return None
    gpu = _gpu(target)
    if gpu is None or not gpu.supports_fp8_compute:
        return None  # FP8 KV on pre-Ada GPUs depends on the attention backend: not advised
    current, known = _current(stats, engine, "kv_cache_dtype")
    if str(current).startswith("fp8"):
        return None
    capacity = stats.kv_capacity_tokens
    effect = "≈ 2× KV-cache capacity at the same memory"
    if capacity:
        effect += f" ({capacity:,.0f} → ≈{2 * capacity:,.0f} tokens)"
    return Recommendation(
        stats.target,
        engine,
        stats.model,
        "kv_cache_optimization",
        "kv_cache_dtype",
        FLAGS[(engine, "kv_cache_dtype")],
        current,
        FP8_KV[engine],
        f"{report.summary} The memory fraction is already at its ceiling; store the KV cache in "
        f"FP8 on this {gpu.name} (compute capability {gpu.compute_capability}), from "
        f"{current}{_assumed(engine, known)}. {QUALITY_NOTE}",
        report.evidence,
        effect,
        _confidence(report, known, base=0.45),
        report.severity,
        report.kind,
        "change",
    )


def _sglang_conservativeness_rule(
    stats: WindowStats, report: BottleneckReport
) -> Recommendation | None:
    if stats.engine != "sglang":
        return None
    current, known = _current(stats, "sglang", "schedule_conservativeness")
    if not isinstance(current, int | float) or current >= 3.0:
        return None
    new = round(min(3.0, current * 1.3), 2)
    return Recommendation(
        stats.target,
        "sglang",
        stats.model,
        "batch_size_tuning",
        "schedule_conservativeness",
        FLAGS[("sglang", "schedule_conservativeness")],
        current,
        new,
        f"{report.summary} SGLang retracts requests when its admission is too optimistic about "
        f"growth; raise --schedule-conservativeness from {current} to {new}"
        f"{_assumed('sglang', known)} so fewer are retracted.",
        report.evidence,
        "fewer retractions at slightly lower concurrency",
        _confidence(report, known, 0.45),
        report.severity,
        report.kind,
        "raise",
    )


def _batch_rule(
    stats: WindowStats, report: BottleneckReport, direction: str, slo_ms: float | None = None
) -> Recommendation | None:
    engine = stats.engine or ""
    parameter = BATCH_PARAMETER.get(engine)
    if parameter is None:
        return None
    current, known = _current(stats, engine, parameter)
    if current is None and stats.batch_limit is not None:
        current, known = stats.batch_limit, True
    assumed = _assumed(engine, known)
    plateau = report.evidence.get("batch_limit") if report.evidence.get("limit_inferred") else None
    if not known and current is not None and isinstance(plateau, int | float) and plateau > 0:
        # Running pinned at a plateau with a queue behind it: that is the cap in force, not the
        # engine default (stepping from the default could be far more than ×2 from the truth).
        current = int(plateau) if float(plateau).is_integer() else plateau
        assumed = " (current value inferred from the running plateau, not configured)"
    if not isinstance(current, int | float) or current <= 0:
        return None
    flag = FLAGS[(engine, parameter)]
    kv_mean = (
        float(stats.kv_usage[~_nan(stats.kv_usage)].mean())
        if (~_nan(stats.kv_usage)).any()
        else None
    )
    if direction == "raise":
        waiting = float(report.evidence.get("waiting_mean") or 0.0)
        new = int(min(current * MAX_BATCH_FACTOR, current + max(waiting, current * 0.25)))
        if kv_mean:
            # Do not raise concurrency past the point where KV use would reach 90 %.
            new = min(new, max(int(current), int(current * 0.9 / kv_mean)))
        if new <= current:
            return None
        effect = (
            f"up to +{(new / current - 1):.0%} requests in flight; "
            "throughput rises while the queue drains"
        )
        if kv_mean:
            effect += f"; projected KV use {min(1.0, kv_mean * new / current):.0%}"
        rationale = (
            f"{report.summary} KV cache has room (mean use {kv_mean:.0%}); "
            if kv_mean is not None
            else f"{report.summary} "
        ) + f"raise {flag} from {current:g} to {new}."
        if engine == "llamacpp":
            rationale += " Raise --ctx-size in proportion to keep each slot's context."
    else:
        p95_ms = float(report.evidence.get("itl_p95_ms") or 0.0)
        if not slo_ms or p95_ms <= 0:
            return None
        running = (
            float(stats.running[~_nan(stats.running)].mean()) if len(stats.running) else current
        )
        target_batch = max(1.0, running * slo_ms / p95_ms)
        new = int(
            max(math.ceil(current / MAX_BATCH_FACTOR), min(current - 1, math.floor(target_batch)))
        )
        if new >= current:
            return None
        effect = (
            f"inter-token latency p95 towards {slo_ms:.0f} ms (now {p95_ms:.0f} ms) "
            f"at up to {1 - new / current:.0%} less concurrency"
        )
        rationale = (
            f"{report.summary} Decode steps slow down as the batch grows; the ITL SLO takes "
            f"priority over throughput: lower {flag} from {current:g} to {new}."
        )
    source = assumed
    return Recommendation(
        stats.target,
        engine,
        stats.model,
        "batch_size_tuning",
        parameter,
        flag,
        current,
        new,
        rationale + source,
        report.evidence,
        effect,
        _confidence(report, known),
        report.severity,
        report.kind,
        direction,
    )


def _prefill_bound(report: BottleneckReport) -> bool:
    """A TTFT breach where waiting in the queue is not the larger part of the time."""
    queue_ms = report.evidence.get("queue_p95_ms")
    ttft_ms = report.evidence.get("ttft_p95_ms") or 0.0
    return queue_ms is None or queue_ms <= 0.5 * ttft_ms


def _prefill_rule(stats: WindowStats, report: BottleneckReport) -> Recommendation | None:
    """TTFT breach not caused by queueing: prefill is too slow, give it a bigger token budget."""
    engine = stats.engine or ""
    parameter = PREFILL_PARAMETER.get(engine)
    queue_ms = report.evidence.get("queue_p95_ms")
    if parameter is None or not _prefill_bound(report):
        return None  # waiting dominates TTFT: capacity, not prefill speed, is the problem
    current, known = _current(stats, engine, parameter)
    if not isinstance(current, int | float) or current >= 65536:
        return None
    prompts, finished = stats.increases.get("prompt_tokens"), stats.increases.get("finished")
    if prompts is not None and finished and prompts / finished <= current:
        return None  # the average prompt already fits in one step: a bigger budget changes nothing
    new = int(current * MAX_BATCH_FACTOR)
    flag = FLAGS[(engine, parameter)]
    queue = (
        f"queue p95 {queue_ms:.0f} ms"
        if queue_ms is not None
        else "nobody waits at the batch limit; queue time not measured"
    )
    return Recommendation(
        stats.target,
        engine,
        stats.model,
        "batch_size_tuning",
        parameter,
        flag,
        current,
        new,
        f"{report.summary} Queueing is not the cause ({queue}): long prompts are prefilled in "
        f"chunks of {current:g} tokens{_assumed(engine, known)}; raise {flag} to {new} so each "
        "prompt needs fewer steps.",
        report.evidence,
        "lower TTFT for long prompts; slightly higher ITL while prompts are prefilled",
        _confidence(report, known, 0.45),
        report.severity,
        report.kind,
        "raise",
    )


def _quantization_rule(
    stats: WindowStats, report: BottleneckReport, target: Target | None
) -> Recommendation | None:
    engine = stats.engine or ""
    gpu = _gpu(target)
    if gpu is None:
        return None
    parameter = {
        "vllm": "quantization",
        "sglang": "quantization",
        "tgi": "quantize",
        "llamacpp": "model_quant",
    }.get(engine)
    if parameter is None:
        return None
    current, known = _current(stats, engine, parameter)
    if engine == "llamacpp":
        ladder = {"fp16": "q8_0", "f16": "q8_0", "q8_0": "q4_k_m"}
        new = ladder.get(str(current).lower())
        scheme = f"a {str(new).upper()} GGUF model file"
    elif current not in UNQUANTIZED:
        return None  # already quantized: the next rung costs quality we cannot judge from metrics
    elif gpu.supports_fp8_compute:
        new = "fp8"
        scheme = f"FP8 W8A8 (native FP8 tensor cores on {gpu.name})"
    elif engine == "tgi":
        new = "awq"
        scheme = f"4-bit AWQ weights ({gpu.name} has no FP8 tensor cores)"
    else:
        new = "w8a8-int8" if engine == "vllm" else "w8a8_int8"
        scheme = (
            f"INT8 W8A8 (e.g. a compressed-tensors checkpoint; {gpu.name}, compute capability "
            f"{gpu.compute_capability}, has no FP8 tensor cores, where FP8 would run weight-only)"
        )
    if new is None:
        return None
    model = MODELS.get(stats.model or "")
    effect = "about half the weight memory freed for KV cache; faster memory-bound decode"
    if model is not None and engine != "llamacpp":
        freed = model.params_b * 1e9 / GIB  # 2 bytes → 1 byte per parameter
        effect = (
            f"≈{freed:.0f} GiB of weights freed for KV cache; decode reads half the weight bytes"
        )
    return Recommendation(
        stats.target,
        engine,
        stats.model,
        "quantization_optimization",
        parameter,
        FLAGS[(engine, parameter)],
        current,
        new,
        f"{report.summary} Serve the model as {scheme} instead of {current}"
        f"{_assumed(engine, known)}. {QUALITY_NOTE}",
        report.evidence | {"gpu": gpu.name, "compute_capability": gpu.compute_capability},
        effect,
        _confidence(report, known, base=0.35),
        report.severity,
        report.kind,
        "change",
    )


def _nan(values: np.ndarray) -> np.ndarray:
    return np.isnan(values)


def recommend(
    stats_list: list[WindowStats], reports: list[BottleneckReport], targets: dict[str, Target]
) -> list[Recommendation]:
    """Recommendations for every target, consistent per target (see the module docstring)."""
    by_target: dict[tuple[str, str | None], list[BottleneckReport]] = {}
    for report in reports:
        by_target.setdefault((report.target, report.model), []).append(report)
    results: list[Recommendation] = []
    for stats in stats_list:
        found = {r.kind: r for r in by_target.get((stats.target, stats.model), [])}
        if not found or ("target_down" in found and found["target_down"].severity == "critical"):
            continue
        target = targets.get(stats.target)
        candidates: list[Recommendation | None] = []
        kv = found.get("kv_cache_pressure") or found.get("preemption")
        itl = found.get("itl_slo_breach")
        if kv is not None:
            memory = _memory_rule(stats, kv, target)
            candidates.append(memory)
            if memory is None:
                candidates.append(
                    _fp8_kv_rule(stats, kv, target) or _quantization_rule(stats, kv, target)
                )
            if "preemption" in found:
                candidates.append(_sglang_conservativeness_rule(stats, found["preemption"]))
        if itl is not None:
            slo = target.slo.itl_p95_ms if target else None
            candidates.append(_batch_rule(stats, itl, "lower", slo))
            if kv is None:
                candidates.append(_quantization_rule(stats, itl, target))
        elif "queue_saturation" in found and kv is None:
            candidates.append(_batch_rule(stats, found["queue_saturation"], "raise"))
        if (
            "ttft_slo_breach" in found
            and itl is None
            and "queue_saturation" not in found
            and kv is None
        ):
            ttft = found["ttft_slo_breach"]
            candidates.append(_prefill_rule(stats, ttft))
            # Prefill is compute-bound: lower-precision tensor cores shorten it where queueing
            # is not the cause.
            if _prefill_bound(ttft):
                candidates.append(_quantization_rule(stats, ttft, target))
        chosen: dict[str, Recommendation] = {}
        for candidate in candidates:
            if candidate is not None and candidate.parameter not in chosen:
                chosen[candidate.parameter] = candidate
        results.extend(chosen.values())
    return results


def contradictions(recommendations: list[Recommendation]) -> list[str]:
    """Pairs of advice for one target that pull one parameter two ways (must be empty)."""
    seen: dict[tuple[str, str], Recommendation] = {}
    problems = []
    for rec in recommendations:
        key = (rec.target, rec.parameter)
        other = seen.get(key)
        if other is not None and other.recommended_value != rec.recommended_value:
            values = f"{other.recommended_value} and {rec.recommended_value}"
            problems.append(f"{rec.target}: {rec.parameter} → {values}")
        seen[key] = rec
    return problems
