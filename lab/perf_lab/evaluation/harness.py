"""Goodput of one simulated server under given settings, measured the same way every time; the
settings space the oracle and the peers search; the oracle, the engine defaults and Optuna's TPE.

Every settings point — the server's start, each step of the closed loop, every grid point, every
TPE trial, the engine defaults — is scored by `measure_goodput`: a fresh server on a virtual
clock with the same seed (hence the same arrivals), warmed up, then measured over the same
window. Differences are then due to the settings alone. A configuration the engine would refuse
(a value outside what it accepts, or one this hardware cannot run) scores 0, as would a server
that does not start.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from perf_lab.simulator.fleet import Fleet, ServerSpec
from perf_lab.simulator.generator import WindowPlan
from perf_lab.simulator.settings import SettingsError, hardware_error, validate_settings
from perf_pipelines.hardware import gpu_by_name


@dataclass(frozen=True)
class EvaluationConfig:
    warmup_s: float = 180.0  # simulated seconds from a (re)start before measuring
    window_s: float = 300.0  # measured window; longer for slow workloads (min_requests)
    min_requests: int = 400  # a goodput over fewer requests is too noisy to compare
    max_window_s: float = 900.0  # ... but never longer than this (idle servers)
    scrape_interval_s: float = 15.0
    max_iterations: int = 3
    tick_s: float = 0.5
    seed: int = 7
    workers: int = 2  # processes, one server each
    coarse_grid: bool = False  # --quick: fewer grid points

    def window_plan(self) -> WindowPlan:
        return WindowPlan(
            warmup_s=self.warmup_s,
            window_s=self.window_s,
            interval_s=self.scrape_interval_s,
            tick_s=self.tick_s,
            sim_seed=self.seed,
        )


# --quick: short windows and a coarse grid, for a smoke test of the whole pipeline.
QUICK = EvaluationConfig(
    warmup_s=90, window_s=120, min_requests=120, max_window_s=300, coarse_grid=True
)


def window_for(spec: ServerSpec, config: EvaluationConfig) -> float:
    """The measured window: at least `window_s`, long enough to see `min_requests` arrivals."""
    rate = max(spec.workload.rate_rps, 1e-6)
    wanted = max(config.window_s, math.ceil(config.min_requests / rate / 60) * 60)
    return min(wanted, max(config.window_s, config.max_window_s))


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


def refusal(spec: ServerSpec, settings: dict[str, Any]) -> str | None:
    """Why the engine would refuse `settings` on this server's hardware, or None."""
    try:
        merged = validate_settings(spec.engine, settings)
    except SettingsError as exc:
        return str(exc)
    return hardware_error(spec.engine, merged, gpu_by_name(spec.gpu), spec.gpu_count)


def measure_goodput(
    spec: ServerSpec, settings: dict[str, Any], config: EvaluationConfig
) -> Goodput:
    """Run `spec` with `settings` on a fresh virtual clock and measure one window."""
    offered = spec.workload.rate_rps
    refused = refusal(spec, settings)
    if refused is not None:
        return Goodput(dict(settings), 0.0, 0.0, offered, f"refused: {refused}")
    candidate = replace(spec, settings=dict(settings))
    fleet = Fleet([candidate], virtual=True, tick=config.tick_s, seed=config.seed, start=0.0)
    server = fleet.server(spec.name)
    if server.model is None:
        return Goodput(dict(settings), 0.0, 0.0, offered, server.startup_error)
    advance(fleet, config.warmup_s)
    good, finished = server.model.counters.finished_within_slo, server.model.counters.finished
    window = window_for(spec, config)
    advance(fleet, window)
    counters = server.model.counters
    return Goodput(
        dict(settings),
        (counters.finished_within_slo - good) / window,
        (counters.finished - finished) / window,
        offered,
    )


# -- the settings space -------------------------------------------------------------------------
# The settings the agent's rules may change, each varied around the server's own value, with
# only values the real engine accepts on this hardware (simulator/settings.py cites the sources).
# The prefill budget is left out: the simulator's TTFT barely depends on it (docs/simulator.md),
# and each axis multiplies the grid's cost; an agent step that changes it is still measured.


def _around(current: float, factors: Iterable[float], low: float, high: float) -> list[int]:
    return sorted({int(min(high, max(low, round(current * f)))) for f in factors})


