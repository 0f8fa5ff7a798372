"""Each rule on a small realistic window (15 s samples). Time-based evidence, the preemption
kind and SGLang/TGI specifics: test_sustained.py; engine × kind: test_detection_matrix.py."""

from perf_pipelines.analysis.detection import detect
from perf_pipelines.analysis.window import window_stats
from perf_pipelines.targets import Target
from tests.support.windows import frame, itl_histogram, window_bounds

URL = "http://127.0.0.1:8000/metrics"


def _target(**fields: object) -> Target:
    return Target.model_validate({"name": "vllm-a", "url": URL, "engine": "vllm", **fields})


def _detect(rows, target: Target | None = None, **frame_args):  # type: ignore[no-untyped-def]
    data = frame(rows, **frame_args)
    targets = {target.name: target} if target else {}
    stats = window_stats(data, targets, *window_bounds(data))
    return detect(stats, targets)


def _kinds(detection) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {r.kind: r.severity for r in detection.reports}


def _base(i: int, **overrides: float) -> dict[str, float]:
    values = {
        "requests_running": 40.0,
        "requests_waiting": 0.0,
        "kv_cache_usage": 0.5,
        "preemptions_total": 3.0,
        "prompt_tokens_total": 1000.0 * i,
        "generation_tokens_total": 500.0 * i,
        "requests_finished_total": 10.0 * i,
    }
    values.update(overrides)
    return values


def test_sustained_kv_pressure_with_preemption_is_critical() -> None:
    rows = [
        _base(i, kv_cache_usage=0.93 + 0.01 * (i % 3), preemptions_total=3.0 + 2 * i)
        for i in range(8)
    ]
    detection = _detect(rows)
    # One bottleneck: the preemptions are KV pressure's evidence, not a second report.
    assert _kinds(detection) == {"kv_cache_pressure": "critical"}, detection.reports
    kv = next(r for r in detection.reports if r.kind == "kv_cache_pressure")
    assert kv.evidence["share_of_time"] == 1.0 and kv.evidence["sustained"] is True
    assert kv.evidence["preemptions"] == 14 and kv.evidence["preempting"] is True
    assert 0 < kv.score <= 1 and kv.summary.startswith("KV cache at 94%"), kv.summary


def test_a_single_spike_is_not_a_bottleneck() -> None:
    rows = [_base(i, kv_cache_usage=0.99 if i == 3 else 0.5) for i in range(8)]
    rows[4]["preemptions_total"] = 4.0  # one preemption in one interval
    for later in rows[5:]:
        later["preemptions_total"] = 4.0
    assert _kinds(_detect(rows)) == {}


def test_counter_reset_is_not_read_as_negative_or_huge() -> None:
    preemptions = [100, 120, 140, 5, 25, 45, 65, 85]  # server restarted after the third sample
    rows = [
        _base(i, preemptions_total=float(p), kv_cache_usage=0.95) for i, p in enumerate(preemptions)
    ]
    detection = _detect(rows)
    report = next(r for r in detection.reports if r.kind == "kv_cache_pressure")
    assert report.evidence["preemptions"] == 20 + 20 + 5 + 20 * 4
    for row in rows:
        row["kv_cache_usage"] = 0.6  # the same preemptions without KV pressure: their own kind
    (report,) = _detect(rows).reports
    assert report.kind == "preemption" and report.evidence["preemptions"] == 125


def test_queue_at_the_batch_limit_uses_the_configured_limit() -> None:
    rows = [
        _base(i, requests_running=16.0, requests_waiting=30.0 + i, kv_cache_usage=0.1)
        for i in range(6)
    ]
    detection = _detect(rows, _target(config={"max_num_seqs": 16}))
    report = next(r for r in detection.reports if r.kind == "queue_saturation")
    assert report.evidence["batch_limit"] == 16
    assert report.evidence["limit_inferred"] is False
    assert report.severity == "critical"  # more waiting than running


def test_queue_with_headroom_below_the_limit_is_not_saturation() -> None:
    rows = [_base(i, requests_running=10.0, requests_waiting=3.0) for i in range(6)]
    assert "queue_saturation" not in _kinds(_detect(rows, _target(config={"max_num_seqs": 64})))


def test_itl_slo_breach_from_histogram_deltas() -> None:
    rows = [
        _base(i, itl_seconds=itl_histogram(500.0 * i, at_bucket=4)) for i in range(6)
    ]  # ≤ 100 ms
    detection = _detect(rows, _target(slo={"itl_p95_ms": 60}))
    report = next(r for r in detection.reports if r.kind == "itl_slo_breach")
    assert 75 < report.evidence["itl_p95_ms"] <= 100
    assert report.severity == "warning"


def test_no_slo_means_no_slo_report_and_says_so() -> None:
    rows = [_base(i, itl_seconds=itl_histogram(500.0 * i, at_bucket=6)) for i in range(6)]
    detection = _detect(rows, _target())
    assert "itl_slo_breach" not in _kinds(detection)
    assert any("no itl_p95_ms SLO" in reason for reason in detection.not_judged["vllm-a"])


def test_underutilization_with_or_without_a_known_limit_needs_an_empty_queue() -> None:
    rows = [_base(i, requests_running=2.0, kv_cache_usage=0.05) for i in range(8)]
    (known,) = _detect(rows, _target(config={"max_num_seqs": 256})).reports
    assert (known.kind, known.severity, known.evidence["batch_limit"]) == (
        "underutilization",
        "info",
        256,
    )
    # Limit unknown: judged on "≤ 2 running on average, nobody waiting, KV low", and says so.
    (unknown,) = _detect(rows).reports
    assert unknown.kind == "underutilization" and unknown.evidence["batch_limit_known"] is False
    assert "not known" in unknown.evidence["batch_limit_source"]
    for row in rows:
        row["requests_waiting"] = 1.0
    assert "underutilization" not in _kinds(_detect(rows))


def test_target_down_all_or_some() -> None:
    down = [{"down": "timeout after 5s"} for _ in range(4)]
    detection = _detect(down)
    (report,) = detection.reports
    assert (report.kind, report.severity) == ("target_down", "critical")
    assert report.evidence["errors"] == ["timeout after 5s"]
    mixed = [_base(i) for i in range(6)] + [{"down": "HTTP 503 Service Unavailable"}] * 2
    assert _kinds(_detect(mixed))["target_down"] == "warning"


def test_thin_data_gives_no_report() -> None:
    detection = _detect([_base(0, kv_cache_usage=0.99), _base(1, kv_cache_usage=0.99)])
    assert detection.reports == []
    assert "thin data" in detection.not_judged["vllm-a"][0]


def test_tgi_kv_pressure_is_judged_on_the_named_proxy() -> None:
    rows = [
        {"requests_running": 30.0, "requests_waiting": 10.0, "generation_tokens_total": 100.0 * i}
        for i in range(6)
    ]
    data = frame(rows, target="tgi-a", engine="tgi")
    data["extra"] = [{"kv_reservation_ratio": 0.97}] * len(data)
    stats = window_stats(data, {}, *window_bounds(data))
    detection = detect(stats, {})
    report = next(r for r in detection.reports if r.kind == "kv_cache_pressure")
    assert "kv_reservation_ratio" in report.evidence["source"]
    assert any("proxy" in reason for reason in detection.not_judged["tgi-a"])


def test_idle_and_saturated_are_never_reported_together() -> None:
    rows = [_base(i, requests_running=1.0, kv_cache_usage=0.99) for i in range(8)]
    kinds = _kinds(_detect(rows, _target(config={"max_num_seqs": 256})))
    assert "kv_cache_pressure" in kinds and "underutilization" not in kinds
