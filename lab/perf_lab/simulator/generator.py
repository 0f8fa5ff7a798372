"""Fleets generated from a seed, each server's ground truth checked in the simulator.

`plan_fleet(seed, n)` lays out n servers across the four engines, several versions of each, nine
GPUs (one of them a name no hardware table knows) and four kinds of traffic, with a mix of
healthy servers and servers that have one problem (an archetype). `realize(slot, window)` turns
one slot into a server: it draws the deployment, the traffic and the settings that make the
archetype's problem from the simulator's own capacity arithmetic, sets the SLO from what a
better-configured twin of the server achieves, then runs the server for exactly the window the
agent will see first and reads the conditions off the simulator's state. The server is kept only
if every condition is clearly present or clearly absent (no value near a threshold) and the
archetype's problem is really there; otherwise the slot draws again. Ground truth is therefore
what the simulator shows, never what the generator hoped for.

A condition that the engine's metrics cannot show is not expected of the agent: llama.cpp
exports no KV gauge, no preemption counter and no latency histograms; TGI no TTFT histogram.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from perf_lab.simulator.fleet import Fleet, ServerSpec
from perf_lab.simulator.model import ServerModel, Workload
from perf_lab.simulator.settings import validate_settings
from perf_pipelines.hardware import gpu_by_name

ENGINES = ("vllm", "sglang", "tgi", "llamacpp")
# Versions each engine's servers claim. The vLLM exposition renders 0.8.5's V0-era metric names
# for "0.8.5" and current names otherwise; the other engines' expositions do not vary by version.
VERSIONS: dict[str, tuple[str, ...]] = {
    "vllm": ("0.8.5", "0.11.0", "0.33.0"),
    "sglang": ("0.4.6", "0.5.2"),
    "tgi": ("2.4.1", "3.3.6"),
    "llamacpp": ("b4600", "b6500"),
}
# A GPU nobody's table knows: simulated with a real profile, named in the targets file as a user
# would name a card that came out after the agent's hardware table was written.
UNKNOWN_GPU = "NVIDIA RTX PRO 6000 Blackwell"
UNKNOWN_GPU_PROFILE = "L40S"
# Names in the targets file (keys every version of the hardware table resolves) per engine.
ENGINE_GPUS: dict[str, tuple[str, ...]] = {
    "vllm": (
        "H100-SXM-80GB",
        "A100-80GB",
        "L4",
        "T4",
        "H200",
        "A10",
        "MI300X",
        "L40S",
        UNKNOWN_GPU,
    ),
    "sglang": ("H100-SXM-80GB", "A100-80GB", "L40S", "H200", "MI300X", "L4", UNKNOWN_GPU, "A10"),
    "tgi": ("A10", "L4", "T4", "A100-80GB", "H100-SXM-80GB", "L40S", "MI300X", UNKNOWN_GPU),
    "llamacpp": ("L4", "T4", "A10", UNKNOWN_GPU, "L40S", "A100-80GB"),
}
# The problem each slot gets, cycled per engine. llama.cpp exports no latency histogram, KV gauge
# or preemption counter, so its problems are those its slots and queue show.
ARCHETYPES: dict[str, tuple[str, ...]] = {
    "vllm": ("healthy", "queue", "kv", "burst", "itl", "idle", "ttft", "diurnal", "kv", "queue"),
    "sglang": ("healthy", "kv", "queue", "burst", "itl", "idle", "ttft", "diurnal", "queue", "kv"),
    "tgi": ("healthy", "queue", "budget", "burst", "itl", "idle", "diurnal", "queue", "budget"),
    "llamacpp": ("healthy", "queue", "burst", "idle", "diurnal", "queue", "healthy", "idle"),
}
WORKLOAD_KIND = {
    "healthy": "chat",
    "burst": "bursty",
    "diurnal": "diurnal",
    "idle": "chat",
    "queue": "chat",
    "kv": "long-context RAG",
    "budget": "long-context RAG",
    "itl": "chat",
    "ttft": "long-context RAG",
}
KINDS = (
    "kv_cache_pressure",
    "preemption",
    "queue_saturation",
    "ttft_slo_breach",
    "itl_slo_breach",
    "underutilization",
)
OBSERVABLE: dict[str, frozenset[str]] = {
    "vllm": frozenset(KINDS),
    "sglang": frozenset(KINDS),
    "tgi": frozenset(KINDS) - {"ttft_slo_breach"},
    "llamacpp": frozenset({"queue_saturation", "underutilization"}),
}
MAX_ATTEMPTS = 12
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"
QWEN_7B = "Qwen/Qwen2.5-7B-Instruct"
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
_TP_SETTING = {"vllm": "tensor_parallel_size", "sglang": "tp_size", "tgi": "num_shard"}
_BATCH_SETTING = {
    "vllm": "max_num_seqs",
    "sglang": "max_running_requests",
    "tgi": "max_batch_size",
    "llamacpp": "parallel",
}
_MEMORY_SETTING = {"vllm": "gpu_memory_utilization", "sglang": "mem_fraction_static"}
_QUANT_SETTING = {"vllm": "quantization", "sglang": "quantization", "tgi": "quantize"}


@dataclass
class OneBurstWorkload(Workload):
    """Steady traffic with one short burst per hour, at `burst_at_s` past the hour. The
    evaluation's clocks start on the hour, so the burst falls in the agent's first window."""

    burst_at_s: float = 300.0
    burst_length_s: float = 15.0
    burst_multiplier: float = 4.0

    def rate_at(self, t: float) -> float:
        phase = t % 3600.0
        rate = self.rate_rps
        if self.burst_at_s <= phase < self.burst_at_s + self.burst_length_s:
            rate *= self.burst_multiplier
        return rate


@dataclass
class DiurnalWorkload(Workload):
    """A day/night swing whose phase puts the evaluation (which starts at midnight) at the daily
    peak (`peak_hour` 0) or in the trough (12): rate × (1 ± amplitude), drifting slowly."""

    amplitude: float = 0.5
    peak_hour: float = 0.0

    def rate_at(self, t: float) -> float:
        hours = (t % 86400.0) / 3600.0 - self.peak_hour
        return max(0.0, self.rate_rps * (1 + self.amplitude * math.cos(2 * math.pi * hours / 24)))


@dataclass(frozen=True)
class WindowPlan:
    """The agent's first window, which ground truth is read over (closed_loop runs the same)."""

    warmup_s: float = 180.0
    window_s: float = 300.0
    interval_s: float = 15.0
    tick_s: float = 0.5
    sim_seed: int = 7
    start: float = 1767225600.0  # 2026-01-01T00:00:00Z: on the hour and at midnight


