"""Ladders: for each bottleneck kind and engine, the actions from cheapest to last resort.

A rung either proposes a `Step` or says in one line why it cannot apply here (cap reached, no
FP8 on this GPU, the engine does not accept the value at this version, …). The first rung that
applies is the advice; the reasons of the rungs before it go into the evidence, so a reader sees
why the cheaper steps were passed over. The last rung of every ladder applies whenever the
server has something left to give (fewer concurrent sequences) and otherwise asks for capacity
(another replica), saying plainly what it costs. Unknown hardware never gets FP8; it falls
through to the rungs that need no hardware facts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from perf_pipelines.findings import BottleneckReport
from perf_pipelines.recommendations import sizing
from perf_pipelines.recommendations.situation import Situation

MAX_MEMORY_FRACTION = 0.95  # keep ≥ 5 % of GPU memory for activations and CUDA graphs
# A token budget the server reports, this far below what the memory holds, was set by hand.
USER_SET_BUDGET_RATIO = 1.5
WEIGHT_BOUND_SHARE = 0.5  # weights at least half a decode step's bytes: quantize before batch
# Stands for a prefill budget the engine derived and does not export: vLLM V1 derives 2048 on
# smaller GPUs, SGLang 2048 below 25 GB; the advice can then only raise the budget in force.
MIN_DERIVED_PREFILL_BUDGET = 2048
QUALITY_NOTE = (
    "Validate output quality (e.g. your eval set or a perplexity check) on a canary before "
    "rolling this out: quantization changes the model's numerics."
)

MEMORY_FRACTION = {"vllm": "gpu_memory_utilization", "sglang": "mem_fraction_static"}
# The cap on sequences in the running batch. TGI batches by tokens (--max-batch-total-tokens,
# sized from free memory); --max-batch-size is an optional count cap on top, and
# --max-concurrent-requests only bounds what the router accepts, so it drains no queue.
CONCURRENCY = {
    "vllm": "max_num_seqs",
    "sglang": "max_running_requests",
    "tgi": "max_batch_size",
    "llamacpp": "parallel",
}
# Engines whose batch has no count cap unless one is set: a plateau there is not a cap.
COUNT_CAP_OPTIONAL = {"tgi"}
PREFILL_BUDGET = {
    "vllm": "max_num_batched_tokens",
    "sglang": "chunked_prefill_size",
    "tgi": "max_batch_prefill_tokens",
    "llamacpp": "ubatch_size",
}
# KV-cache dtypes that halve the cache, in each engine's spelling, first choice first.
FP8_KV = {
    "vllm": ("fp8", "fp8_e4m3"),
    "sglang": ("fp8_e4m3",),
    "tgi": ("fp8_e4m3fn", "fp8_e5m2"),
}
QUANTIZATION = {"vllm": "quantization", "sglang": "quantization", "tgi": "quantize"}
# Weight formats an engine can serve from the 16-bit checkpoint it already has, by the GPU's FP8
# support; first accepted wins. None of these needs a new checkpoint.
WEIGHT_FORMATS: dict[str, dict[str, tuple[str, ...]]] = {
    "vllm": {"compute": ("fp8",), "weight_only": ("fp8",), "none": ()},
    "sglang": {"compute": ("fp8",), "weight_only": (), "none": ()},
    "tgi": {"compute": ("fp8",), "weight_only": ("eetq",), "none": ("eetq",)},
}
UNQUANTIZED = {"fp16", "bf16", "float16", "bfloat16", "auto", "none", "None", ""}


@dataclass
class Step:
    parameter: str
    value: Any
    direction: str  # "raise" | "lower" | "change": keeps one target's advice consistent
    capability: str
    rationale: str
    effect: str
    computation: dict[str, Any] = field(default_factory=dict)
    sized: bool = True
    base_confidence: float = 0.55
    cost: str | None = None  # said for last resorts and anything that trades something away
    current: Any = None  # the value the step moves from, where the rung inferred it


Rung = Callable[[Situation, BottleneckReport], "Step | str"]


def _flag(situation: Situation, parameter: str) -> str:
    fact = situation.fact(parameter)
    return fact.flag if fact is not None else f"--{parameter.replace('_', '-')}"


def _number(situation: Situation, parameter: str) -> tuple[float, str] | str:
    current = situation.current(parameter)
    value = current.number()
    if value is None:
        return f"{parameter}: current value unknown and no default for {situation.engine}"
    return value, current.note


def _shown(value: float) -> str:
    return f"{value:g}"


# --- memory ---------------------------------------------------------------------------------


def raise_memory_fraction(situation: Situation, report: BottleneckReport) -> Step | str:
    parameter = MEMORY_FRACTION.get(situation.engine)
    if parameter is None:
        return f"memory fraction: {situation.engine or 'this engine'} sizes its KV cache itself"
    current = _number(situation, parameter)
    if isinstance(current, str):
        return current
    value, note = current
    fact = situation.fact(parameter)
    cap = MAX_MEMORY_FRACTION
    if fact is not None and fact.maximum is not None:
        cap = min(cap, fact.maximum)
    if value >= cap - 1e-9:
        return f"{parameter}: already {_shown(value)}, at the cap of {cap}"
    step = sizing.memory_fraction(situation, value, cap)
    flag = _flag(situation, parameter)
    share = f"+{(step.value - value) * 100:.0f} % of GPU memory"
    effect = f"KV cache {share}"
    total = situation.total_gpu_bytes
    if total is not None:
        extra_bytes = (step.value - value) * total
        effect = f"KV cache +{extra_bytes / 1024**3:.1f} GiB ({share})"
        per_token = situation.kv_bytes_per_token(situation.current("kv_cache_dtype").value)
        capacity = situation.stats.kv_capacity_tokens
        if per_token:
            tokens = extra_bytes / per_token
            effect += f" ≈ +{tokens:,.0f} tokens"
            if capacity:
                effect += f" (+{tokens / capacity:.0%} of {capacity:,.0f})"
    effect += "; fewer preemptions and a shorter queue while memory is the limit"
    return Step(
        parameter,
        step.value,
        "raise",
        "kv_cache_optimization",
        f"Give the KV cache more of the GPU memory: raise {flag} from {_shown(value)} to "
        f"{step.value:g}{note}. Keeps ≥ {1 - MAX_MEMORY_FRACTION:.0%} for activations.",
        effect,
        step.computation,
        step.sized,
        0.6,
    )


def fp8_kv_cache(situation: Situation, report: BottleneckReport) -> Step | str:
    choices = FP8_KV.get(situation.engine)
    if choices is None:
        return f"FP8 KV cache: not available on {situation.engine or 'this engine'}"
    if situation.fp8 != "compute":
        return f"FP8 KV cache: {situation.gpu_label} has no FP8 compute (not advised)"
    current = situation.current("kv_cache_dtype")
    if str(current.value).startswith("fp8"):
        return f"kv_cache_dtype: already {current.value}"
    reasons = []
    for value in choices:
        refused = situation.accepts("kv_cache_dtype", value)
        if refused is None:
            capacity = situation.stats.kv_capacity_tokens
            effect = "≈ 2× KV-cache tokens in the same memory"
            if capacity:
                effect += f" ({capacity:,.0f} → ≈{2 * capacity:,.0f})"
            return Step(
                "kv_cache_dtype",
                value,
                "change",
                "kv_cache_optimization",
                f"Store the KV cache in FP8 on this {situation.gpu_facts} (FP8 compute): "
                f"{_flag(situation, 'kv_cache_dtype')} {value} instead of "
                f"{current.value or 'the model dtype'}{current.note}. {QUALITY_NOTE}",
                effect,
                {"fp8_support": situation.fp8, "gpu": situation.gpu_label},
                base_confidence=0.5,
                cost="small accuracy risk; validate before roll-out",
            )
        reasons.append(refused)
    return f"FP8 KV cache: {'; '.join(reasons)}"


def quantize_kv_cache_llamacpp(situation: Situation, report: BottleneckReport) -> Step | str:
    if situation.engine != "llamacpp":
        return "KV cache quantization (llama.cpp): not this engine"
    current = situation.current("cache_type_k")
    if str(current.value) not in ("f16", "f32", "bf16"):
        return f"cache_type_k: already {current.value}"
    refused = situation.accepts("cache_type_k", "q8_0")
    if refused is not None:
        return f"cache_type_k q8_0: {refused}"
    return Step(
        "cache_type_k",
        "q8_0",
        "change",
        "kv_cache_optimization",
        f"Store the K cache as q8_0 (--cache-type-k q8_0, from {current.value}{current.note}): "
        "about half its memory, so each slot keeps more context. The V cache can follow "
        "(--cache-type-v q8_0) only with flash attention on. " + QUALITY_NOTE,
        "≈ 25 % less KV memory (K halved); more context per slot at the same memory",
        {"cache_type_k_now": current.value},
        base_confidence=0.45,
        cost="small accuracy risk; validate before roll-out",
    )


def quantize_weights(situation: Situation, report: BottleneckReport) -> Step | str:
    parameter = QUANTIZATION.get(situation.engine)
    if parameter is None:
        return f"weight quantization: {situation.engine} loads a quantized model file instead"
    current = situation.current(parameter)
    if str(current.value) not in UNQUANTIZED and current.value is not None:
        return f"{parameter}: already {current.value} (a lower rung costs quality we cannot judge)"
    hint = _quantized_model_name(situation.stats.model)
    if current.value is None and hint is not None:
        return f"{parameter}: the model name says it is already quantized ({hint})"
    if situation.gpu is None:
        return f"weight quantization: {situation.gpu_label} (no advice that needs hardware facts)"
    reasons = []
    for value in WEIGHT_FORMATS[situation.engine][situation.fp8]:
        refused = situation.accepts(parameter, value)
        if refused is None:
            return _weight_step(situation, parameter, value, current.value, current.note)
        reasons.append(refused)
    if not reasons:
        return (
            f"{parameter}: on {situation.gpu_label} (FP8: {situation.fp8}) {situation.engine} "
            "has no format it can make from the 16-bit checkpoint; an INT8 or 4-bit checkpoint "
            "would be a model change"
        )
    return f"{parameter}: {'; '.join(reasons)}"


_QUANTIZED_NAME_HINTS = (
    "awq",
    "gptq",
    "fp8",
    "int8",
    "int4",
    "w8a8",
    "w4a16",
    "gguf",
    "bnb",
    "nvfp4",
)


def _quantized_model_name(model: str | None) -> str | None:
    """The quantization a model's name announces (the checkpoint decides when no flag is set)."""
    lowered = (model or "").lower()
    return next((hint for hint in _QUANTIZED_NAME_HINTS if hint in lowered), None)


