"""The collector against real HTTP servers on loopback, good and misbehaving."""

import asyncio
import time

import pytest

from perf_pipelines.collection.collector import ScrapeLimits, collect
from perf_pipelines.targets import Target
from tests.support.http_servers import Route, closed_port, serve

VLLM_BODY = b"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.61
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 4.0
"""
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
LIMITS = ScrapeLimits(timeout_s=1.0, concurrency=8, max_bytes=1024 * 1024)


def _target(name: str, url: str, engine: str = "vllm") -> Target:
    return Target(name=name, url=url, engine=engine)  # type: ignore[arg-type]


def _scrape_one(route: Route, limits: ScrapeLimits = LIMITS, path: str = "/metrics"):
    with serve({path: route, "/metrics": route}) as server:
        (results,) = asyncio.run(collect([_target("t", server.base_url + path)], limits))
    return results[0]


def test_good_target_yields_canonical_values() -> None:
    result = _scrape_one(Route(body=VLLM_BODY))
    assert result.up and result.error is None
    assert result.engine is not None and result.engine.value == "vllm"
    (snapshot,) = result.snapshots
    assert snapshot.model == MODEL
    assert snapshot.requests_running == 7
    assert snapshot.requests_waiting == 2
    assert snapshot.kv_cache_usage == pytest.approx(0.61)
    assert snapshot.preemptions_total == 4
    assert snapshot.ttft_seconds is None  # not exported here: None, never 0
    assert result.body_bytes == len(VLLM_BODY)
    assert result.scrape_ms > 0


def test_auto_detects_the_engine() -> None:
    with serve({"/metrics": Route(body=VLLM_BODY)}) as server:
        (results,) = asyncio.run(
            collect([_target("t", server.base_url + "/metrics", engine="auto")], LIMITS)
        )
    assert results[0].up and results[0].engine is not None
    assert results[0].engine.value == "vllm"


@pytest.mark.parametrize(
    ("route", "reason"),
    [
        (
            Route(body=b"<html><body>502 Bad Gateway</body></html>", content_type="text/html"),
            "content type 'text/html'",
        ),
        (Route(body=b"<!DOCTYPE html><html><body>Login</body></html>"), "invalid exposition"),
        (Route(body=b'{"error": "nope"}', content_type="application/json"), "content type"),
        (Route(body=b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe garbage"), "not UTF-8"),
        (Route(body=VLLM_BODY[:-30]), "invalid exposition"),
        (Route(body=VLLM_BODY, declare_length=len(VLLM_BODY) + 500), "protocol error"),
        (Route(body=b"", status=503), "HTTP 503"),
        (Route(body=b"x" * (2 * 1024 * 1024)), "cap"),
        (Route(endless=True), "cap"),
        (
            Route(
                body=b"",
            ),
            "invalid exposition",
        ),
    ],
    ids=[
        "html-error-page",
        "html-as-text-plain",
        "json",
        "binary",
        "truncated-mid-line",
        "short-body",
        "http-503",
        "oversized",
        "endless",
        "empty",
    ],
)
def test_bad_payloads_are_down_with_a_reason(route: Route, reason: str) -> None:
    result = _scrape_one(route)
    assert not result.up
    assert result.snapshots == []
    assert result.error is not None and reason in result.error


def test_fifty_megabyte_body_is_refused_at_the_cap_quickly() -> None:
    body = (b'vllm:num_requests_running{engine="0",model_name="m"} 1\n') * 1_000_000
    assert len(body) > 50_000_000
    started = time.perf_counter()
    result = _scrape_one(Route(body=body), ScrapeLimits(timeout_s=10, max_bytes=16 * 1024 * 1024))
    assert not result.up and "cap" in (result.error or "")
    assert time.perf_counter() - started < 10


def test_server_that_never_answers_times_out() -> None:
    result = _scrape_one(Route(hang=True), ScrapeLimits(timeout_s=0.5))
    assert not result.up and result.error == "timeout after 0.5s"


def test_server_that_stalls_mid_body_times_out() -> None:
    result = _scrape_one(Route(body=VLLM_BODY, stall_after=100), ScrapeLimits(timeout_s=0.5))
    assert not result.up and result.error == "timeout after 0.5s"


def test_unreachable_target_is_down() -> None:
    url = f"http://127.0.0.1:{closed_port()}/metrics"
    (results,) = asyncio.run(collect([_target("gone", url)], LIMITS))
    assert not results[0].up
    assert (results[0].error or "").startswith("connection failed")


def test_same_origin_redirect_is_followed() -> None:
    with serve(
        {"/old": Route(status=301, redirect_to="/metrics"), "/metrics": Route(body=VLLM_BODY)}
    ) as server:
        (results,) = asyncio.run(collect([_target("t", server.base_url + "/old")], LIMITS))
    assert results[0].up


def test_redirect_to_another_host_is_refused() -> None:
    with serve(
        {"/metrics": Route(status=302, redirect_to="http://169.254.169.254/latest")}
    ) as server:
        (results,) = asyncio.run(collect([_target("t", server.base_url + "/metrics")], LIMITS))
    assert not results[0].up
    assert "redirect to another origin refused" in (results[0].error or "")


def test_one_bad_target_does_not_spoil_the_round() -> None:
    routes = {
        "/good": Route(body=VLLM_BODY),
        "/hang": Route(hang=True),
        "/html": Route(body=b"<html>"),
    }
    with serve(routes) as server:
        targets = [_target(p.strip("/"), server.base_url + p) for p in routes]
        targets.append(_target("refused", f"http://127.0.0.1:{closed_port()}/metrics"))
        started = time.perf_counter()
        (results,) = asyncio.run(collect(targets, ScrapeLimits(timeout_s=0.5)))
        elapsed = time.perf_counter() - started
    assert [r.target.name for r in results] == ["good", "hang", "html", "refused"]
    assert [r.up for r in results] == [True, False, False, False]
    # the hanging target costs one timeout, not the round's sum of waits
    assert elapsed < 3


def test_several_samples_are_taken_at_the_interval() -> None:
    with serve({"/metrics": Route(body=VLLM_BODY)}) as server:
        started = time.perf_counter()
        rounds = asyncio.run(
            collect([_target("t", server.base_url + "/metrics")], LIMITS, samples=3, interval_s=0.2)
        )
        elapsed = time.perf_counter() - started
        assert server.hits["/metrics"] == 3
    assert len(rounds) == 3
    assert all(r[0].up for r in rounds)
    assert rounds[0][0].collected_at < rounds[1][0].collected_at < rounds[2][0].collected_at
    assert elapsed >= 0.4
