"""Outcome tracking's verdicts on small windows before and after a change (15 s samples)."""

from datetime import timedelta

import pytest

from perf_pipelines.analysis.outcomes import evaluate_outcome, fraction_at_or_below, judge
from perf_pipelines.analysis.promql import histogram_quantile
from perf_pipelines.engines.canonical import Histogram
from perf_pipelines.targets import Target
from tests.support.windows import T0, frame

TARGET = Target.model_validate(
    {
        "name": "vllm-a",
        "url": "http://127.0.0.1:8000/metrics",
        "engine": "vllm",
        "slo": {"ttft_p95_ms": 1000, "itl_p95_ms": 60},
    }
)
TTFT_BOUNDS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WINDOW, SETTLE = timedelta(minutes=2), timedelta(minutes=1)


def _ttft(fast: float, slow: float) -> Histogram:
    """`fast` requests at 0.25–0.5 s and `slow` ones at 2.5–5 s (cumulative counts)."""
    total = fast + slow
    cumulative = (0.0, fast, fast, fast, total, total, total)
    return Histogram(TTFT_BOUNDS, cumulative, sum=0.4 * fast + 3 * slow, count=total)


def _sample(i: int, preemptions: float, waiting: float, slow_share: float) -> dict:
    finished = 4.0 * i
    return {
        "requests_running": 32.0,
        "requests_waiting": waiting,
        "kv_cache_usage": 0.95 if preemptions else 0.7,
        "preemptions_total": preemptions * i,
        "requests_finished_total": finished,
        "ttft_seconds": _ttft(finished * (1 - slow_share), finished * slow_share),
    }


def _outcome(before: dict, after: dict):  # type: ignore[no-untyped-def]
    """9 samples before the change (2 min), 4 while it settles, 9 after it (2 min)."""
    samples = [_sample(i, **before) for i in range(9)]
    samples += [{"down": "restarting with new settings"}] * 4  # the restart
    samples += [_sample(i, **after) for i in range(9)]
    applied_at = T0 + timedelta(seconds=15 * 8)
    return evaluate_outcome(frame(samples), TARGET, "vllm-a", None, applied_at, WINDOW, SETTLE)


def test_fraction_below_is_the_inverse_of_histogram_quantile() -> None:
    bounds, cumulative = [0.1, 0.2, 0.5, 1.0], [10.0, 30.0, 80.0, 95.0, 100.0]
    for q in (0.05, 0.3, 0.5, 0.9):
        x = histogram_quantile(q, bounds, cumulative)
        assert x is not None
        assert fraction_at_or_below(bounds, cumulative, x) == pytest.approx(q)
    assert fraction_at_or_below(bounds, cumulative, 5.0) == pytest.approx(0.95)  # +Inf is above
    assert fraction_at_or_below(bounds, [0.0] * 5, 0.3) is None


def test_preemptions_gone_and_slo_met_is_improved() -> None:
    result = _outcome(
        {"preemptions": 0.5, "waiting": 20.0, "slow_share": 0.4},
        {"preemptions": 0.0, "waiting": 0.0, "slow_share": 0.02},
    )
    assert result.outcome == "improved"
    evidence = result.evidence
    assert evidence["verdicts"]["slo_attainment"] == "better"
    assert evidence["verdicts"]["preemptions_per_s"] == "better"
    assert evidence["before"]["slo_attainment"] < 0.7 < 0.95 < evidence["after"]["slo_attainment"]


def test_fewer_preemptions_but_slo_broken_is_a_regression() -> None:
    """The SLO decides: removing preemptions does not excuse more requests missing the SLO."""
    result = _outcome(
        {"preemptions": 0.5, "waiting": 0.0, "slow_share": 0.02},
        {"preemptions": 0.0, "waiting": 0.0, "slow_share": 0.5},
    )
    assert result.outcome == "regressed"
    assert result.evidence["verdicts"]["preemptions_per_s"] == "better"
    assert result.evidence["verdicts"]["slo_attainment"] == "worse"


def test_same_behaviour_is_no_change() -> None:
    same = {"preemptions": 0.0, "waiting": 0.0, "slow_share": 0.02}
    result = _outcome(same, same)
    assert result.outcome == "no_change"
    assert set(result.evidence["verdicts"].values()) == {"same"}


def test_latency_that_moves_within_its_slo_is_no_change() -> None:
    before = {"itl_p95_ms": 30.0, "ttft_p95_ms": 400.0}
    after = {"itl_p95_ms": 45.0, "ttft_p95_ms": 600.0}  # +50 %, still within 60 ms and 1 s
    assert judge(before, after, {"itl_p95_ms": 60, "ttft_p95_ms": 1000})[0] == "no_change"
    assert judge(before, after)[0] == "regressed"  # without an SLO every real move counts
    assert judge(before, {"itl_p95_ms": 70.0}, {"itl_p95_ms": 60})[0] == "regressed"


def test_throughput_counts_only_when_requests_waited() -> None:
    before = {"finished_per_s": 4.0, "waiting_mean": 0.0}
    # Nobody waited: half the throughput is half the load, not a regression.
    assert judge(before, {"finished_per_s": 2.0, "waiting_mean": 0.0}) == (
        "no_change",
        {"waiting_mean": "same"},
    )
    queued = {"finished_per_s": 4.0, "waiting_mean": 0.5}
    outcome, verdicts = judge(queued, {"finished_per_s": 6.0, "waiting_mean": 0.4})
    assert outcome == "improved" and verdicts["finished_per_s"] == "better"


def test_no_data_after_the_change_sets_no_outcome() -> None:
    samples = [_sample(i, 0.5, 5.0, 0.3) for i in range(9)]
    samples += [{"down": "connection refused"}] * 13
    applied_at = T0 + timedelta(seconds=15 * 8)
    result = evaluate_outcome(frame(samples), TARGET, "vllm-a", None, applied_at, WINDOW, SETTLE)
    assert result.outcome is None
    assert "after the change" in result.evidence["reason"]