def _weight_step(
    situation: Situation, parameter: str, value: str, current: object, note: str
) -> Step:
    scheme = {
        "compute": f"FP8 W8A8 on the FP8 tensor cores of this {situation.gpu_label}",
        "weight_only": f"FP8 weights, 16-bit compute (this {situation.gpu_label} has no FP8 "
        "tensor cores: weight-only kernels)",
        "none": f"8-bit weights quantized at load time ({situation.gpu_label} has no FP8)",
    }[situation.fp8]
    effect = "about half the weight memory freed for KV cache; decode reads half the weight bytes"
    if situation.model is not None:
        freed = situation.model.params_b * 1e9 / (1024**3)
        effect = f"≈{freed:.0f} GiB of weights freed for KV cache; decode reads half the bytes"
    return Step(
        parameter,
        value,
        "change",
        "quantization_optimization",
        f"Serve the model as {scheme}: {_flag(situation, parameter)} {value} instead of "
        f"{current if current is not None else 'the checkpoint as it is (16-bit)'}{note}. "
        f"{QUALITY_NOTE}",
        effect,
        {"gpu": situation.gpu_label, "fp8_support": situation.fp8},
        base_confidence=0.4,
        cost="accuracy risk; validate before roll-out",
    )


# --- concurrency ----------------------------------------------------------------------------


