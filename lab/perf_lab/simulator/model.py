"""A fixed-step model of one continuous-batching inference server.

Each tick (a fraction of a second of simulated time) does what an engine's scheduler does over
many engine steps, with per-request bookkeeping in numpy arrays:

1. arrivals (Poisson, modulated by bursts and a daily pattern) join the waiting queue;
2. admission in arrival order, limited by free KV-cache tokens, the running-request cap and the
   per-step token budget (TGI reserves each request's whole length; SGLang keeps a reserve for
   growth scaled by its schedule conservativeness);
3. a roofline gives the engine-step time: prefill is compute-bound, decode reads the weights
   and every running request's KV once per step. Each admitted prompt gets the time its prefill
   ends (first come, first served, possibly in a later tick) and owes the time it adds to the
   engine's steps: with chunked prefill what its mixed steps take beyond a decode step, without
   it the separate steps that stall decoding. The owed time is paid from later decode steps;
4. running requests step together: each emits a token at every step boundary after its prefill;
   the fraction of a step under way at the tick's end is carried to the next tick, so results
   hardly depend on the tick and a step longer than the tick still completes;
5. if KV use outgrows the pool, the newest requests are preempted and recomputed later (vLLM
   preemption, SGLang retraction);
6. finished requests leave at their last token; the requests admitted into the room they made
   start their prefill then, not at the tick's end; latencies are observed into histograms.

The figures are coarse on purpose (no attention FLOPs, fixed efficiencies); docs/simulator.md
compares them with published numbers.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np

from perf_lab.simulator.settings import Knobs
from perf_pipelines.hardware import (
    GIB,
    KV_DTYPE_BYTES,
    WEIGHT_FORMATS,
    Gpu,
    ModelProfile,
)

# Share of peak a real engine reaches: ~55 % of tensor FLOPs in prefill GEMMs; ~90 % of HBM
# bandwidth in decode plus a fixed ~2.5 ms per engine step (scheduling, input preparation,
# sampling, launches). Bandwidth share and fixed cost were separated by fitting one-stream decode
# steps on GPUs 16× apart in bandwidth (L4 ~58 ms, A100 ~13 ms, H200 ~6.5 ms per step); both
# were 0.77 and 1 ms before (docs/simulator.md, "Against published figures"). Tensor parallelism
# pays for its all-reduces.
COMPUTE_EFFICIENCY = 0.55
BANDWIDTH_EFFICIENCY = 0.90
STEP_OVERHEAD_S = 0.0025
TENSOR_PARALLEL_PENALTY = 1.08
ACTIVATION_RESERVE_GIB_PER_GPU = 1.5
WEIGHT_ONLY_DEQUANT_PENALTY = 1.15


class StartupError(RuntimeError):
    """The settings cannot start on this hardware (e.g. the weights do not fit)."""


@dataclass
class Workload:
    """Traffic offered to one server; every field can change while it runs."""

    rate_rps: float = 2.0
    prompt_tokens_mean: float = 800.0
    output_tokens_mean: float = 200.0
    length_sigma: float = 0.6  # log-normal spread of prompt and output lengths
    shared_prefix_ratio: float = 0.2  # share of each prompt that is a common prefix
    burst_factor: float = 1.0  # rate multiplier during bursts (1 = plain Poisson)
    burst_period_s: float = 120.0
    daily_amplitude: float = 0.0  # 0..1, sinusoidal day/night swing
    max_new_tokens: int = 1024
    client_timeout_s: float = 300.0  # clients give up on requests still waiting after this

    def rate_at(self, t: float) -> float:
        rate = self.rate_rps * (1 + self.daily_amplitude * math.sin(2 * math.pi * t / 86400))
        if self.burst_factor != 1.0 and (t % self.burst_period_s) < self.burst_period_s / 4:
            rate *= self.burst_factor
        return max(rate, 0.0)


class Histogram:
    """Per-bucket counts (not cumulative) with a running sum, like a Prometheus histogram."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = np.asarray(bounds, dtype=float)
        self.bounds_list = list(bounds)
        self.counts = np.zeros(len(bounds) + 1)
        self.sum = 0.0
        self.count = 0.0

    def observe(self, values: np.ndarray, weights: np.ndarray | float = 1.0) -> None:
        if len(values) == 0:
            return
        weights_array = np.broadcast_to(np.asarray(weights, dtype=float), values.shape)
        index = np.searchsorted(self.bounds, values, side="left")
        self.counts += np.bincount(index, weights=weights_array, minlength=len(self.counts))
        self.sum += float(np.dot(values, weights_array))
        self.count += float(weights_array.sum())

    def observe_one(self, value: float, weight: float = 1.0) -> None:
        """One value seen `weight` times (a step time, an inter-token gap): no array work."""
        self.counts[bisect.bisect_left(self.bounds_list, value)] += weight
        self.sum += value * weight
        self.count += weight

    def cumulative(self) -> np.ndarray:
        return np.cumsum(self.counts)