@dataclass(frozen=True)
class Slot:
    index: int
    seed: int
    engine: str
    version: str
    gpu: str  # as named in the targets file
    archetype: str


@dataclass
class Observation:
    """The simulator's own state over the window (no metric parsing involved)."""

    kv_usage: np.ndarray
    running: np.ndarray
    waiting: np.ndarray
    at_budget: np.ndarray  # TGI: the token budget is what holds the queue back
    preemption_intervals: int
    intervals: int
    ttft_p95_s: float | None
    ttft_count: float
    itl_p95_s: float | None
    itl_count: float
    startup_error: str | None = None


@dataclass
class GeneratedServer:
    slot: Slot
    spec: ServerSpec  # spec.gpu is the physical profile simulated; expected_bottlenecks = truth
    advertised_gpu: str
    workload_kind: str
    attempts: int
    facts: dict[str, Any] = field(default_factory=dict)  # the numbers the truth was read from

    @property
    def archetype(self) -> str:
        return self.slot.archetype

    @property
    def expected(self) -> set[str]:
        return set(self.spec.expected_bottlenecks)


def physical_gpu(name: str) -> str:
    """The profile the simulator runs for a targets-file GPU name."""
    if name == UNKNOWN_GPU:
        return UNKNOWN_GPU_PROFILE
    try:
        gpu_by_name(name)
        return name
    except ValueError:
        # MI300X before the hardware table has it: the closest profile there is (H200).
        return "H200"