def _concurrency_now(situation: Situation, report: BottleneckReport) -> tuple[float, str] | str:
    parameter = CONCURRENCY.get(situation.engine)
    if parameter is None:
        return f"concurrency: no cap known for {situation.engine or 'this engine'}"
    current = situation.current(parameter)
    if situation.engine in COUNT_CAP_OPTIONAL:
        value = current.number()
        if value is None or value <= 0:
            return f"{parameter}: not set; {situation.engine} caps its batch by tokens"
        return value, current.note
    plateau = report.evidence.get("batch_limit") if report.evidence.get("limit_inferred") else None
    if not current.known and isinstance(plateau, int | float) and plateau > 0:
        # Running pinned at a plateau with a queue behind it: that is the cap in force.
        return float(plateau), " (current value inferred from the running plateau)"
    value = current.number()
    if value is not None and value > 0:
        return value, current.note
    if situation.stats.batch_limit:
        return situation.stats.batch_limit, f" ({situation.stats.batch_limit_source})"
    # No cap known (the engine derives it from memory at start-up): the most that ran at once is
    # the cap in force as far as this window can tell.
    observed = situation.stats.running[~np.isnan(situation.stats.running)]
    if len(observed) and float(observed.max()) >= 1:
        peak = float(np.floor(observed.max()))
        return peak, f" (not configured; {peak:g} ran at once at most in the window)"
    return f"{parameter}: current value unknown and nothing ran in the window"