@dataclass(frozen=True)
class Buckets:
    ttft: tuple[float, ...]
    itl: tuple[float, ...]
    e2e: tuple[float, ...]
    queue: tuple[float, ...]
    step: tuple[float, ...]


@dataclass
class Counters:
    prompt_tokens: float = 0.0
    cached_prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    preemptions: float = 0.0
    finished: float = 0.0
    finished_length: float = 0.0
    finished_within_slo: float = 0.0  # ground truth for goodput; not exported by any engine
    rejected: float = 0.0
    aborted: float = 0.0
    decode_steps: float = 0.0
    prefill_steps: float = 0.0
    busy_seconds: float = 0.0


_FIELDS = (
    "arrival",
    "prompt",
    "output",
    "hits",
    "ctx",
    "done",
    "admitted",
    "first_token",
    "ready",
    "joined",
)


@dataclass
class _Requests:
    """Column arrays of a set of requests (waiting or running)."""

    arrival: np.ndarray = field(default_factory=lambda: np.zeros(0))
    prompt: np.ndarray = field(default_factory=lambda: np.zeros(0))  # tokens to (re)compute
    output: np.ndarray = field(default_factory=lambda: np.zeros(0))  # tokens to generate in all
    hits: np.ndarray = field(default_factory=lambda: np.zeros(0))  # prompt tokens from the cache
    ctx: np.ndarray = field(default_factory=lambda: np.zeros(0))  # tokens held in KV
    done: np.ndarray = field(default_factory=lambda: np.zeros(0))  # tokens generated so far
    admitted: np.ndarray = field(default_factory=lambda: np.zeros(0))
    first_token: np.ndarray = field(default_factory=lambda: np.zeros(0))  # NaN until emitted
    ready: np.ndarray = field(default_factory=lambda: np.zeros(0))  # prefill done: decode from here
    joined: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (re)entered the batch

    def __len__(self) -> int:
        return len(self.arrival)

    def take(self, mask: np.ndarray) -> _Requests:
        return _Requests(*(getattr(self, name)[mask] for name in _FIELDS))

    def extend(self, other: _Requests, front: bool = False) -> None:
        for name in _FIELDS:
            parts = (getattr(other, name), getattr(self, name))
            setattr(self, name, np.concatenate(parts if front else parts[::-1]))


