"""Step sizes computed from the window's evidence, each with the arithmetic a reader can check.

Every function returns the proposed value and a `computation` dict of the numbers it used; the
recommendation's evidence carries that dict, so an operator can redo the sum by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from perf_pipelines.recommendations.situation import Situation

TARGET_KV_USAGE = 0.85  # size KV so that the load seen uses 85 %: below the 90 % pressure mark
MEMORY_STEP = 0.05  # the step when the KV arithmetic lacks an input (said in the evidence)
MAX_BATCH_FACTOR = 2.0  # never more than ×2 or ÷2 of a batch limit in one step…
MAX_QUEUE_FACTOR = 4.0  # …but ×4 for a queue where the KV gauge shows the room for it
TGI_MEMORY_USE = 0.85  # of GPU memory for weights and KV when sizing TGI's token budget
LOAD_FLOOR_MARGIN = 1.2  # a cap lowered for ITL keeps 20 % over what the load keeps in flight
MAX_PREFILL_FACTOR = 4.0  # a prefill budget moves at most ×4 in one step


@dataclass
class Sized:
    value: float
    computation: dict[str, Any] = field(default_factory=dict)
    sized: bool = True  # False: a fixed step because an input was missing (computation says)


def _round_up(value: float, step: float = 0.01) -> float:
    return round(math.ceil(value / step - 1e-9) * step, 2)


def kv_tokens_needed(situation: Situation) -> tuple[float, dict[str, Any]] | None:
    """KV tokens that would hold the load seen at TARGET_KV_USAGE: the running and the waiting
    sequences at their measured size, or the peak usage seen, whichever is larger."""
    per_sequence = situation.tokens_per_sequence
    capacity = situation.stats.kv_capacity_tokens
    if per_sequence is None or not capacity:
        return None
    tokens, how = per_sequence
    sequences = (situation.running_mean or 0.0) + situation.waiting_mean
    demand = sequences * tokens / TARGET_KV_USAGE
    # kv_exported: the gauge has at least one finite sample, so nanmax has a value to return
    peak = float(np.nanmax(situation.stats.kv_usage)) if situation.kv_exported else 0.0
    needed = max(demand, capacity * peak / TARGET_KV_USAGE)
    return needed, {
        "tokens_per_sequence": round(tokens),
        "tokens_per_sequence_from": how,
        "sequences_running_plus_waiting": round(sequences, 1),
        "kv_tokens_capacity": round(capacity),
        "kv_usage_peak": round(peak, 3),
        "target_kv_usage": TARGET_KV_USAGE,
        "kv_tokens_needed": round(needed),
    }


def memory_fraction(situation: Situation, current: float, cap: float) -> Sized:
    """The memory fraction whose extra memory holds `kv_tokens_needed`, capped at `cap`."""
    need = kv_tokens_needed(situation)
    kv_dtype = situation.current("kv_cache_dtype").value
    per_token = situation.kv_bytes_per_token(kv_dtype)
    total = situation.total_gpu_bytes
    missing = [
        name
        for name, value in (
            ("KV tokens needed (capacity, usage or token counts)", need),
            ("model profile (KV bytes per token)", per_token),
            ("GPU memory (hardware in the targets file)", total),
        )
        if value is None
    ]
    if missing or need is None or per_token is None or total is None:
        new = min(cap, _round_up(current + MEMORY_STEP))
        return Sized(new, {"fixed_step": MEMORY_STEP, "not_sized_because": missing}, sized=False)
    needed, computation = need
    extra_tokens = max(0.0, needed - computation["kv_tokens_capacity"])
    extra_fraction = extra_tokens * per_token / total
    new = min(cap, _round_up(current + max(0.01, extra_fraction)))
    computation |= {
        "kv_tokens_extra": round(extra_tokens),
        "kv_bytes_per_token": round(per_token),
        "gpu_memory_bytes_total": round(total),
        "memory_fraction_extra": round(extra_fraction, 4),
        "memory_fraction_cap": cap,
        "covers_share_of_need": round(
            min(1.0, (new - current) / extra_fraction) if extra_fraction > 0 else 1.0, 3
        ),
    }
    return Sized(new, computation)


def concurrency_for_kv(situation: Situation, current: float) -> Sized:
    """The concurrency cap the KV cache holds at TARGET_KV_USAGE, below `current`."""
    running, kv = situation.running_mean, situation.kv_mean
    per_sequence = situation.tokens_per_sequence
    capacity = situation.stats.kv_capacity_tokens
    if running and kv and situation.kv_exported and kv > 0:
        value = math.floor(TARGET_KV_USAGE * running / kv)
        computation: dict[str, Any] = {
            "running_mean": round(running, 1),
            "kv_usage_mean": round(kv, 3),
            "formula": "floor(target_kv_usage × running_mean / kv_usage_mean)",
        }
    elif capacity and per_sequence is not None:
        value = math.floor(TARGET_KV_USAGE * capacity / per_sequence[0])
        computation = {
            "kv_tokens_capacity": round(capacity),
            "tokens_per_sequence": round(per_sequence[0]),
            "tokens_per_sequence_from": per_sequence[1],
            "formula": "floor(target_kv_usage × capacity / tokens_per_sequence)",
        }
    else:
        value = math.floor(current * 0.75)
        return Sized(
            max(1, min(value, current - 1)),
            {"fixed_step": "×0.75", "not_sized_because": ["no KV usage or token counts"]},
            sized=False,
        )
    computation["target_kv_usage"] = TARGET_KV_USAGE
    floor = math.ceil(current / MAX_BATCH_FACTOR)
    return Sized(max(1, floor, min(value, current - 1)), computation)


def concurrency_for_queue(situation: Situation, current: float) -> Sized:
    """Room for the mean queue: at most ×4 where the KV gauge shows the headroom (and never past
    it), at most ×2 where it cannot be seen."""
    waiting = situation.waiting_mean
    running, kv = situation.running_mean, situation.kv_mean
    seen = bool(running and kv and situation.kv_exported and kv > 0)
    factor = MAX_QUEUE_FACTOR if seen else MAX_BATCH_FACTOR
    computation: dict[str, Any] = {
        "batch_limit": current,
        "waiting_mean": round(waiting, 1),
        "at_most": f"×{factor:g}",
    }
    room = _batch_room(situation)
    if not seen and room is not None:
        factor = MAX_QUEUE_FACTOR  # the engine's own budget shows the room instead of a KV gauge
        computation |= room[1] | {"at_most": f"×{factor:g}"}
    value = math.floor(min(current * factor, current + max(waiting, 1.0)))
    if room is not None:
        value = min(value, room[0])
    if seen and running and kv:
        kv_room = math.floor(TARGET_KV_USAGE * running / kv)
        computation |= {
            "running_mean": round(running, 1),
            "kv_usage_mean": round(kv, 3),
            "kv_allows": kv_room,
            "kv_formula": "floor(target_kv_usage × running_mean / kv_usage_mean)",
        }
        value = min(value, kv_room)
    computation["proposed"] = value
    return Sized(value, computation)


def _batch_room(situation: Situation) -> tuple[int, dict[str, Any]] | None:
    """How many sequences the engine's own budget holds where no KV gauge says it: TGI's token
    budget over the tokens each request reserves; llama.cpp's context over the context each
    request reaches (its slots share --ctx-size), with a quarter to spare."""
    stats = situation.stats
    budget, reserved = stats.token_budget_tokens, stats.reserved_tokens_per_request
    if situation.engine == "tgi" and budget and reserved:
        return math.floor(budget / reserved), {
            "token_budget_tokens": round(budget),
            "reserved_tokens_per_request": round(reserved),
            "budget_allows": math.floor(budget / reserved),
        }
    ctx = situation.current("ctx_size").number()
    context = stats.context_tokens_per_request
    if situation.engine == "llamacpp" and ctx and context:
        allows = math.floor(ctx / (context * 1.25))
        return allows, {
            "ctx_size": ctx,
            "context_tokens_per_request": round(context),
            "context_allows": allows,
            "context_formula": "floor(ctx_size / (1.25 × context per request))",
        }
    return None


def tgi_memory_budget(situation: Situation) -> tuple[int, dict[str, Any]] | None:
    """The token budget TGI would size from free memory itself: (GPU memory × memory fraction
    × 0.85 − weight bytes) ÷ KV bytes per token; None where model or GPU is unknown."""
    total, model = situation.total_gpu_bytes, situation.model
    per_token = situation.kv_bytes_per_token(situation.current("kv_cache_dtype").value)
    if total is None or model is None or per_token is None:
        return None
    fraction = situation.current("cuda_memory_fraction").number() or 1.0
    quantized = str(situation.current("quantize").value or "").lower()
    bytes_per_weight = 1.0 if quantized in ("fp8", "eetq", "bitsandbytes") else 2.0
    if quantized in ("awq", "gptq", "marlin", "bitsandbytes-nf4", "bitsandbytes-fp4"):
        bytes_per_weight = 0.5
    weights = model.params_b * 1e9 * bytes_per_weight
    free = total * fraction * TGI_MEMORY_USE - weights
    if free <= 0:
        return None
    tokens = math.floor(free / per_token / 256) * 256
    return tokens, {
        "gpu_memory_bytes_total": round(total),
        "cuda_memory_fraction": fraction,
        "weight_bytes": round(weights),
        "kv_bytes_per_token": round(per_token),
        "memory_budget_tokens": tokens,
        "formula": "(memory × fraction × 0.85 − weights) / KV bytes per token",
    }


def load_floor(situation: Situation, slo_ms: float) -> tuple[int, dict[str, Any]] | None:
    """Sequences the load keeps in flight when each decodes at the SLO's pace (Little's law:
    finished per second × output tokens × seconds per token), with 20 % to spare. A cap below
    it would queue requests without bound; None where the window lacks the counts."""
    rate = situation.stats.rates.get("finished")
    output = situation.output_mean
    if not rate or rate <= 0 or not output:
        return None
    floor = math.ceil(LOAD_FLOOR_MARGIN * rate * output * slo_ms / 1000)
    return floor, {
        "finished_per_s": round(rate, 3),
        "output_tokens_mean": round(output),
        "load_floor": floor,
        "load_floor_formula": "ceil(1.2 × finished/s × output tokens × slo)",
    }


def concurrency_for_itl(
    situation: Situation, current: float, slo_ms: float, p95_ms: float
) -> Sized:
    """Decode time per step grows with the batch: scale the running batch by SLO / p95, at most
    ÷2, and never below what the load keeps in flight at the SLO's pace."""
    running = situation.running_mean or current
    target_batch = max(1.0, running * slo_ms / p95_ms)
    floor = math.ceil(current / MAX_BATCH_FACTOR)
    value = max(1, floor, min(current - 1, math.floor(target_batch)))
    computation: dict[str, Any] = {
        "running_mean": round(running, 1),
        "itl_p95_ms": round(p95_ms, 1),
        "itl_slo_ms": slo_ms,
        "formula": "floor(running_mean × slo / p95), at most ÷2",
        "target_batch": round(target_batch, 1),
    }
    needed = load_floor(situation, slo_ms)
    if needed is not None:
        computation |= needed[1]
        value = max(value, needed[0])
    return Sized(value, computation)