@dataclass(frozen=True)
class _Lowering:
    """What a rung that lowers the concurrency cap says: why, to what effect, at what cost."""

    why: str  # the rationale's sentence before "lower FLAG from X to Y"
    effect: str
    cost: str
    confidence: float


def _lower_concurrency(
    situation: Situation,
    report: BottleneckReport,
    size: Callable[[float], sizing.Sized],
    words: Callable[[float, int], _Lowering],
    no_change: str,
) -> Step | str:
    now = _concurrency_now(situation, report)
    if isinstance(now, str):
        return now
    value, note = now
    parameter = CONCURRENCY[situation.engine]
    if value <= 1:
        return f"{parameter}: already 1"
    step = size(value)
    new = int(step.value)
    if new >= value:
        return f"{parameter}: {no_change}"
    said = words(value, new)
    return Step(
        parameter,
        new,
        "lower",
        "batch_size_tuning",
        f"{said.why}: lower {_flag(situation, parameter)} from {_shown(value)} to {new}{note}.",
        said.effect,
        step.computation,
        step.sized,
        said.confidence,
        cost=said.cost,
        current=value,
    )


def cap_concurrency_to_kv(situation: Situation, report: BottleneckReport) -> Step | str:
    return _lower_concurrency(
        situation,
        report,
        lambda value: sizing.concurrency_for_kv(situation, value),
        lambda value, new: _Lowering(
            "Admit no more sequences than the KV cache holds",
            f"no preemption or recomputation; at most {new} requests run at once",
            f"throughput capped at {new} concurrent requests: the queue grows under peaks",
            0.5,
        ),
        "the KV cache holds no fewer sequences than the cap",
    )


def raise_concurrency(situation: Situation, report: BottleneckReport) -> Step | str:
    now = _concurrency_now(situation, report)
    if isinstance(now, str):
        return now
    value, note = now
    parameter = CONCURRENCY[situation.engine]
    step = sizing.concurrency_for_queue(situation, value)
    fact = situation.fact(parameter)
    new = int(step.value)
    if fact is not None and fact.maximum is not None:
        new = min(new, int(fact.maximum))
    if new <= value:
        return (
            f"{parameter}: the KV cache has no room for more than {_shown(value)} sequences "
            f"(usage {situation.kv_mean or 0:.0%} now)"
        )
    flag = _flag(situation, parameter)
    effect = f"up to +{new / value - 1:.0%} requests in flight; the queue drains"
    if situation.kv_mean is not None and situation.running_mean:
        projected = min(1.0, situation.kv_mean * new / situation.running_mean)
        effect += f"; projected KV use {projected:.0%}"
    rationale = f"Let the queued requests in: raise {flag} from {_shown(value)} to {new}{note}."
    if situation.kv_mean is not None and situation.kv_exported:
        rationale = f"The KV cache has room (mean use {situation.kv_mean:.0%}). " + rationale
    if situation.engine == "llamacpp":
        rationale += _llamacpp_context_note(situation, value, new)
    return Step(
        parameter,
        new,
        "raise",
        "batch_size_tuning",
        rationale,
        effect,
        step.computation,
        step.sized,
        0.6,
        current=value,
    )


def _llamacpp_context_note(situation: Situation, slots: float, new: int) -> str:
    ctx = situation.current("ctx_size").number()
    if ctx is None or ctx <= 0:
        return " Raise --ctx-size in proportion to keep each slot's context."
    per_slot = ctx / slots
    return (
        f" llama.cpp splits --ctx-size among the slots ({ctx:g} / {slots:g} = {per_slot:,.0f} "
        f"tokens each): raise --ctx-size to {per_slot * new:,.0f} to keep that, memory allowing."
    )


