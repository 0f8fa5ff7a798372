"""Goodput of one simulated server under given settings, measured the same way every time, and
the oracle that grid-searches the settings the agent may touch.

Every settings point — the scenario's start, each step of the closed loop, every grid point of
the oracle — is scored by `measure_goodput`: a fresh server on a virtual clock with the same
seed (hence the same arrivals), warmed up, then measured over the same window. Differences are
then due to the settings alone, not to the luck of the draw.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from perf_lab.simulator.fleet import Fleet, ServerSpec
from perf_lab.simulator.settings import validate_settings

from perf_pipelines.hardware import gpu_by_name


@dataclass(frozen=True)
class EvaluationConfig:
    warmup_s: float = 180.0  # simulated seconds from a (re)start before measuring
    window_s: float = 300.0  # measured window; longer for slow workloads (min_requests)
    min_requests: int = 400  # a goodput over fewer requests is too noisy to compare
    scrape_interval_s: float = 15.0
    max_iterations: int = 3
    tick_s: float = 0.5
    seed: int = 7
    workers: int = 2  # processes for the oracle's grid


def window_for(spec: ServerSpec, config: EvaluationConfig) -> float:
    """The measured window: at least `window_s`, long enough to see `min_requests` arrivals."""
    rate = max(spec.workload.rate_rps, 1e-6)
    return max(config.window_s, math.ceil(config.min_requests / rate / 60) * 60)


@dataclass(frozen=True)
class Goodput:
    settings: dict[str, Any]
    goodput_rps: float  # finished within the SLO (TTFT and time per output token) per second
    throughput_rps: float  # finished per second
    offered_rps: float
    startup_error: str | None = None


def advance(fleet: Fleet, seconds: float, step: float = 60.0) -> None:
    """Move a virtual clock in steps: a server left unread for longer than the fleet's catch-up
    limit would skip time instead of simulating it."""
    while seconds > 1e-9:
        fleet.advance(min(step, seconds))
        seconds -= step


def measure_goodput(
    spec: ServerSpec, settings: dict[str, Any], config: EvaluationConfig
) -> Goodput:
    """Run `spec` with `settings` on a fresh virtual clock and measure one window."""
    candidate = replace(spec, settings=dict(settings))
    fleet = Fleet([candidate], virtual=True, tick=config.tick_s, seed=config.seed, start=0.0)
    server = fleet.server(spec.name)
    if server.model is None:
        return Goodput(settings, 0.0, 0.0, spec.workload.rate_rps, server.startup_error)
    advance(fleet, config.warmup_s)
    good, finished = server.model.counters.finished_within_slo, server.model.counters.finished
    window = window_for(spec, config)
    advance(fleet, window)
    counters = server.model.counters
    return Goodput(
        settings,
        (counters.finished_within_slo - good) / window,
        (counters.finished - finished) / window,
        spec.workload.rate_rps,
    )


# Settings each engine's rules may change (perf_pipelines/recommendations/rules.py), and how the
# oracle varies them around the scenario's own value.
def _around(current: float, factors: Iterable[float], low: float, high: float) -> list[float]:
    return sorted({min(high, max(low, round(current * f))) for f in factors})


def settings_grid(spec: ServerSpec) -> list[dict[str, Any]]:
    """Every combination the oracle tries, as partial settings (engine-native names)."""
    current = validate_settings(spec.engine, spec.settings)
    fp8 = gpu_by_name(spec.gpu).supports_fp8_compute
    batch_factors = (0.25, 0.5, 1, 2, 4, 8)
    axes: dict[str, list[Any]]
    if spec.engine == "vllm":
        axes = {
            "gpu_memory_utilization": sorted({current["gpu_memory_utilization"], 0.8, 0.9, 0.95}),
            "max_num_seqs": _around(current["max_num_seqs"], batch_factors, 1, 1024),
            "max_num_batched_tokens": _around(
                current["max_num_batched_tokens"], (1, 2, 4), 64, 65536
            ),
            "kv_cache_dtype": ["auto", "fp8"] if fp8 else ["auto"],
            "quantization": ["fp16", "fp8" if fp8 else "w8a8-int8"],
        }
    elif spec.engine == "sglang":
        axes = {
            "mem_fraction_static": sorted({current["mem_fraction_static"], 0.8, 0.9, 0.95}),
            "max_running_requests": _around(
                current["max_running_requests"], batch_factors, 1, 1024
            ),
            "chunked_prefill_size": _around(current["chunked_prefill_size"], (1, 2, 4), 64, 65536),
            "kv_cache_dtype": ["auto", "fp8_e4m3"] if fp8 else ["auto"],
            "quantization": ["fp16", "fp8" if fp8 else "w8a8_int8"],
        }
    elif spec.engine == "tgi":
        batch = current["max_batch_size"] or 256
        axes = {
            "max_batch_size": _around(batch, batch_factors, 1, 1024),
            "max_concurrent_requests": _around(
                current["max_concurrent_requests"], (1, 2, 4), 1, 4096
            ),
            "max_batch_prefill_tokens": _around(
                current["max_batch_prefill_tokens"], (1, 2, 4), 64, 65536
            ),
            "quantize": ["fp16", "fp8" if fp8 else "awq"],
        }
    else:  # llamacpp
        axes = {
            "parallel": _around(current["parallel"], (0.5, 1, 2, 4, 8), 1, 256),
            "batch_size": _around(current["batch_size"], (1, 2), 32, 65536),
            "model_quant": ["q8_0", "q4_k_m"],
        }
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]


ORACLE_TIE = 0.005  # goodputs within 0.5 % count as equal (a few requests in a window)


@dataclass(frozen=True)
class OracleResult:
    best: Goodput
    evaluated: int


def _measure_one(args: tuple[ServerSpec, dict[str, Any], EvaluationConfig]) -> Goodput:
    return measure_goodput(*args)


def oracle(spec: ServerSpec, config: EvaluationConfig) -> OracleResult:
    """The best goodput over the grid, as vLLM's auto-tune would find it offline."""
    jobs = [(spec, spec.settings | point, config) for point in settings_grid(spec)]
    if config.workers > 1:
        with ProcessPoolExecutor(config.workers) as pool:
            results = list(pool.map(_measure_one, jobs, chunksize=4))
    else:
        results = [_measure_one(job) for job in jobs]
    # Among points within noise of the best, the one that changes least from the start: a grid
    # point that only moves settings which make no difference is not a better answer.
    top = max(g.goodput_rps for g in results)
    start = validate_settings(spec.engine, spec.settings)

    def changes(g: Goodput) -> int:
        settings = validate_settings(spec.engine, g.settings)
        return sum(settings[k] != start[k] for k in settings)

    near = [g for g in results if g.goodput_rps >= top * (1 - ORACLE_TIE)]
    return OracleResult(min(near, key=changes), len(results))