def decode_weight_bound(situation: Situation) -> dict[str, Any] | None:
    """Bytes a decode step reads: the weights once, each running sequence's KV. When the weights
    are the larger part, a smaller batch barely shortens the step and fewer weight bytes do;
    None where model or GPU is unknown."""
    model, per_sequence = situation.model, situation.tokens_per_sequence
    running = situation.running_mean
    per_token = situation.kv_bytes_per_token(situation.current("kv_cache_dtype").value)
    if model is None or per_sequence is None or not running or per_token is None:
        return None
    weights = model.active_params_b * 1e9 * 2.0
    kv = running * per_sequence[0] * per_token
    return {
        "weight_bytes_per_step": round(weights),
        "kv_bytes_per_step": round(kv),
        "weight_share_of_step_bytes": round(weights / (weights + kv), 3),
    }


def prefill_budget(situation: Situation, current: float, maximum: float | None) -> Sized | None:
    """A budget that fits the mean prompt in one step (next power of two), at most ×4."""
    prompt = situation.prompt_mean
    if prompt is None or prompt <= current:
        return None
    fitting = 2 ** math.ceil(math.log2(prompt))
    value = min(current * MAX_PREFILL_FACTOR, float(fitting))
    if maximum is not None:
        value = min(value, maximum)
    if value <= current:
        return None
    return Sized(
        int(value),
        {
            "prompt_tokens_mean": round(prompt),
            "budget_now": current,
            "formula": "next power of two ≥ mean prompt, at most ×4",
        },
    )