def lower_concurrency_for_itl(situation: Situation, report: BottleneckReport) -> Step | str:
    slo = situation.target.slo.itl_p95_ms if situation.target else None
    p95 = report.evidence.get("itl_p95_ms")
    if not slo or not isinstance(p95, int | float) or p95 <= 0:
        return "ITL: no SLO or no p95 to size the step"
    return _lower_concurrency(
        situation,
        report,
        lambda value: sizing.concurrency_for_itl(situation, value, slo, p95),
        lambda value, new: _Lowering(
            "Decode steps slow down as the batch grows; the ITL SLO takes priority over throughput",
            f"inter-token latency p95 towards {slo:.0f} ms (now {p95:.0f} ms) at up to "
            f"{1 - new / value:.0%} less concurrency",
            "fewer concurrent requests: throughput drops, the queue may grow",
            0.55,
        ),
        "already at the batch the ITL SLO allows",
    )


def raise_token_budget(situation: Situation, report: BottleneckReport) -> Step | str:
    """TGI with a --max-batch-total-tokens set below what its memory holds."""
    if situation.engine != "tgi":
        return "token budget: TGI only"
    current = situation.current("max_batch_total_tokens")
    value = current.number()
    if value is None or not current.known:
        return "max_batch_total_tokens: not known, so TGI sized it from free memory at warm-up"
    sized = sizing.tgi_memory_budget(situation)
    if sized is None:
        return "max_batch_total_tokens: model or GPU unknown, cannot size it from memory"
    budget, computation = sized
    # A budget the server reports may be the one TGI sized itself: only one well below what the
    # memory holds is a cap someone set.
    needed = 1.05 if current.source == "targets file" else USER_SET_BUDGET_RATIO
    if budget <= value * needed:
        return f"max_batch_total_tokens: {value:g} is about what the memory holds ({budget})"
    flag = _flag(situation, "max_batch_total_tokens")
    return Step(
        "max_batch_total_tokens",
        budget,
        "raise",
        "kv_cache_optimization",
        f"The queue waits on a token budget set below what the memory holds: raise {flag} from "
        f"{value:g} to {budget} (TGI refuses to start past its free memory; this keeps 15 % "
        "for activations).",
        f"room for ×{budget / value:.1f} the tokens in the running batch",
        computation,
        base_confidence=0.6,
        current=value,
    )


def quantize_weights_for_decode(situation: Situation, report: BottleneckReport) -> Step | str:
    """First for an ITL breach when the weights are most of what a decode step reads."""
    bound = sizing.decode_weight_bound(situation)
    if bound is None:
        return "decode bytes: model or GPU unknown, cannot tell weights from KV"
    if bound["weight_share_of_step_bytes"] < WEIGHT_BOUND_SHARE:
        share = bound["weight_share_of_step_bytes"]
        return f"decode reads mostly KV ({1 - share:.0%} of its bytes): the batch is the lever"
    step = quantize_weights(situation, report)
    if isinstance(step, Step):
        step.computation |= bound
        step.rationale = (
            f"A decode step reads {bound['weight_share_of_step_bytes']:.0%} weights and the "
            "rest KV, so a smaller batch would cost throughput and barely shorten it. "
            + step.rationale
        )
    return step


def raise_prefill_budget(situation: Situation, report: BottleneckReport) -> Step | str:
    parameter = PREFILL_BUDGET.get(situation.engine)
    if parameter is None:
        return "prefill budget: no flag known for this engine"
    current = _number(situation, parameter)
    derived = isinstance(current, str)
    if isinstance(current, str):
        # Derived by the engine at start-up and not exported: the smallest budget any version
        # derives stands for it, so the advice can only raise the budget in force.
        current = (float(MIN_DERIVED_PREFILL_BUDGET), " (current value derived by the engine)")
    value, note = current
    fact = situation.fact(parameter)
    step = sizing.prefill_budget(situation, value, fact.maximum if fact else None)
    if step is None:
        prompt = situation.prompt_mean
        shown = "unknown" if prompt is None else f"{prompt:,.0f}"
        return f"{parameter}: the mean prompt ({shown} tokens) already fits in {_shown(value)}"
    flag = _flag(situation, parameter)
    return Step(
        parameter,
        int(step.value),
        "raise",
        "batch_size_tuning",
        f"{_prefill_cause(report)}prompts are prefilled in chunks of {_shown(value)} tokens"
        f"{note}; raise {flag} to {int(step.value)} so the mean prompt needs one step.",
        "lower TTFT for long prompts; slightly higher ITL while prompts are prefilled",
        step.computation,
        step.sized,
        0.45,
        current=None if derived else value,
    )