def _fp8_kv_ok(spec: ServerSpec) -> bool:
    gpu = gpu_by_name(spec.gpu)
    return bool(gpu.supports_fp8_compute)


def faster_weights(spec: ServerSpec) -> str | None:
    """The quantization to try for speed: FP8 where the GPU computes in FP8, else the INT8 W8A8
    checkpoint (vLLM: compressed-tensors; SGLang: w8a8_int8; TGI: EETQ, INT8 weight-only)."""
    if gpu_by_name(spec.gpu).supports_fp8_compute:
        return "fp8"
    return {"vllm": "compressed-tensors", "sglang": "w8a8_int8", "tgi": "eetq"}.get(spec.engine)


def _quant_axis(current: Any, spec: ServerSpec) -> list[Any]:
    if current is not None:
        return [current]  # already a quantized checkpoint: keep it
    alternative = faster_weights(spec)
    return [None] if alternative is None else [None, alternative]


def _batch_factors(config: EvaluationConfig) -> tuple[float, ...]:
    return (0.5, 1, 4) if config.coarse_grid else (0.25, 0.5, 1, 2, 4)


def _vllm_axes(
    s: dict[str, Any], spec: ServerSpec, config: EvaluationConfig
) -> dict[str, list[Any]]:
    return {
        "gpu_memory_utilization": sorted({s["gpu_memory_utilization"], 0.92}),
        "max_num_seqs": _around(s["max_num_seqs"], _batch_factors(config), 1, 4096),
        "kv_cache_dtype": ["auto", "fp8"] if _fp8_kv_ok(spec) else ["auto"],
        "quantization": _quant_axis(s["quantization"], spec),
    }


def _sglang_axes(
    s: dict[str, Any], spec: ServerSpec, config: EvaluationConfig
) -> dict[str, list[Any]]:
    return {
        "mem_fraction_static": sorted({s["mem_fraction_static"], 0.9}),
        "max_running_requests": _around(s["max_running_requests"], _batch_factors(config), 1, 4096),
        "kv_cache_dtype": ["auto", "fp8_e4m3"] if _fp8_kv_ok(spec) else ["auto"],
        "quantization": _quant_axis(s["quantization"], spec),
    }


def _tgi_axes(
    s: dict[str, Any], spec: ServerSpec, config: EvaluationConfig
) -> dict[str, list[Any]]:
    batch = s["max_batch_size"]
    batches: list[Any] = (
        [None, 16, 64] if batch is None else _around(batch, _batch_factors(config), 1, 4096)
    )
    budget = s["max_batch_total_tokens"]
    return {
        "max_batch_size": batches,
        "max_batch_total_tokens": [None] if budget is None else [budget, None],
        "kv_cache_dtype": [None, "fp8_e4m3fn"] if _fp8_kv_ok(spec) else [None],
        "quantize": _quant_axis(s["quantize"], spec),
    }


def _llamacpp_axes(
    s: dict[str, Any], spec: ServerSpec, config: EvaluationConfig
) -> dict[str, list[Any]]:
    factors = (0.5, 1, 4) if config.coarse_grid else (0.5, 1, 2, 4, 8)
    return {
        "parallel": _around(s["parallel"], factors, 1, 256),
        "cache_type_k": ["f16", "q8_0"],  # cache_type_v follows (closed_loop._PAIRED_SETTINGS)
        "model_quant": sorted({s["model_quant"], "q4_k_m"}),
    }


_AXES: dict[str, Callable[[dict[str, Any], ServerSpec, EvaluationConfig], dict[str, list[Any]]]] = {
    "vllm": _vllm_axes,
    "sglang": _sglang_axes,
    "tgi": _tgi_axes,
    "llamacpp": _llamacpp_axes,
}


def settings_axes(spec: ServerSpec, config: EvaluationConfig | None = None) -> dict[str, list[Any]]:
    current = validate_settings(spec.engine, spec.settings)
    return _AXES[spec.engine](current, spec, config or EvaluationConfig())


def _complete(engine: str, point: dict[str, Any]) -> dict[str, Any]:
    if engine == "llamacpp" and "cache_type_k" in point:
        return point | {"cache_type_v": point["cache_type_k"]}
    return point


def settings_grid(spec: ServerSpec, config: EvaluationConfig | None = None) -> list[dict[str, Any]]:
    """Every combination the oracle tries, as partial settings (engine-native names)."""
    axes = settings_axes(spec, config)
    names = list(axes)
    return [
        _complete(spec.engine, dict(zip(names, values, strict=True)))
        for values in itertools.product(*axes.values())
    ]


