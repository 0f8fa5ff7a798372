"""The collector against real HTTP servers on loopback, good and misbehaving."""

import asyncio
import gzip
import os
import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest

from perf_pipelines.collection.collector import ScrapeLimits, ScrapeResult, collect
from perf_pipelines.targets import Target
from tests.reliability.support import TEXT, Responder, serve_lazily
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


# -- content codings: inflated by the collector, in bounded steps ------------------------------


def _deflate(data: bytes, wbits: int) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return compressor.compress(data) + compressor.flush()


def _encoded(body: bytes, encoding: str, seen: list[str]) -> Responder:
    def respond(handler: Any) -> None:
        seen.append(handler.headers.get("Accept-Encoding", ""))
        handler.send_response(200)
        handler.send_header("Content-Type", TEXT)
        handler.send_header("Content-Encoding", encoding)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return respond


def _scrape_encoded(body: bytes, encoding: str, limits: ScrapeLimits = LIMITS) -> ScrapeResult:
    seen: list[str] = []
    with serve_lazily({"/metrics": _encoded(body, encoding, seen)}) as server:
        (results,) = asyncio.run(collect([_target("t", server.base_url + "/metrics")], limits))
    assert seen == ["gzip, deflate"]  # only what the collector inflates itself
    return results[0]


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("identity", lambda b: b),
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", lambda b: _deflate(b, zlib.MAX_WBITS)),  # zlib-wrapped, as RFC 9110 says
        ("deflate", lambda b: _deflate(b, -zlib.MAX_WBITS)),  # raw, as some servers send
        ("gzip, gzip", lambda b: gzip.compress(gzip.compress(b))),
        ("deflate, gzip", lambda b: gzip.compress(_deflate(b, zlib.MAX_WBITS))),
    ],
    ids=["identity", "gzip", "x-gzip", "deflate-zlib", "deflate-raw", "gzip-gzip", "deflate-gzip"],
)
def test_compressed_bodies_are_inflated(encoding: str, encode: Callable[[bytes], bytes]) -> None:
    result = _scrape_encoded(encode(VLLM_BODY), encoding)
    assert result.up, result.error
    assert result.snapshots[0].requests_running == 7
    assert result.body_bytes == len(VLLM_BODY)


def test_a_body_inflated_in_many_steps_is_whole() -> None:
    # 3 MiB of distinct series, in gzip: dozens of 64 KiB inflate steps over many received chunks.
    body = VLLM_BODY + b"".join(
        b'vllm:num_requests_waiting{engine="%d",model_name="other"} %d\n' % (i, i)
        for i in range(50_000)
    )
    limits = ScrapeLimits(timeout_s=10, max_bytes=16 * 1024 * 1024, max_series=100_000)
    result = _scrape_encoded(gzip.compress(body), "gzip", limits)
    assert result.up, result.error
    assert result.body_bytes == len(body)
    waiting = {s.model: s.requests_waiting for s in result.snapshots}
    assert waiting["other"] == sum(range(50_000))


@pytest.mark.parametrize(
    ("body", "encoding", "reason"),
    [
        (gzip.compress(VLLM_BODY)[:-20], "gzip", "compressed body ends early (gzip; truncated?)"),
        (b"\x1f\x8b\x08\x00garbage-garbage", "gzip", "compressed body is corrupt (gzip: "),
        (VLLM_BODY, "gzip, gzip, gzip", "3 content codings stacked; at most 2"),
        (VLLM_BODY, "br", "unsupported Content-Encoding 'br'"),
        (VLLM_BODY, "zstd", "unsupported Content-Encoding 'zstd'"),
        (
            gzip.compress(os.urandom(700 * 1024).hex().encode()),
            "gzip",
            "compressed body inflates past the 1048576-byte cap",
        ),
    ],
    ids=["truncated", "corrupt", "three-layers", "brotli", "zstd", "past-the-cap"],
)
def test_bad_compressed_bodies_are_down_with_a_reason(
    body: bytes, encoding: str, reason: str
) -> None:
    result = _scrape_encoded(body, encoding)
    assert not result.up
    assert (result.error or "").startswith(reason), result.error