def plan_fleet(seed: int, n: int, prefix: str = "s") -> list[Slot]:
    """Which engine, version, GPU and archetype each of n servers gets; cheap and deterministic."""
    rng = random.Random(seed)
    offsets = {engine: rng.randrange(100) for engine in ENGINES}
    slots = []
    for index in range(n):
        engine = ENGINES[index % len(ENGINES)]
        turn = index // len(ENGINES) + offsets[engine]
        slots.append(
            Slot(
                index=index,
                seed=rng.randrange(2**31),
                engine=engine,
                version=VERSIONS[engine][turn % len(VERSIONS[engine])],
                gpu=ENGINE_GPUS[engine][turn % len(ENGINE_GPUS[engine])],
                archetype=ARCHETYPES[engine][turn % len(ARCHETYPES[engine])],
            )
        )
    return slots


def generate_fleet(seed: int, n: int, window: WindowPlan | None = None) -> list[GeneratedServer]:
    return [realize(slot, window or WindowPlan()) for slot in plan_fleet(seed, n)]


# -- deployment ------------------------------------------------------------------------------------


def _deployment(rng: random.Random, engine: str, gpu: str) -> tuple[str, int, dict[str, Any]]:
    """Model, GPU count and the settings that describe the deployment (not the tuning)."""
    memory = gpu_by_name(physical_gpu(gpu)).memory_gib
    small = rng.choice((LLAMA_8B, QWEN_7B))
    settings: dict[str, Any] = {}
    if memory < 20:  # T4: 16 GB hold no FP16 8B model
        if engine == "llamacpp":
            settings["model_quant"] = rng.choice(("q4_k_m", "q8_0"))
        else:
            settings[_QUANT_SETTING[engine]] = "awq" if engine != "sglang" else "gptq"
        return LLAMA_8B, 1, settings
    if engine == "llamacpp":
        settings["model_quant"] = rng.choice(("q4_k_m", "q8_0", "fp16"))
        return small, 1, settings
    big = [(m, c) for m, c in _big_models(memory)]
    if big and rng.random() < 0.35:
        model, count = rng.choice(big)
        if count > 1:
            settings[_TP_SETTING[engine]] = count
        return model, count, settings
    return small, 1, settings


def _big_models(memory: float) -> list[tuple[str, int]]:
    options = []
    for model, weights_gb in ((LLAMA_70B, 141.2), (MIXTRAL, 93.4)):
        count = next((c for c in (1, 2, 4) if c * memory * 0.75 > weights_gb), None)
        if count is not None and memory >= 40:
            options.append((model, count))
    return options


def _chat(rng: random.Random) -> dict[str, Any]:
    return {
        "prompt_tokens_mean": float(rng.choice((300, 500, 800, 1200))),
        "output_tokens_mean": float(rng.choice((120, 200, 300, 400))),
        "shared_prefix_ratio": rng.choice((0.1, 0.2, 0.4)),
    }


def _rag(rng: random.Random) -> dict[str, Any]:
    return {
        "prompt_tokens_mean": float(rng.choice((3000, 4500, 6000, 9000))),
        "output_tokens_mean": float(rng.choice((100, 200, 300))),
        "shared_prefix_ratio": rng.choice((0.0, 0.1, 0.3)),
        "max_new_tokens": 1024,
    }


# -- the simulator's arithmetic ------------------------------------------------------------------


def _model(spec: ServerSpec, window: WindowPlan) -> ServerModel | None:
    fleet = Fleet([spec], virtual=True, tick=window.tick_s, seed=window.sim_seed, start=0.0)
    return fleet.server(spec.name).model


def capacity_rps(spec: ServerSpec, window: WindowPlan, batch: float | None = None) -> float:
    """Requests/s the server can finish at its batch cap (or `batch`), from the roofline: each
    request costs its prefill compute plus its share of the decode steps it rides in."""
    model = _model(spec, window)
    if model is None:
        return 0.0
    w = spec.workload
    uncached = w.prompt_tokens_mean * (
        1 - w.shared_prefix_ratio if model.knobs.prefix_caching else 1
    )
    held = uncached + w.output_tokens_mean
    fits = model.kv_capacity_tokens / max(held, 1.0)
    running = max(1.0, min(batch or model.knobs.max_running, fits))
    context = w.prompt_tokens_mean + w.output_tokens_mean / 2
    step = model.step_time(running, 0, running * context)
    prefill = model.step_time(0, uncached * 1000, 0) / 1000
    return 1.0 / (w.output_tokens_mean * step / running + prefill)


