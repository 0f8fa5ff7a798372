"""Properties of the advice over random windows × engines × versions × GPUs × current settings.

Whatever the window, the rules never propose a value the engine's truth table refuses (the final
check drops nothing), never contradict themselves, never raise a memory fraction above the cap,
and never propose FP8 where the hardware cannot run it — unknown GPUs included.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perf_pipelines.analysis.detection import detect
from perf_pipelines.analysis.window import WindowStats, window_stats
from perf_pipelines.engines import truth
from perf_pipelines.engines.canonical import Histogram
from perf_pipelines.hardware import MODELS, resolve_gpu
from perf_pipelines.recommendations.ladders import MAX_MEMORY_FRACTION, MEMORY_FRACTION
from perf_pipelines.recommendations.rules import DEPLOYMENT_PARAMETERS, advise, contradictions
from perf_pipelines.targets import Target
from tests.support.windows import frame, itl_histogram, window_bounds

ENGINES = ("vllm", "sglang", "tgi", "llamacpp")
VERSIONS = {
    "vllm": (None, "0.6.3", "0.8.5", "0.10.2", "0.11.0", "0.2.0", "99.0.0"),
    "sglang": (None, "0.3.6", "0.4.6", "0.5.2", "0.1.0"),
    "tgi": (None, "2.0.4", "2.4.1", "3.3.4", "1.0.0"),
    "llamacpp": (None, "b3600", "b5000", "b6500", "b100"),
}
GPUS = (
    None,
    "T4",
    "A10G",
    "A100-80GB",
    "L4",
    "L40S",
    "H100-SXM-80GB",
    "H200",
    "AMD Instinct MI300X",
    "NVIDIA RTX PRO 6000 Blackwell",  # nobody's table knows it: must be treated as unknown
)
SETTINGS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "vllm": {
        "gpu_memory_utilization": st.floats(0.3, 0.99),
        "max_num_seqs": st.integers(1, 1024),
        "max_num_batched_tokens": st.sampled_from([512, 2048, 8192, 16384]),
        "kv_cache_dtype": st.sampled_from(["auto", "fp8"]),
        "quantization": st.sampled_from([None, "fp8", "awq"]),
    },
    "sglang": {
        "mem_fraction_static": st.floats(0.3, 0.99),
        "max_running_requests": st.integers(1, 1024),
        "chunked_prefill_size": st.sampled_from([2048, 4096, 8192]),
        "schedule_conservativeness": st.floats(0.3, 2.5),
        "kv_cache_dtype": st.sampled_from(["auto", "fp8_e4m3"]),
        "quantization": st.sampled_from([None, "fp8", "w8a8_int8"]),
    },
    "tgi": {
        "max_concurrent_requests": st.integers(1, 512),
        "max_batch_prefill_tokens": st.sampled_from([1024, 4096, 8192]),
        "quantize": st.sampled_from([None, "awq", "fp8"]),
    },
    "llamacpp": {
        "parallel": st.integers(1, 64),
        "ctx_size": st.sampled_from([4096, 16384, 65536]),
        "ubatch_size": st.sampled_from([128, 512]),
        "cache_type_k": st.sampled_from(["f16", "q8_0"]),
    },
}


PATTERNS = ("kv_pressure", "queue_at_cap", "preempting", "idle", "burst", "noise")


def _gauges(draw: st.DrawFn, samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Running, waiting and KV usage shaped like one of PATTERNS, with noise."""
    pattern = draw(st.sampled_from(PATTERNS))
    noise = np.array(
        draw(st.lists(st.floats(-1, 1), min_size=samples, max_size=samples)), dtype=float
    )
    cap = float(draw(st.integers(1, 1024)))
    running = np.clip(cap * draw(st.floats(0.05, 1.0)) * (1 + 0.1 * noise), 0, cap)
    waiting = np.zeros(samples)
    kv = np.clip(draw(st.floats(0, 0.8)) + 0.05 * noise, 0, 1)
    if pattern == "kv_pressure":
        kv = np.clip(draw(st.floats(0.9, 1.0)) + 0.02 * noise, 0, 1)
        waiting = np.abs(noise) * draw(st.floats(0, 200))
    elif pattern == "queue_at_cap":
        running = np.full(samples, cap)
        waiting = 1 + np.abs(noise) * draw(st.floats(1, 500))
    elif pattern == "idle":
        running = np.abs(noise) * draw(st.floats(0, 2))
        kv = np.abs(noise) * 0.1
    elif pattern == "burst":
        share = draw(st.floats(0, 0.4))
        burst = np.arange(samples) < max(1, int(samples * share))
        kv = np.where(burst, 0.97, 0.3)
        waiting = np.where(burst, 50.0, 0.0)
    elif pattern == "noise":
        running = np.abs(noise) * cap
        waiting = np.abs(noise[::-1]) * draw(st.floats(0, 300))
        kv = np.abs(noise)
    return running, waiting, kv


TTFT_BOUNDS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _histogram(bounds: tuple[float, ...], count: float, at_bucket: int) -> Histogram:
    cumulative = (*(0.0 if i < at_bucket else count for i in range(len(bounds))), count)
    return Histogram(bounds, cumulative, sum=count * bounds[at_bucket], count=count)