def _prefill_cause(report: BottleneckReport) -> str:
    if report.evidence.get("cause") == "queueing":
        # Not at the batch cap and the KV cache not full, yet requests wait: each step admits
        # only as many prompt tokens as its budget.
        return "Requests wait although the batch is not full: each step admits a budget of "
    return "Queueing is not the cause: "


def raise_sglang_conservativeness(situation: Situation, report: BottleneckReport) -> Step | str:
    if situation.engine != "sglang":
        return "schedule conservativeness: SGLang only"
    current = _number(situation, "schedule_conservativeness")
    if isinstance(current, str):
        return current
    value, note = current
    fact = situation.fact("schedule_conservativeness")
    cap = fact.maximum if fact is not None and fact.maximum is not None else 3.0
    cap = min(cap, 3.0)
    if value >= cap:
        return f"schedule_conservativeness: already {value:g}"
    preempted = report.evidence.get("preemptions") or 0.0
    finished = report.evidence.get("finished_requests") or 0.0
    share = preempted / finished if finished else 0.3
    new = round(min(cap, value * (1.0 + min(1.0, max(0.1, share)))), 2)
    return Step(
        "schedule_conservativeness",
        new,
        "raise",
        "batch_size_tuning",
        "SGLang retracts requests when its admission is too optimistic about how much their "
        f"outputs will grow; raise --schedule-conservativeness from {value:g} to {new}{note}.",
        "fewer retractions at slightly lower concurrency",
        {
            "retracted": preempted,
            "finished_requests": finished,
            "formula": "current × (1 + retracted / finished), share within [0.1, 1]",
        },
        base_confidence=0.5,
    )


def add_replica(situation: Situation, report: BottleneckReport) -> Step:
    """The last resort when no flag of this server can help: more capacity."""
    return Step(
        "replicas",
        "+1",
        "raise",
        "batch_size_tuning",
        "No setting of this server can absorb the load it sees: serve the model from one more "
        "replica (or with more tensor parallelism on more GPUs) behind the load balancer.",
        "the load splits over one more server; queueing and KV pressure fall in proportion",
        {"engine_settings_exhausted": True},
        base_confidence=0.4,
        cost="one more server's GPUs",
    )


# kind -> engine -> rungs, cheapest first. The closing rung applies wherever nothing else can.
LADDERS: dict[str, dict[str, tuple[Rung, ...]]] = {
    "kv_cache_pressure": {
        "vllm": (raise_memory_fraction, fp8_kv_cache, quantize_weights, cap_concurrency_to_kv),
        "sglang": (raise_memory_fraction, fp8_kv_cache, quantize_weights, cap_concurrency_to_kv),
        "tgi": (raise_token_budget, fp8_kv_cache, quantize_weights, cap_concurrency_to_kv),
        "llamacpp": (quantize_kv_cache_llamacpp, cap_concurrency_to_kv),
    },
    "preemption": {
        "vllm": (raise_memory_fraction, fp8_kv_cache, cap_concurrency_to_kv),
        "sglang": (
            raise_sglang_conservativeness,
            raise_memory_fraction,
            fp8_kv_cache,
            cap_concurrency_to_kv,
        ),
        "tgi": (fp8_kv_cache, cap_concurrency_to_kv),
        "llamacpp": (quantize_kv_cache_llamacpp, cap_concurrency_to_kv),
    },
    "queue_saturation": {
        "vllm": (raise_concurrency, raise_memory_fraction, fp8_kv_cache, quantize_weights),
        "sglang": (raise_concurrency, raise_memory_fraction, fp8_kv_cache, quantize_weights),
        "tgi": (raise_token_budget, raise_concurrency, fp8_kv_cache, quantize_weights),
        "llamacpp": (raise_concurrency, quantize_kv_cache_llamacpp),
    },
    "itl_slo_breach": {
        engine: (quantize_weights_for_decode, lower_concurrency_for_itl, quantize_weights)
        for engine in ("vllm", "sglang", "tgi", "llamacpp")
    },
    "ttft_slo_breach": {
        engine: (raise_prefill_budget, quantize_weights)
        for engine in ("vllm", "sglang", "tgi", "llamacpp")
    },
}
LAST_RESORT: Rung = add_replica