def decode_step_s(spec: ServerSpec, window: WindowPlan, batch: float) -> float:
    model = _model(spec, window)
    if model is None:
        return math.inf
    context = spec.workload.prompt_tokens_mean + spec.workload.output_tokens_mean / 2
    return model.step_time(batch, 0, batch * context)


def _quantile(bounds: tuple[float, ...], counts: np.ndarray, q: float) -> float | None:
    """histogram_quantile over per-bucket counts (the last bucket is +Inf)."""
    total = float(np.sum(counts))
    if total <= 0:
        return None
    cumulative = np.cumsum(counts)
    index = int(np.searchsorted(cumulative, q * total, side="left"))
    if index >= len(bounds):
        return float(bounds[-1])
    lower = 0.0 if index == 0 else float(bounds[index - 1])
    below = 0.0 if index == 0 else float(cumulative[index - 1])
    inside = float(counts[index])
    share = 0.0 if inside <= 0 else (q * total - below) / inside
    return lower + (float(bounds[index]) - lower) * share


def observe(spec: ServerSpec, window: WindowPlan) -> Observation:
    """Run the server as the closed loop does and read its state at every scrape of the first
    window: KV use, running, waiting, preemptions, TTFT and inter-token latency."""
    fleet = Fleet(
        [spec], virtual=True, tick=window.tick_s, seed=window.sim_seed, start=window.start
    )
    server = fleet.server(spec.name)
    model = server.model
    if model is None:
        empty = np.zeros(0)
        return Observation(empty, empty, empty, empty, 0, 0, None, 0, None, 0, server.startup_error)
    _advance(fleet, window.warmup_s)
    samples = int(window.window_s // window.interval_s) + 1
    itl_histogram = model.decode_step if spec.engine == "tgi" else model.itl
    ttft0, itl0 = model.ttft.counts.copy(), itl_histogram.counts.copy()
    rows: list[tuple[float, float, float, float]] = []
    preempted = []
    for index in range(samples):
        if index:
            _advance(fleet, window.interval_s)
        budget_full = model.reserved_tokens() >= 0.9 * model.kv_capacity_tokens
        rows.append((model.kv_usage(), len(model.running), len(model.waiting), float(budget_full)))
        preempted.append(model.counters.preemptions)
    data = np.array(rows)
    ttft, itl = model.ttft.counts - ttft0, itl_histogram.counts - itl0
    return Observation(
        kv_usage=data[:, 0],
        running=data[:, 1],
        waiting=data[:, 2],
        at_budget=data[:, 3] > 0,
        preemption_intervals=int(np.count_nonzero(np.diff(preempted) > 0)),
        intervals=samples - 1,
        ttft_p95_s=_quantile(tuple(model.ttft.bounds_list), ttft, 0.95),
        ttft_count=float(np.sum(ttft)),
        itl_p95_s=_quantile(tuple(itl_histogram.bounds_list), itl, 0.95),
        itl_count=float(np.sum(itl)),
    )


def _advance(fleet: Fleet, seconds: float, step: float = 60.0) -> None:
    while seconds > 1e-9:
        fleet.advance(min(step, seconds))
        seconds -= step


# -- ground truth -------------------------------------------------------------------------------

Verdict = bool | None  # None: too close to call; the slot draws again


def _share_verdict(share: float, yes: float = 0.65, no: float = 0.35) -> Verdict:
    return True if share >= yes else False if share <= no else None


def _kv_verdict(obs: Observation) -> Verdict:
    high, low = np.mean(obs.kv_usage >= 0.93), np.mean(obs.kv_usage >= 0.87)
    return True if high >= 0.6 else False if low <= 0.4 else None


def _preemption_verdict(obs: Observation) -> Verdict:
    share = obs.preemption_intervals / max(obs.intervals, 1)
    if obs.preemption_intervals == 0:
        return False
    return True if share >= 0.5 else False if share <= 0.2 else None


def batch_cap(spec: ServerSpec) -> float | None:
    settings = validate_settings(spec.engine, spec.settings)
    value = settings.get(_BATCH_SETTING[spec.engine])
    return None if value is None else float(value)


def _queue_verdict(obs: Observation, spec: ServerSpec) -> Verdict:
    cap = batch_cap(spec)
    at_cap = obs.running >= 0.95 * cap if cap is not None else np.zeros(len(obs.running), bool)
    if spec.engine == "tgi":
        at_cap = at_cap | obs.at_budget  # TGI admits by its token budget as well
    return _share_verdict(float(np.mean(at_cap & (obs.waiting > 0))), 0.65, 0.3)


def _slo_verdict(p95: float | None, count: float, slo_ms: float | None) -> Verdict:
    if slo_ms is None or p95 is None:
        return False
    ratio = p95 * 1000 / slo_ms
    if count < 20:
        return False if ratio <= 0.85 else None
    return True if ratio >= 1.2 else False if ratio <= 0.85 else None


def _idle_verdict(obs: Observation, spec: ServerSpec) -> Verdict:
    cap = batch_cap(spec)
    if cap is None:
        return False
    idle = float(np.mean((obs.running <= 0.1 * cap) & (obs.waiting == 0)))
    mean, kv = float(np.mean(obs.running)), float(np.max(obs.kv_usage))
    if idle >= 0.9 and mean <= 1.5 and kv < 0.25:
        return True
    if idle < 0.6 or mean >= 3 or kv >= 0.35:
        return False
    return None


def ground_truth(obs: Observation, spec: ServerSpec) -> set[str] | None:
    """The conditions the simulator shows over the window, or None if any is borderline."""
    verdicts: dict[str, Verdict] = {
        "kv_cache_pressure": _kv_verdict(obs),
        "preemption": _preemption_verdict(obs),
        "queue_saturation": _queue_verdict(obs, spec),
        "ttft_slo_breach": _slo_verdict(
            obs.ttft_p95_s, obs.ttft_count, spec.slo.get("ttft_p95_ms")
        ),
        "itl_slo_breach": _slo_verdict(obs.itl_p95_s, obs.itl_count, spec.slo.get("itl_p95_ms")),
    }
    observable = OBSERVABLE[spec.engine]
    if any(v is None for kind, v in verdicts.items() if kind in observable):
        return None
    truth = {kind for kind, v in verdicts.items() if v and kind in observable}
    if "kv_cache_pressure" in truth:
        # Preemption with the KV cache full is KV pressure (issue 14: preemption without high
        # KV use is its own kind); counted once, as the agent is asked to report it.
        truth.discard("preemption")
    if not truth and "underutilization" in observable:
        idle = _idle_verdict(obs, spec)
        if idle is None:
            return None
        if idle:
            truth.add("underutilization")
    return truth


# -- archetypes: start settings, a better-configured twin, traffic -------------------------------


@dataclass
class Draft:
    settings: dict[str, Any]  # what the server starts with (the problem)
    reference: dict[str, Any]  # a twin without the problem: the SLO is set from what it achieves
    workload: Workload
    breach: str | None = None  # "itl" / "ttft": the SLO sits between the twin and the server


def _slug(gpu: str) -> str:
    return "x" if gpu == UNKNOWN_GPU else gpu.split("-")[0].lower()


def _with_rate(spec: ServerSpec, rate: float) -> ServerSpec:
    return replace(spec, workload=replace(spec.workload, rate_rps=round(max(rate, 0.02), 3)))


def _healthy(ctx: _Context) -> Draft | None:
    cap = (
        ctx.rng.choice((64, 128, 256)) if ctx.slot.engine != "llamacpp" else ctx.rng.choice((4, 8))
    )
    settings = ctx.base | {_BATCH_SETTING[ctx.slot.engine]: cap}
    rate = ctx.rng.uniform(0.3, 0.55) * ctx.capacity(settings, _chat(ctx.rng))
    return Draft(settings, settings, ctx.workload(rate))


def _burst(ctx: _Context) -> Draft | None:
    draft = _healthy(ctx)
    if draft is None:
        return None
    w = draft.workload
    burst = OneBurstWorkload(
        **vars(w) | {"rate_rps": w.rate_rps * ctx.rng.uniform(0.6, 0.9)},
        burst_at_s=ctx.rng.uniform(240, 380),
        burst_length_s=ctx.rng.uniform(8, 15),
        burst_multiplier=ctx.rng.uniform(2.5, 4.0),
    )
    return Draft(draft.settings, draft.settings, burst)


def _diurnal(ctx: _Context) -> Draft | None:
    peak = ctx.rng.random() < 0.5
    draft = _queue(ctx) if peak else _healthy(ctx)
    if draft is None:
        return None
    amplitude = ctx.rng.uniform(0.3, 0.5)
    w = draft.workload
    rate = w.rate_rps / (1 + amplitude) if peak else w.rate_rps / (1 - amplitude)
    diurnal = DiurnalWorkload(
        **vars(w) | {"rate_rps": rate}, amplitude=amplitude, peak_hour=0.0 if peak else 12.0
    )
    return Draft(draft.settings, draft.reference, diurnal)


def _idle(ctx: _Context) -> Draft | None:
    cap = ctx.rng.choice((128, 256)) if ctx.slot.engine != "llamacpp" else ctx.rng.choice((16, 32))
    settings = ctx.base | {_BATCH_SETTING[ctx.slot.engine]: cap}
    ctx.traffic = _chat(ctx.rng) | {"output_tokens_mean": 150.0}
    return Draft(settings, settings, ctx.workload(ctx.rng.uniform(0.03, 0.12)))


def _queue(ctx: _Context) -> Draft | None:
    engine = ctx.slot.engine
    cap = ctx.rng.choice((1, 2)) if engine == "llamacpp" else ctx.rng.choice((4, 8, 16))
    settings = ctx.base | {_BATCH_SETTING[engine]: cap}
    roomy = ctx.base | {_BATCH_SETTING[engine]: cap * 8}
    traffic = _chat(ctx.rng)
    ceiling = ctx.capacity(roomy, traffic)
    rate = ctx.rng.uniform(1.4, 2.2) * ctx.capacity(settings, traffic)
    if rate > 0.7 * ceiling:  # the twin must carry the load with room to spare
        rate = 0.7 * ceiling
    if rate < 1.2 * ctx.capacity(settings, traffic):
        return None
    return Draft(settings, roomy, ctx.workload(rate))


def _kv_need(
    ctx: _Context, roomy: dict[str, Any], traffic: dict[str, Any]
) -> tuple[ServerSpec, float] | None:
    """The twin with room to spare at this load, and the KV tokens it holds at its peak: what
    the simulator shows the load needs."""
    rate = ctx.rng.uniform(0.5, 0.8) * ctx.capacity(roomy, traffic)
    spec = _with_rate(
        replace(ctx.template, settings=roomy, workload=ctx.workload_from(traffic)), rate
    )
    model = _model(spec, ctx.window)
    if model is None:
        return None
    twin = observe(spec, ctx.window)
    need = float(np.max(twin.kv_usage)) * model.kv_capacity_tokens if len(twin.kv_usage) else 0.0
    per_request = spec.workload.prompt_tokens_mean + spec.workload.output_tokens_mean
    if need < 8 * per_request:
        return None  # a handful of requests in flight: a KV limit would starve, not pressure
    return spec, need


def _kv(ctx: _Context) -> Draft | None:
    """vLLM/SGLang: a memory fraction too low for the long prompts' KV: preemption."""
    engine = ctx.slot.engine
    memory = _MEMORY_SETTING[engine]
    roomy = ctx.base | {memory: 0.9, _BATCH_SETTING[engine]: 256}
    found = _kv_need(ctx, roomy, _rag(ctx.rng))
    if found is None:
        return None
    spec, need = found
    model = _model(spec, ctx.window)
    assert model is not None
    want = ctx.rng.uniform(0.45, 0.75) * need
    total = model.gpu.memory_gib * 1024**3 * model.gpus
    fraction = (
        model.weight_bytes + 1.5 * 1024**3 * model.gpus + want * model.kv_bytes_per_token
    ) / total
    if not 0.1 < fraction < 0.85:
        return None
    return Draft(roomy | {memory: round(fraction, 3)}, roomy, spec.workload)


def _budget(ctx: _Context) -> Draft | None:
    """TGI: a token budget (max_batch_total_tokens) that holds the long prompts in the queue."""
    roomy = dict(ctx.base)
    found = _kv_need(ctx, roomy, _rag(ctx.rng))
    if found is None:
        return None
    spec, need = found
    budget = int(ctx.rng.uniform(0.45, 0.75) * need)
    return Draft(roomy | {"max_batch_total_tokens": budget}, roomy, spec.workload)


def _faster_weights(ctx: _Context) -> str | None:
    """The quantization a user would try for speed on this GPU, or None if already quantized."""
    engine = ctx.slot.engine
    if _QUANT_SETTING[engine] in ctx.base:
        return None
    if gpu_by_name(physical_gpu(ctx.slot.gpu)).supports_fp8_compute:
        return "fp8"
    return {"vllm": "compressed-tensors", "sglang": "w8a8_int8", "tgi": "eetq"}[engine]


def _itl(ctx: _Context) -> Draft | None:
    """A large batch at a high load: the decode steps read so much KV and weight that the
    inter-token latency breaks its SLO; lighter weights (or a smaller batch) would not."""
    engine = ctx.slot.engine
    faster = _faster_weights(ctx)
    if faster is None:
        return None
    cap = ctx.rng.choice((256, 512))
    settings = ctx.base | {_BATCH_SETTING[engine]: cap}
    if engine in _MEMORY_SETTING:
        settings[_MEMORY_SETTING[engine]] = 0.92
    traffic = _chat(ctx.rng) | {"output_tokens_mean": float(ctx.rng.choice((300, 500)))}
    rate = ctx.rng.uniform(0.6, 0.85) * ctx.capacity(settings, traffic)
    reference = settings | {_QUANT_SETTING[engine]: faster}
    return Draft(settings, reference, ctx.workload(rate), breach="itl")


def _ttft(ctx: _Context) -> Draft | None:
    """Long prompts whose prefill is slow on this GPU; quantized weights would prefill faster."""
    engine = ctx.slot.engine
    faster = _faster_weights(ctx)
    if faster is None:
        return None
    settings = dict(ctx.base)
    reference = settings | {_QUANT_SETTING[engine]: faster}
    traffic = _rag(ctx.rng) | {"prompt_tokens_mean": float(ctx.rng.choice((6000, 9000, 12000)))}
    rate = ctx.rng.uniform(0.35, 0.6) * ctx.capacity(settings, traffic)
    return Draft(settings, reference, ctx.workload(rate), breach="ttft")


BUILDERS: dict[str, Callable[[_Context], Draft | None]] = {
    "healthy": _healthy,
    "burst": _burst,
    "diurnal": _diurnal,
    "idle": _idle,
    "queue": _queue,
    "kv": _kv,
    "budget": _budget,
    "itl": _itl,
    "ttft": _ttft,
}
# The condition that must be in the ground truth for the archetype to count as realized; None:
# nothing may be (healthy servers, bursts), "any": whatever the simulator shows.
REQUIRED: dict[str, str | None] = {
    "healthy": None,
    "burst": None,
    "diurnal": "any",
    "idle": "underutilization",
    "queue": "queue_saturation",
    "kv": "kv_cache_pressure|preemption",
    "budget": "queue_saturation|kv_cache_pressure",
    "itl": "itl_slo_breach",
    "ttft": "ttft_slo_breach",
}


class _Context:
    """What the archetype builders share for one attempt at one slot."""

    def __init__(self, slot: Slot, attempt: int, window: WindowPlan) -> None:
        self.slot, self.window = slot, window
        self.rng = random.Random(slot.seed * 1000 + attempt)
        self.model, self.count, self.base = _deployment(self.rng, slot.engine, slot.gpu)
        self.traffic: dict[str, Any] = _chat(self.rng)
        self.template = ServerSpec(
            name=f"{slot.engine}-{_slug(slot.gpu)}-{slot.index:03d}",
            engine=slot.engine,
            model=self.model,
            gpu=physical_gpu(slot.gpu),
            gpu_count=self.count,
            version=slot.version,
        )

    def workload_from(self, traffic: dict[str, Any]) -> Workload:
        self.traffic = traffic
        return Workload(rate_rps=1.0, **traffic)

    def workload(self, rate: float) -> Workload:
        return Workload(rate_rps=round(max(rate, 0.02), 3), **self.traffic)

    def capacity(self, settings: dict[str, Any], traffic: dict[str, Any]) -> float:
        self.traffic = traffic
        spec = replace(self.template, settings=settings, workload=Workload(rate_rps=1.0, **traffic))
        return capacity_rps(spec, self.window)


def deployment(slot: Slot, window: WindowPlan | None = None) -> ServerSpec:
    """The slot's server before any tuning or traffic: model, GPUs, deployment settings."""
    ctx = _Context(slot, 0, window or WindowPlan())
    return replace(ctx.template, settings=dict(ctx.base))


def _nice(value_ms: float) -> float:
    """Round an SLO up to two significant figures, as people write them."""
    if value_ms <= 0 or not math.isfinite(value_ms):
        return 1000.0
    digits = 10 ** max(0, math.floor(math.log10(value_ms)) - 1)
    return float(math.ceil(value_ms / digits) * digits)


def _slo(
    rng: random.Random, twin: Observation, start: Observation, breach: str | None
) -> dict[str, float] | None:
    if twin.ttft_p95_s is None or twin.itl_p95_s is None:
        return None
    slo = {
        "ttft_p95_ms": _nice(twin.ttft_p95_s * 1000 * rng.uniform(1.6, 2.6)),
        "itl_p95_ms": _nice(twin.itl_p95_s * 1000 * rng.uniform(1.4, 2.2)),
    }
    if breach is not None:
        key = f"{breach}_p95_ms"
        good = (twin.ttft_p95_s if breach == "ttft" else twin.itl_p95_s) * 1000 * 1.1
        bad = start.ttft_p95_s if breach == "ttft" else start.itl_p95_s
        if bad is None or bad * 1000 * 0.8 <= good:
            return None  # the twin is not clearly better: no SLO separates them
        slo[key] = _nice(good + rng.uniform(0.2, 0.8) * (bad * 1000 * 0.8 - good))
    return slo


def _realized(archetype: str, truth: set[str]) -> bool:
    required = REQUIRED[archetype]
    if required is None:
        return not truth
    if required == "any":
        return True
    return bool(truth & set(required.split("|")))


def _attempt(slot: Slot, attempt: int, window: WindowPlan) -> GeneratedServer | None:
    ctx = _Context(slot, attempt, window)
    draft = BUILDERS[slot.archetype](ctx)
    if draft is None:
        return None
    spec = replace(ctx.template, settings=draft.settings, workload=draft.workload)
    start = observe(spec, window)
    if start.startup_error is not None:
        return None
    twin = (
        start
        if draft.reference == draft.settings
        else observe(replace(spec, settings=draft.reference), window)
    )
    slo = _slo(ctx.rng, twin, start, draft.breach)
    if slo is None:
        return None
    spec = replace(spec, slo=slo)
    truth = ground_truth(start, spec)
    if truth is None or not _realized(slot.archetype, truth):
        return None
    spec = replace(spec, expected_bottlenecks=tuple(sorted(truth)))
    facts = {
        "kv_usage_mean": round(float(np.mean(start.kv_usage)), 3),
        "running_mean": round(float(np.mean(start.running)), 2),
        "waiting_mean": round(float(np.mean(start.waiting)), 2),
        "preemption_intervals": start.preemption_intervals,
        "ttft_p95_ms": None if start.ttft_p95_s is None else round(start.ttft_p95_s * 1000),
        "itl_p95_ms": None if start.itl_p95_s is None else round(start.itl_p95_s * 1000, 1),
    }
    return GeneratedServer(slot, spec, slot.gpu, WORKLOAD_KIND[slot.archetype], attempt + 1, facts)


def realize(slot: Slot, window: WindowPlan) -> GeneratedServer:
    """Draw the slot's server until its ground truth is clear and its archetype shows; after
    MAX_ATTEMPTS, fall back to a healthy server of the same deployment (said in `facts`)."""
    for attempt in range(MAX_ATTEMPTS):
        server = _attempt(slot, attempt, window)
        if server is not None:
            return server
    fallback = replace(slot, archetype="healthy")
    for attempt in range(MAX_ATTEMPTS, 3 * MAX_ATTEMPTS):
        server = _attempt(fallback, attempt, window)
        if server is not None:
            server.facts["fell_back_from"] = slot.archetype
            return server
    raise RuntimeError(f"slot {slot} could not be realized in {3 * MAX_ATTEMPTS} attempts")