class ServerModel:
    """One server process: its settings, its state and the counters it exports."""

    def __init__(
        self,
        gpu: Gpu,
        gpus: int,
        model: ModelProfile,
        knobs: Knobs,
        buckets: Buckets,
        workload: Workload,
        start_time: float,
        seed: int,
    ) -> None:
        self.gpu, self.gpus, self.model, self.knobs = gpu, knobs.gpus or gpus, model, knobs
        self.workload = workload
        # Per-request SLO for the goodput count (TTFT and mean time per output token), seconds.
        self.slo_ttft_s: float | None = None
        self.slo_tpot_s: float | None = None
        self.now = start_time
        self.start_time = start_time
        self.random = np.random.default_rng(seed)
        self.weight_format = WEIGHT_FORMATS[knobs.weight_format]
        self.kv_bytes_per_token = model.kv_bytes_per_token(KV_DTYPE_BYTES[knobs.kv_dtype])
        self.kv_capacity_tokens = self._kv_capacity()
        self.waiting = _Requests()
        self.running = _Requests()
        self.counters = Counters()
        self.ttft = Histogram(buckets.ttft)
        self.itl = Histogram(buckets.itl)
        self.e2e = Histogram(buckets.e2e)
        self.queue = Histogram(buckets.queue)
        self.decode_step = Histogram(buckets.step)
        self.prefill_step = Histogram(buckets.step)
        self.last_step_s = self.step_time(1, 0, 0)
        # Carried from tick to tick: the fraction of the running batch's current step already
        # done, the prefill time owed to engine steps and the time the queued prefill ends.
        self.step_phase = 0.0
        self.prefill_owed = 0.0
        self.prefill_free_at = start_time
        self.prefill_idle = 0.0  # decode-step seconds at the last tick's end that served nobody

    # -- capacity and roofline ------------------------------------------------------------------

    @property
    def weight_bytes(self) -> float:
        return self.model.params_b * 1e9 * self.weight_format.bytes_per_param

    def _kv_capacity(self) -> float:
        memory = self.gpu.memory_gib * GIB * self.gpus
        activations = ACTIVATION_RESERVE_GIB_PER_GPU * GIB * self.gpus
        free = memory * self.knobs.memory_fraction - self.weight_bytes - activations
        if free <= 0:
            raise StartupError(
                f"out of memory: {self.weight_bytes / GIB:.1f} GiB of weights do not fit in "
                f"{self.knobs.memory_fraction:.2f} × {memory / GIB:.0f} GiB"
            )
        physical = free / self.kv_bytes_per_token
        override = self.knobs.kv_capacity_tokens_override
        if override is not None:
            if override > physical:
                raise StartupError(
                    f"not enough memory for {override} KV tokens (at most {physical:.0f} fit)"
                )
            return float(override)
        return float(math.floor(physical))

    def _peak_flops(self) -> float:
        fmt = self.weight_format
        if fmt.compute == "fp8" and self.gpu.supports_fp8_compute and self.gpu.fp8_tflops:
            return self.gpu.fp8_tflops * 1e12
        if fmt.compute == "int8":
            return self.gpu.int8_tops * 1e12
        # FP16 GEMMs, also for FP8 weights on pre-Ada GPUs (weight-only, dequantised on the fly)
        penalty = WEIGHT_ONLY_DEQUANT_PENALTY if fmt.bytes_per_param < 2 else 1.0
        return self.gpu.fp16_tflops * 1e12 / penalty

    def step_time(self, decode_batch: float, prefill_tokens: float, kv_tokens: float) -> float:
        """Seconds of one engine step: the slower of compute and memory traffic."""
        return float(self.step_times(decode_batch, np.asarray(prefill_tokens), kv_tokens))

    def step_times(
        self, decode_batch: float, prefill_tokens: np.ndarray, kv_tokens: float
    ) -> np.ndarray:
        """`step_time` for each of several prefill sizes."""
        active_bytes = self.model.active_params_b * 1e9 * self.weight_format.bytes_per_param
        flops = 2 * self.model.active_params_b * 1e9 * (decode_batch + prefill_tokens)
        compute = flops / (self.gpus * self._peak_flops() * COMPUTE_EFFICIENCY)
        traffic = active_bytes + kv_tokens * self.kv_bytes_per_token
        memory = traffic / (self.gpus * self.gpu.hbm_tb_s * 1e12 * BANDWIDTH_EFFICIENCY)
        penalty = TENSOR_PARALLEL_PENALTY if self.gpus > 1 else 1.0
        result: np.ndarray = np.maximum(compute, memory) * penalty + STEP_OVERHEAD_S
        return result

    # -- state ----------------------------------------------------------------------------------

    def kv_used_tokens(self) -> float:
        if self.knobs.reserve_full_length:
            return float(np.sum(self.running.prompt + self.running.output))
        return float(np.sum(self.running.ctx - self.running.hits))

    def kv_usage(self) -> float:
        return min(1.0, self.kv_used_tokens() / self.kv_capacity_tokens)

    def reserved_tokens(self) -> float:
        """What TGI calls batch_current_max_tokens: the running batch's full-length reservation."""
        return float(np.sum(self.running.prompt + self.running.output))

    # -- simulation -----------------------------------------------------------------------------

    def advance(self, until: float, tick: float) -> None:
        while self.now + 1e-9 < until:
            dt = min(tick, until - self.now)
            self._tick(dt)
            self.now += dt

    def _arrivals(self, dt: float) -> _Requests:
        w = self.workload
        count = self.random.poisson(w.rate_at(self.now) * dt)
        if count == 0:
            return _Requests()
        arrival = np.sort(self.now + self.random.random(count) * dt)
        limit = self.model.max_context // 2
        sigma = w.length_sigma
        prompt = np.clip(
            np.round(
                self.random.lognormal(math.log(w.prompt_tokens_mean) - sigma**2 / 2, sigma, count)
            ),
            8,
            limit,
        )
        output = np.clip(
            np.round(
                self.random.lognormal(math.log(w.output_tokens_mean) - sigma**2 / 2, sigma, count)
            ),
            1,
            w.max_new_tokens,
        )
        hits = (
            np.floor(prompt * w.shared_prefix_ratio)
            if self.knobs.prefix_caching
            else np.zeros(count)
        )
        zeros, nan = np.zeros(count), np.full(count, np.nan)
        return _Requests(
            arrival,
            prompt,
            output,
            hits,
            zeros,
            zeros.copy(),
            nan,
            nan.copy(),
            nan.copy(),
            nan.copy(),
        )

    def _reject_overload(self, new: _Requests) -> _Requests:
        limit = self.knobs.max_concurrent
        if limit is None or len(new) == 0:
            return new
        room = max(0, limit - len(self.running) - len(self.waiting))
        self.counters.rejected += max(0, len(new) - room)
        return new.take(np.arange(len(new)) < room)

    def _admit(self, dt: float, at: float, freed: np.ndarray | None = None) -> None:
        """Move waiting requests into the running batch (their prefill runs in the next steps).

        They join at `at`, or, one each, at the times in `freed` (sorted) when requests finished
        during the tick and left room."""
        waiting = self.waiting
        slots = self.knobs.max_running - len(self.running)
        if len(waiting) == 0 or slots <= 0:
            return
        if self.knobs.reserve_full_length:
            need = waiting.prompt + waiting.output
        else:
            # Prompt blocks now, plus the reserve a conservative scheduler keeps for growth.
            need = waiting.prompt - waiting.hits + self.knobs.admission_reserve * waiting.output
        free = self.kv_capacity_tokens - self.kv_used_tokens()
        fits = np.cumsum(need) <= free
        steps = max(1.0, dt / self.last_step_s)
        budget = self.knobs.max_batched_tokens * steps
        within_budget = np.cumsum(waiting.prompt - waiting.hits) <= budget
        within_budget[0] = True  # a prompt longer than the budget is still taken (in chunks)
        admit = fits & within_budget & (np.arange(len(waiting)) < slots)
        # FCFS: stop at the first request that does not fit.
        blocked = np.flatnonzero(~admit)
        count = int(blocked[0]) if len(blocked) else len(waiting)
        if count == 0:
            return
        taken = waiting.take(np.arange(len(waiting)) < count)
        self.waiting = waiting.take(np.arange(len(waiting)) >= count)
        fresh = np.isnan(taken.first_token)
        slot_free = np.full(count, at)
        if freed is not None:
            slot_free[: len(freed)] = freed[:count]
        taken.joined = np.maximum(taken.arrival, slot_free)
        # A preempted request keeps the time it was first scheduled (vLLM's queue time ends there).
        taken.admitted = np.where(fresh, taken.joined, taken.admitted)
        taken.ctx = taken.prompt.copy()
        taken.ready = np.full(count, np.nan)
        self.counters.prompt_tokens += float(np.sum(taken.prompt[fresh]))
        self.counters.cached_prompt_tokens += float(np.sum(taken.hits[fresh]))
        self.queue.observe((taken.admitted - taken.arrival)[fresh])
        self.running.extend(taken)

    def _tick(self, dt: float) -> None:
        end = self.now + dt
        self.waiting.extend(self._reject_overload(self._arrivals(dt)))
        self._abort_timed_out()
        self._admit(dt, self.now)
        counted_from = self._schedule_prefill()
        step, steps, decode_step = self._engine_steps(dt)
        self.last_step_s = step
        freed = self._decode(end, steps, decode_step, counted_from)
        if len(self.running) == 0:
            self.step_phase = 0.0  # idle: the next batch starts its steps afresh
        self._preempt_if_full()
        # Freed slots are refilled at once, as a continuous-batching scheduler does: the
        # newcomers' prefill and tokens count from the moment room was made, not the tick's end.
        before = len(self.running)
        self._admit(dt, end, freed)
        if len(self.running) == before:
            self.prefill_idle = 0.0

    def _schedule_prefill(self) -> np.ndarray:
        """Give each newly admitted request the time its prefill ends, first come first served
        behind the prefill already queued (which may end in a later tick), and owe the time its
        prefill adds to the engine steps that carry it. Returns, for those requests (NaN for the
        others), the time from which their step boundaries count."""
        pending = np.flatnonzero(np.isnan(self.running.ready))
        counted_from = np.full(len(self.running), np.nan)
        if len(pending) == 0:
            return counted_from
        running, budget = self.running, self.knobs.max_batched_tokens
        tokens = (running.prompt - running.hits)[pending]
        chunks = tokens / budget
        batch, kv_tokens = len(running), float(np.sum(running.ctx))
        if self.knobs.chunked_prefill:
            # Alone, a prompt takes the steps its own chunks make (at least one); packed behind
            # others, its share of full-budget steps. Either way decoding goes on in those steps:
            # what is owed is the time they take beyond a plain decode step.
            decode_step = self.step_time(batch, 0, kv_tokens)
            queued = chunks * self.step_time(batch, budget, kv_tokens)
            alone = np.maximum(chunks, 1) * self.step_times(
                batch, np.minimum(tokens, budget), kv_tokens
            )
            extra_queued = queued - chunks * decode_step
            extra_alone = alone - np.maximum(chunks, 1) * decode_step
        else:
            # Whole prompts in dedicated steps of up to the budget: running requests wait.
            chunk_time = self.step_time(0, budget, kv_tokens)
            queued = alone = extra_queued = extra_alone = np.ceil(chunks) * chunk_time
            self.counters.prefill_steps += float(np.sum(np.ceil(chunks)))
            self.prefill_step.observe_one(chunk_time, float(np.sum(np.ceil(chunks))))
        # Lindley's recursion, ready_j = max(start_j + alone_j, ready_{j-1} + queued_j), in
        # closed form: cumulative service plus the latest of the queue's carried end and each
        # request's own start less the service before it.
        service = np.cumsum(queued)
        starts = running.joined[pending] + alone - service
        latest = np.maximum(self.prefill_free_at, np.maximum.accumulate(starts))
        ready = service + latest
        self.prefill_free_at = float(ready[-1])
        extra = np.where(starts >= latest, extra_alone, extra_queued)
        self.prefill_owed += float(np.sum(extra))
        running.ready[pending] = ready
        # The owed time is paid from this tick on, not while the prefill ran (possibly in the
        # last tick): counted from `ready - extra`, the request waits the steps a prefill takes
        # at the rate of plain decode steps, whatever the tick.
        counted_from[pending] = ready - extra
        fresh = pending[np.isnan(running.first_token[pending])]  # not a preempted request
        running.first_token[fresh] = running.ready[fresh]
        self.ttft.observe(running.first_token[fresh] - running.arrival[fresh])
        return counted_from

    def _engine_steps(self, dt: float) -> tuple[float, float, float]:
        """The tick's mean engine step, how many (a fraction of one included) run in it and
        the plain decode step.

        The prefill time owed by `_schedule_prefill` is paid here and what does not fit is
        carried to the next tick. With chunked prefill decoding goes on at no less than one
        token per full-budget step; without, dedicated prefill steps can stall it for a tick."""
        c = self.counters
        batch = len(self.running)
        kv_tokens = float(np.sum(self.running.ctx))
        decode_step = self.step_time(batch, 0, kv_tokens)
        if self.knobs.chunked_prefill:
            extra = self.step_time(batch, self.knobs.max_batched_tokens, kv_tokens) - decode_step
            payable = dt * extra / (decode_step + extra)
        else:
            payable = dt
        # Steps that ran at the end of the last tick with nothing to decode were the newcomers'
        # prefill steps: that much of what they owe is paid already.
        self.prefill_owed -= min(self.prefill_owed, self.prefill_idle)
        self.prefill_idle = 0.0
        paid = min(self.prefill_owed, payable)
        self.prefill_owed -= paid
        steps = (dt - paid) / decode_step
        step = dt / steps if self.knobs.chunked_prefill and steps > 0 else decode_step
        if batch:
            c.busy_seconds += dt
            c.decode_steps += steps
            self.decode_step.observe_one(step, steps)
        return step, steps, decode_step

    def _decode(
        self, end: float, steps: float, decode_step: float, counted_from: np.ndarray
    ) -> np.ndarray:
        """Running requests emit a token at every boundary of the batch's steps; the fraction of
        a step under way at the tick's end is carried into the next (`step_phase`), so a step
        longer than the tick still completes, over several ticks. Requests scheduled in this
        tick count boundaries from `counted_from` even if that was before the tick (they joined
        when room was made in the previous one). Returns when finished requests left, sorted."""
        c = self.counters
        running, now, phase = self.running, self.now, self.step_phase
        scheduled = ~np.isnan(counted_from)
        rate = steps / (end - now)  # step boundaries per second (dedicated prefill excluded)
        interval = 1 / rate if rate > 0 else math.inf

        def boundaries(at: np.ndarray) -> np.ndarray:
            """Step boundaries passed since the tick began, up to `at`."""
            return np.floor(phase + (at - now) * rate + 1e-9)

        # A prefill ending in a later tick starts its request's decoding there.
        emitting = running.ready <= end
        start = np.where(emitting, running.ready, end)
        start = np.where(scheduled, start, np.maximum(start, now))
        passed = boundaries(np.where(scheduled, np.minimum(counted_from, start), start))
        first = (running.done == 0) & emitting  # the prefill emits the first token at `ready`
        remaining = running.output - running.done
        available = first + np.maximum(boundaries(np.asarray(end)) - passed, 0)
        generated = np.where(emitting, np.minimum(available, remaining), 0)
        self.step_phase = (phase + steps) % 1.0
        running.done += generated
        running.ctx += generated
        c.generation_tokens += float(np.sum(generated))
        decode_tokens = float(np.sum(generated) - np.count_nonzero(first))
        if decode_tokens > 0:
            self.itl.observe_one(interval, decode_tokens)

        finished = running.done >= running.output
        if not np.any(finished):
            return np.zeros(0)
        decoding = emitting & ~finished
        # The last token: at `ready` for a one-token answer, else at a step boundary.
        last = (passed + remaining - first)[finished]
        at_boundary = now + (last - phase) / max(rate, 1e-12)
        finish_at = np.maximum(at_boundary, start[finished])
        ended = running.take(finished)
        self.running = running.take(~finished)
        self.e2e.observe(finish_at - ended.arrival)
        c.finished += len(ended)
        c.finished_within_slo += self._within_slo(ended, finish_at)
        c.finished_length += float(np.count_nonzero(ended.output >= self.workload.max_new_tokens))
        freed: np.ndarray = np.sort(finish_at)
        if not np.any(decoding):
            # The batch ran dry before the tick's end: the steps after its last token served
            # nobody. Requests joining in that time (at `freed`) can prefill in them.
            self.prefill_idle = (end - freed[-1]) * steps * decode_step / (end - now)
        return freed

    def _within_slo(self, ended: _Requests, finish_at: np.ndarray) -> int:
        """Finished requests whose TTFT and mean time per output token met the SLO (the
        usual definition of goodput: DistServe, vLLM's `--goodput`)."""
        good = np.ones(len(ended), dtype=bool)
        if self.slo_ttft_s is not None:
            good &= ended.first_token - ended.arrival <= self.slo_ttft_s
        if self.slo_tpot_s is not None:
            tpot = (finish_at - ended.first_token) / np.maximum(ended.output - 1, 1)
            good &= tpot <= self.slo_tpot_s
        return int(np.count_nonzero(good))

    def _abort_timed_out(self) -> None:
        expired = self.now - self.waiting.arrival > self.workload.client_timeout_s
        if np.any(expired):
            self.counters.aborted += float(np.count_nonzero(expired))
            self.waiting = self.waiting.take(~expired)

    def _preempt_if_full(self) -> None:
        if self.knobs.reserve_full_length:
            return  # TGI reserved every request's full length at admission: no preemption
        overflow = self.kv_used_tokens() - self.kv_capacity_tokens
        if overflow <= 0 or len(self.running) == 0:
            return
        held = (self.running.ctx - self.running.hits)[::-1]  # newest first
        count = int(np.searchsorted(np.cumsum(held), overflow, side="left")) + 1
        count = min(count, len(self.running))
        keep = np.arange(len(self.running)) < len(self.running) - count
        victims = self.running.take(~keep)
        self.running = self.running.take(keep)
        # Recompute later: everything held so far becomes prompt again, generated tokens stay.
        victims.prompt = victims.ctx.copy()
        self.waiting.extend(victims, front=True)
        self.counters.preemptions += count
