"""What a misbehaving Prometheus (or something else at PROMETHEUS_URL) turns into: targets whose
state is unknown, with the reason (no row: Prometheus failing says nothing about the server),
warnings, never an exception; credentials never in logs or errors."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from pathlib import Path

import pytest

from perf_pipelines.sources.promapi import PrometheusConfig
from perf_pipelines.sources.prometheus import read_recent, rows_from_reads
from perf_pipelines.targets import Target
from tests.sources.fake_prometheus import (
    NO_TARGETS,
    Reply,
    Request,
    error,
    fake_prometheus,
    matrix_from_exposition,
    ok,
)
from tests.support.http_servers import closed_port

FIXTURES = Path(__file__).parents[1] / "fixtures" / "expositions"
VLLM_TEXT = (FIXTURES / "vllm_v1_0_33.txt").read_text()
TARGET = Target(name="vllm-a", url="http://vllm-a.internal:8000/metrics", engine="vllm")
ACTIVE = ok(
    {
        "activeTargets": [
            {
                "scrapeUrl": TARGET.url,
                "labels": {"job": "fake", "instance": "vllm-a.internal:8000"},
                "scrapeInterval": "1s",
                "health": "up",
                "lastError": "",
            }
        ]
    }
)


def _read(url: str, samples: int = 1, **config: object):
    settings = {"timeout_s": 2.0, **config}
    (read,) = asyncio.run(read_recent(PrometheusConfig(url, **settings), [TARGET], samples, 1.0))
    return read


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (
            error(400, "bad_data", 'invalid parameter "query": 1:5: parse error'),
            'Prometheus rejected the query (bad_data): invalid parameter "query": 1:5: parse error',
        ),
        (
            error(422, "execution", "query processing would load too many samples into memory"),
            "Prometheus could not execute the query (execution): query processing would load",
        ),
        (
            error(503, "timeout", "query timed out in expression evaluation"),
            "Prometheus is unavailable or timed out (timeout): query timed out",
        ),
        (
            Reply(b"<html><body>502 Bad Gateway</body></html>", 502, "text/html"),
            "PROMETHEUS_URL answered /api/v1/query_range with HTTP 502 and an HTML page",
        ),
        (
            Reply(b"<!doctype html><title>Grafana</title>", 200, "text/html; charset=utf-8"),
            "with HTTP 200 and an HTML page (text/html)",
        ),
        (Reply(b"upstream says no", 500, "text/plain"), "HTTP 500 and no API JSON (text/plain)"),
        (Reply(b'{"status": "success", "da', 200), "HTTP 200 and no API JSON"),
        (
            Reply(b"", 302, "text/plain", headers={"Location": "http://elsewhere:9090/"}),
            "redirect (HTTP 302 to http://elsewhere:9090/)",
        ),
        (Reply(b"unauthorized\n", 401, "text/plain"), "refused the credentials (HTTP 401)"),
        (ok({"resultType": "vector", "result": []}), "without a matrix"),
    ],
)
def test_bad_answers_leave_the_target_unknown_with_the_reason(reply: Reply, reason: str) -> None:
    with fake_prometheus({"/api/v1/targets": ACTIVE, "/api/v1/query_range": reply}) as fake:
        read = _read(fake.url)
    assert not read.results and read.failed is not None
    assert read.unknown is not None and reason in read.unknown, read.unknown
    assert rows_from_reads("r", [read]) == []  # unknown is not down: nothing to store


def test_a_hanging_prometheus_times_out() -> None:
    with fake_prometheus(
        {"/api/v1/targets": ACTIVE, "/api/v1/query_range": Reply(hang=True)}
    ) as fake:
        started = time.monotonic()
        read = _read(fake.url, timeout_s=0.5)
    assert time.monotonic() - started < 3
    assert read.unknown and "did not answer /api/v1/query_range within 0.5s" in read.unknown


def test_an_oversized_answer_is_refused() -> None:
    now = time.time()
    big = ok(matrix_from_exposition(VLLM_TEXT, [now]))
    with fake_prometheus({"/api/v1/targets": ACTIVE, "/api/v1/query_range": big}) as fake:
        read = _read(fake.url, max_bytes=4096)
    assert read.unknown and "exceeds the 4096-byte cap" in read.unknown


def test_unreachable_or_invalid_urls() -> None:
    closed = _read(f"http://127.0.0.1:{closed_port()}")
    assert closed.unknown and closed.unknown.startswith(
        "cannot reach Prometheus at http://127.0.0.1:"
    )
    assert closed.failed is not None and closed.failed.source_wide
    for url in ("ftp://prometheus:9090", "http://user:pw@prometheus:9090", ""):
        read = _read(url)
        assert not read.results and read.unknown and "PROMETHEUS_URL" in read.unknown


def test_warnings_are_kept_and_the_data_used() -> None:
    now = time.time()
    answer = ok(
        matrix_from_exposition(VLLM_TEXT, [now - 1, now], instance="vllm-a.internal:8000"),
        warnings=["partial response: store 10.0.0.7:10901 unavailable"],
    )
    with fake_prometheus({"/api/v1/targets": ACTIVE, "/api/v1/query_range": answer}) as fake:
        read = _read(fake.url, samples=2)
    assert [r.up for r in read.results] == [True, True]
    assert read.warnings == ["partial response: store 10.0.0.7:10901 unavailable"]


def test_fewer_samples_than_asked_is_a_warning() -> None:
    answer = ok(matrix_from_exposition(VLLM_TEXT, [time.time()]))
    with fake_prometheus({"/api/v1/targets": ACTIVE, "/api/v1/query_range": answer}) as fake:
        read = _read(fake.url, samples=3)
    assert len(read.results) == 1 and read.latest.up
    assert read.warnings == ["partial data: 1 of 3 samples in Prometheus over the last 2s"]


def test_the_query_selects_the_target_by_its_scrape_config() -> None:
    answer = ok(matrix_from_exposition(VLLM_TEXT, [time.time()]))
    with fake_prometheus({"/api/v1/targets": ACTIVE, "/api/v1/query_range": answer}) as fake:
        _read(fake.url)
    query = next(r for r in fake.requests if r.path == "/api/v1/query_range")
    assert query.method == "POST"
    promql = query.form["query"][0]
    assert 'job="fake",instance="vllm-a.internal:8000"' in promql
    assert "vllm:kv_cache_usage_perc" in promql and "sglang:num_running_reqs" in promql
    assert query.form["timeout"] == ["2000ms"]


def test_without_the_targets_api_the_instance_is_matched() -> None:
    not_found = Reply(b"404 page not found\n", 404, "text/plain")
    answer = ok(matrix_from_exposition(VLLM_TEXT, [time.time()], instance="vllm-a.internal:8000"))
    with fake_prometheus({"/api/v1/targets": not_found, "/api/v1/query_range": answer}) as fake:
        read = _read(fake.url)
    assert read.latest.up
    query = next(r for r in fake.requests if r.path == "/api/v1/query_range")
    assert 'instance="vllm-a.internal:8000"' in query.form["query"][0]
    assert "job=" not in query.form["query"][0]


def _echo_credentials(request: Request) -> Reply:
    # A server that quotes the credentials back in its error: they must still not be stored.
    header = request.headers.get("Authorization", "")
    return error(401, "unauthorized", f"invalid credentials: {header}")


@pytest.mark.parametrize("scheme", ["bearer", "basic"])
def test_credentials_are_sent_but_never_logged_or_stored(
    scheme: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = f"s3cr3t-{scheme}-value-123"
    config = {"token": secret} if scheme == "bearer" else {"username": "agent", "password": secret}
    routes = {"/api/v1/targets": NO_TARGETS, "/api/v1/query_range": _echo_credentials}
    with caplog.at_level(logging.DEBUG), fake_prometheus(routes) as fake:
        read = _read(fake.url, **config)
    sent = {r.headers.get("Authorization") for r in fake.requests}
    if scheme == "bearer":
        assert sent == {f"Bearer {secret}"}
    else:
        encoded = base64.b64encode(f"agent:{secret}".encode()).decode()
        assert sent == {f"Basic {encoded}"}
    error_text = read.unknown or ""
    assert "Prometheus refused the credentials (unauthorized)" in error_text
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for text in (error_text, logged, repr(PrometheusConfig(fake.url, **config))):
        assert secret not in text
        if scheme == "basic":
            assert encoded not in text