@st.composite
def situations(draw: st.DrawFn) -> tuple[list[WindowStats], dict[str, Target]]:
    """A window built as the pipeline builds it: canonical rows → window_stats."""
    engine = draw(st.sampled_from(ENGINES))
    settings_now = {
        name: value
        for name, strategy in SETTINGS[engine].items()
        if (value := draw(st.one_of(st.none(), strategy))) is not None
    }
    gpu = draw(st.sampled_from(GPUS))
    hardware = None if gpu is None else {"gpu": gpu, "count": draw(st.integers(1, 8))}
    slo = draw(
        st.fixed_dictionaries(
            {},
            optional={"ttft_p95_ms": st.floats(100, 5000), "itl_p95_ms": st.floats(10, 200)},
        )
    )
    target = Target.model_validate(
        {
            "name": "t",
            "url": "http://127.0.0.1:8000/metrics",
            "engine": engine,
            "version": draw(st.sampled_from(VERSIONS[engine])),
            "hardware": hardware,
            "config": settings_now if draw(st.booleans()) else {},
            "slo": slo,
        }
    )
    samples = draw(st.integers(3, 40))
    interval = draw(st.sampled_from([1.0, 5.0, 15.0, 60.0]))
    running, waiting, kv = _gauges(draw, samples)
    kv_exported = engine in ("vllm", "sglang") or draw(st.booleans())
    capacity = draw(st.one_of(st.none(), st.floats(1000, 2_000_000)))
    per_sample = {
        "finished": draw(st.floats(0, 200)),
        "preempted": draw(st.sampled_from([0.0, 0.0, 0.5, 3.0, 20.0])),
        "prompt": draw(st.floats(10, 30000)),
        "output": draw(st.floats(1, 4000)),
    }
    itl_bucket, ttft_bucket, queue_bucket = (draw(st.integers(0, 6)) for _ in range(3))
    rows: list[dict[str, Any]] = []
    for i in range(samples):
        done = per_sample["finished"] * i
        row: dict[str, Any] = {
            "requests_running": float(running[i]),
            "requests_waiting": float(waiting[i]),
            "kv_cache_usage": float(kv[i]) if kv_exported else None,
            "kv_cache_capacity_tokens": capacity,
            "preemptions_total": per_sample["preempted"] * i,
            "requests_finished_total": done,
            "prompt_tokens_total": done * per_sample["prompt"],
            "generation_tokens_total": done * per_sample["output"],
            "itl_seconds": itl_histogram(done * per_sample["output"], itl_bucket),
            "ttft_seconds": _histogram(TTFT_BOUNDS, done, ttft_bucket),
            "queue_seconds": _histogram(TTFT_BOUNDS, done, queue_bucket),
        }
        if settings_now and draw(st.booleans()):
            row["settings"] = settings_now
        rows.append(row)
    model = draw(st.sampled_from([None, "unknown/model", *MODELS]))
    data = frame(rows, target="t", engine=engine, model=model, step_s=interval)
    targets = {"t": target}
    return window_stats(data, targets, *window_bounds(data)), targets


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(situations())
def test_advice_is_always_valid_consistent_and_hardware_aware(
    case: tuple[list[WindowStats], dict[str, Target]],
) -> None:
    stats_list, targets = case
    (stats,) = stats_list
    target = targets["t"]
    reports = detect(stats_list, targets).reports
    advice = advise(stats_list, reports, targets)
    assert advice.dropped == [], f"the final check refused what a rung proposed: {advice.dropped}"
    recommendations = advice.recommendations
    problems = {
        r.kind
        for r in reports
        if r.evidence.get("sustained") is not False
        and r.kind in ("kv_cache_pressure", "preemption", "queue_saturation", "itl_slo_breach")
    }
    assert recommendations or not problems, f"no advice for {problems}"
    assert contradictions(recommendations) == []
    parameters = [r.parameter for r in recommendations]
    assert len(parameters) == len(set(parameters)), parameters
    engine = stats.engine or ""
    version = truth.parse_version(engine, target.version)
    gpu = resolve_gpu(target.hardware.gpu) if target.hardware else None
    fp8 = truth.fp8_support(gpu)
    for rec in recommendations:
        if rec.parameter in DEPLOYMENT_PARAMETERS:
            continue
        refused = truth.check_value(
            engine,
            version,
            rec.parameter,
            rec.recommended_value,
            gpu,
            settings={**stats.settings, **target.config},
            allow_weight_only=rec.parameter in ("quantization", "quantize"),
        )
        assert refused is None, f"{rec.parameter}={rec.recommended_value!r}: {refused}"
        if rec.parameter == MEMORY_FRACTION.get(engine):
            fact = truth.flag_fact(engine, version, rec.parameter)
            cap = min(MAX_MEMORY_FRACTION, fact.maximum if fact and fact.maximum else 1.0)
            assert float(rec.recommended_value) <= cap, (rec.recommended_value, cap)
        if "fp8" in str(rec.recommended_value):
            assert fp8 != "none", f"{rec.recommended_value} on {target.hardware}"
            if rec.parameter == "kv_cache_dtype":
                assert fp8 == "compute", f"FP8 KV cache on {target.hardware} ({fp8})"
        assert 0.0 < rec.confidence <= 0.95
        assert rec.evidence.get("passed_over") is not None
