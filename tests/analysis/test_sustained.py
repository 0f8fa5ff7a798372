"""Time-based evidence: a condition is sustained when it holds for a share of the window's
observed wall time and a minimum duration, whatever the scrape interval or the number of samples;
a burst yields at most an info report that says so. Plus the kinds whose judgement depends on
it: preemption vs KV pressure, SGLang idle, TGI at its token budget, latency breaches with and
without a queue, and windows too thin to judge."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from perf_pipelines.analysis.detection import (
    DEFAULT_CONFIG,
    MIN_SUSTAINED_S,
    Detection,
    DetectionConfig,
    detect,
    is_sustained,
)
from perf_pipelines.analysis.window import GAP_CAP_FACTOR, time_weights, window_stats
from perf_pipelines.engines.canonical import Histogram
from perf_pipelines.targets import Target
from tests.support.windows import cycles, frame, itl_histogram, window_bounds

URL = "http://127.0.0.1:8000/metrics"
MINUTES_5 = 300.0


def _target(name: str = "vllm-a", engine: str = "vllm", **fields: Any) -> Target:
    return Target.model_validate({"name": name, "url": URL, "engine": engine, **fields})


def _detect(
    rows: list[dict[str, Any]],
    spec: Target | None = None,
    config: DetectionConfig = DEFAULT_CONFIG,
    **frame_args: Any,
) -> Detection:
    if spec is not None:
        frame_args.setdefault("target", spec.name)
    data = frame(rows, **frame_args)
    targets = {spec.name: spec} if spec else {}
    return detect(window_stats(data, targets, *window_bounds(data)), targets, config)


def _row(i: int, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "requests_running": 40.0,
        "requests_waiting": 0.0,
        "kv_cache_usage": 0.5,
        "preemptions_total": 0.0,
        "prompt_tokens_total": 1000.0 * i,
        "generation_tokens_total": 500.0 * i,
        "requests_finished_total": 10.0 * i,
    }
    values.update(overrides)
    return values


def _kv_rows(times: list[float], high: Any) -> list[dict[str, Any]]:
    """KV use at 0.95 where `high(t)` is true, 0.5 elsewhere."""
    return [_row(i, kv_cache_usage=0.95 if high(t) else 0.5) for i, t in enumerate(times)]


def _summary(detection: Detection) -> list[tuple[str, str, Any, Any]]:
    return [
        (r.kind, r.severity, r.evidence.get("held_s"), r.evidence.get("sustained"))
        for r in detection.reports
    ]


# --- the weights -------------------------------------------------------------------------------


def test_weights_count_observed_time_only() -> None:
    # Two default cycles: 8 samples 5 s apart, 300 s apart. The pause between them is not seen.
    times = np.array(cycles(8, 5.0, 300.0, 2), dtype=float)
    runs = np.repeat([0, 1], 8)
    samples, intervals, typical = time_weights(times, runs)
    assert typical == 5.0
    assert samples.tolist() == [5.0] * 16, samples
    assert intervals.tolist() == [5.0] * 7 + [0.0] + [5.0] * 7, intervals
    assert float(np.sum(samples)) == 80.0


def test_a_slightly_late_sample_is_still_observed_and_a_missing_run_id_falls_back() -> None:
    times = np.array([0.0, 5.0, 10.0, 19.0, 24.0])  # one gap of 9 s (< 2 × 5 s): observed
    samples, intervals, typical = time_weights(times, None)
    assert typical == 5.0 and samples.tolist() == [5.0, 5.0, 9.0, 5.0, 5.0]
    assert intervals.tolist() == [5.0, 5.0, 9.0, 5.0]
    late = np.array([0.0, 5.0, 10.0, 10.0 + GAP_CAP_FACTOR * 5.0 + 0.1])
    samples, intervals, _ = time_weights(late, None)
    assert samples.tolist()[2] == 5.0 and intervals.tolist()[2] == 0.0  # beyond the cap


def test_one_sample_per_run_takes_the_interval_between_runs() -> None:
    # One sample per cycle (SCRAPE_SAMPLES=1) every 60 s: each stands for its 60 s.
    times = np.arange(0.0, 600.0, 60.0)
    samples, _, typical = time_weights(times, np.arange(len(times)))
    assert typical == 60.0 and set(samples.tolist()) == {60.0}


def test_degenerate_times_give_no_observed_time() -> None:
    assert time_weights(np.array([]), None)[0].tolist() == []
    assert time_weights(np.array([3.0]), None)[2] is None
    samples, _, typical = time_weights(np.array([7.0, 7.0, 7.0]), None)
    assert typical is None and float(np.sum(samples)) == 0.0


# --- burst vs sustained ----------------------------------------------------------------------


@pytest.mark.parametrize("start", [0.0, 5.0, 12.5, 20.0, 25.0])
@pytest.mark.parametrize("cycle_count", [1, 3])
def test_a_10s_burst_at_5s_scraping_never_passes(start: float, cycle_count: int) -> None:
    """Default schedule: 8 samples 5 s apart per cycle, a cycle every 5 minutes."""
    times = cycles(8, 5.0, MINUTES_5, cycle_count)
    last = (cycle_count - 1) * MINUTES_5  # the burst in the newest cycle
    rows = _kv_rows(times, lambda t: last + start <= t <= last + start + 10.0)
    detection = _detect(rows, offsets_s=times, samples_per_run=8)
    (report,) = detection.reports
    assert (report.kind, report.severity) == ("kv_cache_pressure", "info"), _summary(detection)
    assert report.evidence["sustained"] is False and not is_sustained(report)
    assert report.evidence["burst"] == "burst, not sustained"
    assert report.evidence["held_s"] < MIN_SUSTAINED_S
    assert report.evidence["min_sustained_s"] == MIN_SUSTAINED_S
    assert report.summary.startswith("Burst, not sustained"), report.summary


def test_a_preemption_burst_and_a_queue_burst_are_info_only() -> None:
    times = cycles(8, 5.0, MINUTES_5, 1)
    burst = [10.0, 15.0, 20.0]  # 10 s
    preemptions = np.cumsum([3.0 if t in burst else 0.0 for t in times])
    rows = [
        _row(
            i,
            kv_cache_usage=0.6,
            preemptions_total=float(preemptions[i]),
            requests_running=16.0,
            requests_waiting=9.0 if t in burst else 0.0,
        )
        for i, t in enumerate(times)
    ]
    detection = _detect(
        rows, _target(config={"max_num_seqs": 16}), offsets_s=times, samples_per_run=8
    )
    kinds = {r.kind: r for r in detection.reports}
    assert set(kinds) == {"preemption", "queue_saturation"}, _summary(detection)
    for report in kinds.values():
        assert report.severity == "info" and report.evidence["sustained"] is False, report


@pytest.mark.parametrize("interval_s", [1.0, 5.0, 15.0, 60.0])
def test_held_80_percent_of_a_5_minute_window_passes_at_every_interval(interval_s: float) -> None:
    times = [float(t) for t in np.arange(0.0, MINUTES_5, interval_s)]
    rows = _kv_rows(times, lambda t: t >= 0.2 * MINUTES_5)  # the last 80 %
    detection = _detect(rows, offsets_s=times, samples_per_run=len(times))
    (report,) = detection.reports
    assert report.kind == "kv_cache_pressure" and report.severity != "info", _summary(detection)
    assert report.evidence["sustained"] is True
    assert report.evidence["share_of_time"] == pytest.approx(0.8, abs=interval_s / MINUTES_5)
    assert report.evidence["held_s"] == pytest.approx(240.0, abs=interval_s)


@pytest.mark.parametrize("interval_s", [1.0, 5.0, 15.0, 60.0])
@pytest.mark.parametrize("burst_s", [0.0, 10.0])
def test_a_short_burst_fails_at_every_interval(interval_s: float, burst_s: float) -> None:
    times = [float(t) for t in np.arange(0.0, MINUTES_5, interval_s)]
    rows = _kv_rows(times, lambda t: 150.0 <= t <= 150.0 + burst_s)
    detection = _detect(rows, offsets_s=times, samples_per_run=len(times))
    assert all(r.severity == "info" for r in detection.reports), _summary(detection)
    assert not any(is_sustained(r) for r in detection.reports), _summary(detection)


@pytest.mark.parametrize(
    ("samples", "interval_s", "cycle_count", "sustained"),
    [
        (8, 5.0, 1, True),  # the default: one cycle spans 35 s
        (7, 5.0, 1, True),  # 35 s of samples still
        (3, 5.0, 1, False),  # the old default: 15 s per cycle, a single cycle cannot tell
        (3, 5.0, 2, True),  # …two cycles of it can (30 s held, both ends observed)
        (2, 15.0, 1, True),  # 2 samples 15 s apart: 30 s
        (4, 1.0, 1, False),  # 4 s of scraping: never 30 s
    ],
)
def test_how_many_samples_establish_a_condition_held_throughout(
    samples: int, interval_s: float, cycle_count: int, sustained: bool
) -> None:
    times = cycles(samples, interval_s, MINUTES_5, cycle_count)
    rows = _kv_rows(times, lambda t: True)
    config = DetectionConfig(min_span_s=0.0, min_up_samples=2)
    detection = _detect(rows, config=config, offsets_s=times, samples_per_run=samples)
    (report,) = detection.reports
    assert report.evidence["sustained"] is sustained, _summary(detection)
    assert report.evidence["observed_s"] == pytest.approx(samples * interval_s * cycle_count)


def test_the_thresholds_are_configurable() -> None:
    times = cycles(3, 5.0, MINUTES_5, 1)
    rows = _kv_rows(times, lambda t: True)
    lenient = DetectionConfig(min_sustained_s=10.0)
    assert _detect(rows, offsets_s=times)
    (report,) = _detect(rows, config=lenient, offsets_s=times, samples_per_run=3).reports
    assert report.evidence["sustained"] is True and report.evidence["min_sustained_s"] == 10.0
    strict = DetectionConfig(sustained_share=1.0, min_sustained_s=0.0)
    partly = _kv_rows(times, lambda t: t > 0)
    (report,) = _detect(partly, config=strict, offsets_s=times, samples_per_run=3).reports
    assert report.evidence["sustained"] is False
    with pytest.raises(ValueError, match="sustained_share"):
        DetectionConfig(sustained_share=0.0)
    with pytest.raises(ValueError, match="min_sustained_s"):
        DetectionConfig(min_sustained_s=-1.0)


def test_sparse_but_steady_preemptions_are_sustained() -> None:
    """0.1 preemption/s leaves most 5 s intervals empty; over the cycle it keeps happening."""
    times = cycles(8, 5.0, MINUTES_5, 1)
    counts = [0, 1, 1, 1, 2, 2, 3, 4]  # rises in 4 of 7 intervals, first and last included
    rows = [_row(i, kv_cache_usage=0.6, preemptions_total=float(c)) for i, c in enumerate(counts)]
    (report,) = _detect(rows, offsets_s=times, samples_per_run=8).reports
    assert report.kind == "preemption" and report.evidence["sustained"] is True, report.evidence
    assert report.evidence["held_s"] == 35.0


# --- preemption is its own kind ----------------------------------------------------------------


def _preempting(kv: float | None) -> list[dict[str, Any]]:
    return [
        _row(i, kv_cache_usage=kv, preemptions_total=2.0 * i, requests_finished_total=10.0 * i)
        for i in range(12)
    ]


def test_preemption_with_low_kv_is_preemption() -> None:
    detection = _detect(_preempting(0.6))
    (report,) = detection.reports
    assert (report.kind, report.severity) == ("preemption", "critical"), _summary(detection)
    assert report.evidence["kv_high"] is False and report.evidence["kv_usage_mean"] == 0.6
    assert "not sustained" in report.evidence["why_not_kv_pressure"]
    assert report.evidence["preemptions"] == 22 and report.evidence["sustained"] is True


def test_preemption_with_high_kv_is_kv_pressure_only() -> None:
    detection = _detect(_preempting(0.95))
    (report,) = detection.reports
    assert (report.kind, report.severity) == ("kv_cache_pressure", "critical"), _summary(detection)
    assert report.evidence["preemptions"] == 22 and report.evidence["preempting"] is True
    assert report.evidence["preemptions_per_s"] > 0


def test_preemption_where_kv_use_is_not_exported_says_so() -> None:
    (report,) = _detect(_preempting(None)).reports
    assert report.kind == "preemption" and report.evidence["kv_high"] is None
    assert report.evidence["why_not_kv_pressure"] == "KV-cache use is not exported"


def test_high_kv_burst_with_sustained_preemption_is_preemption() -> None:
    rows = _preempting(0.6)
    rows[5]["kv_cache_usage"] = rows[6]["kv_cache_usage"] = 0.99
    kinds = {(r.kind, r.severity) for r in _detect(rows).reports}
    assert ("preemption", "critical") in kinds and ("kv_cache_pressure", "info") in kinds, kinds


# --- SGLang idle, TGI at its token budget ------------------------------------------------------


def test_an_idle_sglang_server_is_underutilized_without_a_known_batch_limit() -> None:
    # SGLang exports neither --max-running-requests nor a default for it (derived from the pool).
    rows = [
        {
            "requests_running": float(i % 2),
            "requests_waiting": 0.0,
            "kv_cache_usage": 0.02,
            "kv_cache_capacity_tokens": 400_000.0,
            "requests_finished_total": 3.0 * i,
            "settings": {"max_total_num_tokens": 400_000, "context_len": 32768},
        }
        for i in range(12)
    ]
    detection = _detect(rows, target="sglang-a", engine="sglang", model="Qwen/Qwen2.5-7B")
    (report,) = detection.reports
    assert (report.kind, report.severity) == ("underutilization", "info"), _summary(detection)
    assert report.evidence["batch_limit"] is None and not report.evidence["batch_limit_known"]
    assert "not known" in report.evidence["batch_limit_source"]
    assert report.evidence["running_mean"] == pytest.approx(0.5, abs=0.05)


def test_an_idle_llamacpp_server_is_judged_against_its_default_slots() -> None:
    rows = [{"requests_running": 0.0, "requests_waiting": 0.0} for _ in range(12)]
    (report,) = _detect(rows, target="llama-a", engine="llamacpp", model=None).reports
    assert report.kind == "underutilization" and report.evidence["batch_limit"] == 4.0
    assert "default --parallel" in report.evidence["batch_limit_source"]


def _tgi(reserved: float, waiting: float, running: float = 12.0) -> dict[str, Any]:
    return {
        "requests_running": running,
        "requests_waiting": waiting,
        "kv_cache_capacity_tokens": 32_000.0,
        "settings": {"max_batch_total_tokens": 32_000},
        "extra": {"kv_reservation_ratio": reserved / 32_000.0},
    }


def test_tgi_with_a_queue_at_its_token_budget_is_queue_saturation() -> None:
    rows = [
        _tgi(31_000.0 - 200 * (i % 3), 20.0 + i, running=12.0 + i % 2) | _tokens(i)
        for i in range(10)
    ]
    detection = _detect(rows, target="tgi-a", engine="tgi", model=None)
    by_kind = {r.kind: r for r in detection.reports}
    # The token budget is TGI's KV budget: the reservation proxy is reported too, saying so.
    assert set(by_kind) <= {"queue_saturation", "kv_cache_pressure"}, _summary(detection)
    if "kv_cache_pressure" in by_kind:
        assert by_kind["kv_cache_pressure"].evidence["same_budget_as"].startswith("queue")
    report = by_kind["queue_saturation"]
    assert report.severity == "critical", _summary(detection)
    evidence = report.evidence
    assert evidence["limit_kind"] == "token_budget" and evidence["token_budget_tokens"] == 32_000
    assert 30_500 < evidence["batch_tokens_mean"] <= 31_000, evidence
    assert evidence["token_budget_use_mean"] > 0.95
    assert 2_000 < evidence["reserved_tokens_per_request"] < 2_700, evidence
    assert evidence["context_tokens_per_request"] == 1_500.0
    assert evidence["waiting_mean"] > evidence["running_mean"]


def _tokens(i: int) -> dict[str, float]:
    return {
        "prompt_tokens_total": 12_000.0 * i,
        "generation_tokens_total": 3_000.0 * i,
        "requests_finished_total": 10.0 * i,
    }


def test_tgi_with_budget_room_and_no_queue_is_not_saturated() -> None:
    rows = [_tgi(16_000.0, 0.0) for _ in range(10)]
    kinds = {r.kind for r in _detect(rows, target="tgi-a", engine="tgi", model=None).reports}
    assert "queue_saturation" not in kinds and "kv_cache_pressure" not in kinds, kinds
    # Room for another request of the batch's average size: requests wait for other reasons.
    rows = [_tgi(24_000.0, 5.0) for _ in range(10)]
    reports = _detect(rows, target="tgi-a", engine="tgi", model=None).reports
    assert not any(r.evidence.get("limit_kind") == "token_budget" for r in reports), reports


# --- latency breaches with and without a queue -------------------------------------------------

QUEUE_BOUNDS = (0.3, 0.5, 0.8, 1.0, 2.0, 5.0)


def _queue_histogram(count: float, at_bucket: int) -> Histogram:
    cumulative = tuple(0.0 if i < at_bucket else count for i in range(len(QUEUE_BOUNDS) + 1))
    return Histogram(QUEUE_BOUNDS, cumulative, sum=None, count=count)


def test_an_itl_breach_with_an_empty_queue_says_so() -> None:
    rows = [_row(i, itl_seconds=itl_histogram(500.0 * i, at_bucket=5)) for i in range(8)]
    (report,) = _detect(rows, _target(slo={"itl_p95_ms": 60})).reports
    assert report.kind == "itl_slo_breach" and report.evidence["queue_empty"] is True
    assert report.evidence["cause"] == "not_queueing" and report.evidence["waiting_mean"] == 0
    assert "with an empty queue" in report.summary


def test_a_ttft_breach_caused_by_queueing_says_so() -> None:
    rows = [
        _row(
            i,
            requests_waiting=30.0,
            ttft_seconds=itl_histogram(50.0 * i, at_bucket=6),  # ≈ 200 ms
            queue_seconds=_queue_histogram(50.0 * i, at_bucket=0),  # ≤ 300 ms
        )
        for i in range(8)
    ]
    reports = _detect(rows, _target(slo={"ttft_p95_ms": 100})).reports
    (ttft,) = [r for r in reports if r.kind == "ttft_slo_breach"]
    assert ttft.evidence["cause"] == "queueing" and ttft.evidence["queue_empty"] is False
    assert ttft.evidence["share_of_time_with_queue"] == 1.0 and ttft.evidence["queue_p95_ms"]


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "offsets", "why"),
    [
        ([_row(0)], [0.0], "thin data: 1 successful samples"),
        ([_row(0), _row(1)], [0.0, 5.0], "thin data: 2 successful samples"),
        ([_row(i) for i in range(4)], [0.0, 1.0, 2.0, 3.0], "over 3 s"),
        ([_row(i) for i in range(4)], [0.0, 0.0, 0.0, 0.0], "over 0 s"),
    ],
)
def test_too_little_data_is_not_judged_and_says_why(
    rows: list[dict[str, Any]], offsets: list[float], why: str
) -> None:
    detection = _detect(rows, offsets_s=offsets)
    assert detection.reports == []
    (reason,) = detection.not_judged["vllm-a"]
    assert why in reason and "only target_down is judged" in reason, reason


def test_a_short_observation_says_it_can_show_bursts_only() -> None:
    times = cycles(3, 5.0, MINUTES_5, 1)
    detection = _detect(_kv_rows(times, lambda t: True), offsets_s=times, samples_per_run=3)
    assert [r.severity for r in detection.reports] == ["info"]
    assert "only 15 s of the window observed" in detection.not_judged["vllm-a"][0]


@pytest.mark.parametrize(
    "gauges",
    [
        {"requests_running": None, "requests_waiting": None, "kv_cache_usage": None},
        {"requests_running": math.nan, "requests_waiting": math.nan, "kv_cache_usage": math.nan},
        {"requests_running": math.inf, "requests_waiting": -1.0, "kv_cache_usage": math.nan},
    ],
)
def test_missing_or_nan_gauges_never_crash_a_rule(gauges: dict[str, Any]) -> None:
    rows = [
        _row(i, **gauges, preemptions_total=None, settings={"max_num_seqs": "lots"})
        for i in range(8)
    ]
    slo = _target(slo={"ttft_p95_ms": 100, "itl_p95_ms": 50}, config={"max_num_seqs": 0})
    detection = _detect(rows, slo)
    for report in detection.reports:
        assert 0 <= report.score <= 1, report
    assert "vllm-a" in detection.not_judged


def test_a_window_of_only_failed_scrapes_is_down_and_nothing_else() -> None:
    detection = _detect([{"down": "connection refused"}] * 5)
    assert [r.kind for r in detection.reports] == ["target_down"]
    assert "thin data: 0 successful samples" in detection.not_judged["vllm-a"][0]


# --- advice ------------------------------------------------------------------------------------


def test_the_recommender_gives_no_advice_on_a_burst() -> None:
    rules = pytest.importorskip("perf_pipelines.recommendations.rules")
    times = cycles(8, 5.0, MINUTES_5, 1)
    rows = _kv_rows(times, lambda t: 10.0 <= t <= 20.0)
    target = _target(hardware={"gpu": "H100"}, config={"gpu_memory_utilization": 0.8})
    data = frame(rows, offsets_s=times, samples_per_run=8)
    stats = window_stats(data, {"vllm-a": target}, *window_bounds(data))
    reports = detect(stats, {"vllm-a": target}).reports
    assert [r.severity for r in reports] == ["info"]
    assert rules.recommend(stats, reports, {"vllm-a": target}) == []


def test_the_gap_cap_is_documented_with_its_value() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "detection.md").read_text(encoding="utf-8")
    assert f"`GAP_CAP_FACTOR` = {GAP_CAP_FACTOR}" in doc


def test_the_settings_reach_detection_through_the_analysis_resource(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from perf_pipelines.dagster_defs.resources import AnalysisResource
    from perf_pipelines.definitions import build_resources
    from perf_pipelines.settings import SettingsError, load_settings

    monkeypatch.setenv("DETECTION_SUSTAINED_SHARE", "0.7")
    monkeypatch.setenv("DETECTION_MIN_SUSTAINED_S", "45")
    analysis = build_resources(load_settings())["analysis"]
    assert isinstance(analysis, AnalysisResource)
    config = analysis.detection_config()
    assert (config.sustained_share, config.min_sustained_s) == (0.7, 45.0)
    assert AnalysisResource().detection_config() == DEFAULT_CONFIG
    monkeypatch.setenv("DETECTION_SUSTAINED_SHARE", "1.5")
    with pytest.raises((SettingsError, ValueError), match=r"DETECTION_SUSTAINED_SHARE|sustained"):
        load_settings()