def _key(settings: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in settings.items()))


class Measurements:
    """Goodput per settings point for one server, measured once (every peer shares it)."""

    def __init__(self, spec: ServerSpec, config: EvaluationConfig) -> None:
        self.spec, self.config = spec, config
        self.cache: dict[tuple[tuple[str, str], ...], Goodput] = {}

    def __call__(self, settings: dict[str, Any]) -> Goodput:
        try:
            canonical = validate_settings(self.spec.engine, settings)
        except SettingsError:
            canonical = dict(settings)
        key = _key(canonical)
        if key not in self.cache:
            self.cache[key] = measure_goodput(self.spec, settings, self.config)
        return self.cache[key]


ORACLE_TIE = 0.005  # goodputs within 0.5 % count as equal (a few requests in a window)


@dataclass(frozen=True)
class OracleResult:
    best: Goodput  # the point within noise of the top that changes least from the start
    evaluated: int
    top_rps: float  # the highest goodput on the grid: what shares of the oracle divide by


def oracle(
    spec: ServerSpec, config: EvaluationConfig, measure: Measurements | None = None
) -> OracleResult:
    """The best goodput over the grid, as an exhaustive offline search would find it."""
    measure = measure or Measurements(spec, config)
    results = [measure(spec.settings | point) for point in settings_grid(spec, config)]
    # Among points within noise of the best, the one that changes least from the start: a grid
    # point that only moves settings which make no difference is not a better answer.
    top = max(g.goodput_rps for g in results)
    start = validate_settings(spec.engine, spec.settings)

    def changes(g: Goodput) -> int:
        settings = validate_settings(spec.engine, g.settings)
        return sum(settings[k] != start[k] for k in settings)

    near = [g for g in results if g.goodput_rps >= top * (1 - ORACLE_TIE)]
    return OracleResult(min(near, key=changes), len(results), top)


# -- peers --------------------------------------------------------------------------------------

# Settings that describe the deployment, not its tuning: kept when "engine defaults" are scored.
_DEPLOYMENT = {
    "tensor_parallel_size",
    "tp_size",
    "num_shard",
    "quantization",
    "quantize",
    "model_quant",
    "ctx_size",
    "max_model_len",
    "context_length",
}


def _version_at_least(version: str | None, minimum: tuple[int, ...]) -> bool:
    if not version:
        return True
    digits = version.lstrip("vb").split(".")
    try:
        return tuple(int(d) for d in digits) >= minimum
    except ValueError:
        return True


def engine_defaults(spec: ServerSpec) -> dict[str, Any]:
    """What the server would run with no tuning flags: the engine's defaults (version- and
    GPU-dependent where the engine derives them) with the deployment kept."""
    settings = {k: v for k, v in spec.settings.items() if k in _DEPLOYMENT}
    if spec.engine == "vllm" and _version_at_least(spec.version, (0, 8)):
        # V1 (vllm/engine/arg_utils.py _set_default_args_v1): 1024 sequences and 8192 batched
        # tokens on a GPU of >= 70 GiB other than an A100, else 256 and 2048.
        big = gpu_by_name(spec.gpu).memory_gib >= 70 and not spec.gpu.startswith("A100")
        settings |= {
            "max_num_seqs": 1024 if big else 256,
            "max_num_batched_tokens": 8192 if big else 2048,
        }
    if spec.engine == "llamacpp" and not _version_at_least(spec.version, (6000,)):
        settings["parallel"] = 1  # --parallel defaulted to 1 before the unified KV cache (auto 4)
    return settings


def tpe_best(
    spec: ServerSpec, config: EvaluationConfig, measure: Measurements, trials: int, seed: int
) -> Goodput:
    """Optuna's TPE over the same space as the grid, `trials` configurations (restarts)."""
    import optuna  # the lab's dependency, imported where used: a heavy import

    optuna.logging.set_verbosity(logging.WARNING)
    axes = settings_axes(spec, config)
    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    best: Goodput | None = None
    for _ in range(trials):
        trial = study.ask()
        point = {name: trial.suggest_categorical(name, values) for name, values in axes.items()}
        result = measure(spec.settings | _complete(spec.engine, point))
        study.tell(trial, result.goodput_rps)
        if best is None or result.goodput_rps > best.goodput_rps:
            best = result
    assert best is not None
    return best
