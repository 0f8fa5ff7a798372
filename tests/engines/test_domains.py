"""Every canonical value is checked against its metric's domain (engines.canonical.DOMAINS): a
value that cannot be a reading is None, with the reason in `rejected`; the rest are kept."""

import time

import pytest

from perf_pipelines.engines import CLOCK_SKEW_S, snapshots_from_text
from perf_pipelines.engines.canonical import CANONICAL_VALUE_FIELDS, DOMAINS, Engine

L = '{engine="0",model_name="m"}'


def _vllm(*lines: str) -> str:
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("family", "kind", "value", "field", "reason"),
    [
        ("vllm:num_requests_running", "gauge", "-1", "requests_running", "-1 (negative)"),
        ("vllm:num_requests_waiting", "gauge", "-0.5", "requests_waiting", "-0.5 (negative)"),
        ("vllm:num_requests_waiting", "gauge", "+Inf", "requests_waiting", "inf (not finite)"),
        ("vllm:kv_cache_usage_perc", "gauge", "1.01", "kv_cache_usage", "1.01 (outside 0–1)"),
        ("vllm:kv_cache_usage_perc", "gauge", "-0.2", "kv_cache_usage", "-0.2 (negative)"),
        ("vllm:num_preemptions_total", "counter", "-3", "preemptions_total", "-3 (negative)"),
        ("vllm:prompt_tokens_total", "counter", "-Inf", "prompt_tokens_total", "-inf (not finite)"),
        (
            "vllm:generation_tokens_total",
            "counter",
            "-7",
            "generation_tokens_total",
            "-7 (negative)",
        ),
    ],
)
def test_a_value_outside_its_domain_is_none_with_the_reason(
    family: str, kind: str, value: str, field: str, reason: str
) -> None:
    body = _vllm(
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{L} 4" if family != "vllm:num_requests_running" else "",
        f"# TYPE {family} {kind}",
        f"{family}{L} {value}",
    )
    _, (snapshot,) = snapshots_from_text(body, Engine.VLLM)
    assert getattr(snapshot, field) is None
    assert snapshot.rejected == [f"{field} {reason}"]


def test_values_at_the_edges_of_their_domain_are_kept() -> None:
    body = _vllm(
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{L} 0",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f"vllm:kv_cache_usage_perc{L} 1",
        "# TYPE process_start_time_seconds gauge",
        f"process_start_time_seconds {time.time() + CLOCK_SKEW_S / 2:.0f}",
    )
    _, (snapshot,) = snapshots_from_text(body, Engine.VLLM)
    assert (snapshot.requests_running, snapshot.kv_cache_usage) == (0, 1)
    assert snapshot.process_start_time is not None  # within the clock skew allowed
    assert snapshot.rejected == []


def test_a_start_time_in_the_future_is_rejected() -> None:
    body = _vllm(
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{L} 1",
        "# TYPE process_start_time_seconds gauge",
        "process_start_time_seconds 4102444800",
    )
    _, (snapshot,) = snapshots_from_text(body, Engine.VLLM)
    assert snapshot.process_start_time is None
    assert snapshot.rejected == ["process_start_time 4102444800 (in the future)"]


@pytest.mark.parametrize(
    ("buckets", "reason"),
    [
        (("3", "2", "2"), "bucket counts not cumulative"),
        (("-1", "2", "2"), "negative count or sum"),
    ],
    ids=["not-cumulative", "negative"],
)
def test_a_histogram_outside_its_domain_is_none_with_the_reason(
    buckets: tuple[str, str, str], reason: str
) -> None:
    first, second, count = buckets
    name = "vllm:time_to_first_token_seconds"
    body = _vllm(
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{L} 1",
        f"# TYPE {name} histogram",
        f'{name}_bucket{{engine="0",le="0.1",model_name="m"}} {first}',
        f'{name}_bucket{{engine="0",le="+Inf",model_name="m"}} {second}',
        f"{name}_sum{L} 0.3",
        f"{name}_count{L} {count}",
    )
    _, (snapshot,) = snapshots_from_text(body, Engine.VLLM)
    assert snapshot.ttft_seconds is None
    assert snapshot.rejected == [f"ttft_seconds ({reason})"]


def test_negative_engine_specific_figures_are_rejected() -> None:
    body = _vllm(
        "# TYPE llamacpp:requests_processing gauge",
        "llamacpp:requests_processing 1",
        "# TYPE llamacpp:n_decode_total counter",
        "llamacpp:n_decode_total -4",
        "# TYPE llamacpp:n_tokens_max gauge",
        "llamacpp:n_tokens_max 4096",
    )
    _, (snapshot,) = snapshots_from_text(body, Engine.LLAMACPP)
    assert snapshot.extra == {"tokens_max": 4096}
    assert snapshot.rejected == ["decode_calls_total -4 (negative)"]


def test_every_canonical_value_has_a_domain() -> None:
    assert set(DOMAINS) == set(CANONICAL_VALUE_FIELDS)
