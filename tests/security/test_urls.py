"""URL validation and redirects: the agent fetches only http(s) URLs without credentials, and a
target cannot redirect it anywhere but to itself.

Already covered elsewhere, not repeated here:
- tests/test_targets.py::test_bad_entries_are_rejected_with_the_field (ftp://, file://,
  user:pw@, no host, bad port);
- tests/collection/test_collector.py::test_same_origin_redirect_is_followed and
  ::test_redirect_to_another_host_is_refused (a redirect to 169.254.169.254);
- tests/orchestrator/test_client.py::test_error_statuses_are_failures (302 not followed) and
  tests/sources/test_errors.py (Prometheus' redirects not followed);
- tests/test_settings.py::test_bad_value_names_the_variable (ORCHESTRATOR_URL ftp://,
  PROMETHEUS_URL with credentials).

Added here: every other scheme (property), the other credential spellings, whitespace and
control characters, and redirects to the same host on another port or scheme, to other
schemes, and in loops.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perf_pipelines.collection.collector import ScrapeError, fetch_metrics
from perf_pipelines.targets import TargetsError, parse_targets, validate_scrape_url
from tests.support.http_servers import Route, serve

BODY = b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 1\n"


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"[a-zA-Z][a-zA-Z0-9+.-]{0,12}", fullmatch=True))
def test_only_http_and_https_schemes_are_accepted(scheme: str) -> None:
    url = f"{scheme}://vllm-a:8000/metrics"
    if scheme.lower() in ("http", "https"):
        assert validate_scrape_url(url) == url
    else:
        with pytest.raises(ValueError, match="scheme"):
            validate_scrape_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://user@h/metrics",
        "http://user:@h/metrics",
        "http://:pw@h/metrics",
        "http://:@h/metrics",
        "http://a%40b:pw@h/metrics",
        "https://token@h/metrics",
    ],
)
def test_every_spelling_of_credentials_is_rejected(url: str) -> None:
    with pytest.raises(TargetsError, match="credentials"):
        parse_targets({"targets": [{"name": "a", "url": url}]})


@pytest.mark.parametrize(
    "url",
    [
        "http://h/metrics\r\nX-Injected: 1",  # urlsplit drops CR/LF silently
        "http://h/metrics\n",
        "http://h\x00.internal/metrics",
        "http://h /metrics",
        " http://h/metrics",
        "http://h/met\trics",
        "http://h/\x7fmetrics",
    ],
)
def test_whitespace_and_control_characters_are_rejected(url: str) -> None:
    with pytest.raises(TargetsError, match="control characters"):
        parse_targets({"targets": [{"name": "a", "url": url}]})


def _fetch(url: str) -> bytes:
    async def run() -> bytes:
        async with httpx.AsyncClient(follow_redirects=False, timeout=2, trust_env=False) as client:
            return await fetch_metrics(client, url, 1 << 20)

    return asyncio.run(run())


def test_redirect_to_the_same_host_on_another_port_is_refused() -> None:
    with serve({"/metrics": Route(body=BODY)}) as other:
        port = other.server_address[1]
        with (
            serve(
                {"/metrics": Route(status=302, redirect_to=f"http://127.0.0.1:{port}/metrics")}
            ) as server,
            pytest.raises(ScrapeError, match="another origin"),
        ):
            _fetch(server.base_url + "/metrics")
        assert other.hits == {}  # never contacted


@pytest.mark.parametrize(
    "location",
    [
        "https://127.0.0.1:{port}/metrics",  # same host and port, other scheme
        "file:///etc/passwd",
        "gopher://127.0.0.1:{port}/_",
        "//169.254.169.254/latest/meta-data",  # scheme-relative: another host
        "http://localhost:{port}/metrics",  # another name for the same machine is another origin
    ],
)
def test_redirect_to_another_scheme_or_origin_is_refused(location: str) -> None:
    with serve({}) as server:
        port = server.server_address[1]
        server.routes["/metrics"] = Route(status=307, redirect_to=location.format(port=port))
        with pytest.raises(ScrapeError, match="another origin"):
            _fetch(server.base_url + "/metrics")


def test_redirect_loops_stop_after_three_hops() -> None:
    routes = {
        "/metrics": Route(status=302, redirect_to="/a"),
        "/a": Route(status=302, redirect_to="/b"),
        "/b": Route(status=302, redirect_to="/c"),
        "/c": Route(status=302, redirect_to="/metrics"),
    }
    with serve(routes) as server:
        with pytest.raises(ScrapeError, match="more than 3 redirects"):
            _fetch(server.base_url + "/metrics")
        assert sum(server.hits.values()) == 4


def test_relative_redirect_within_the_origin_is_followed() -> None:
    routes = {
        "/metrics": Route(status=308, redirect_to="/v2/metrics"),
        "/v2/metrics": Route(body=BODY),
    }
    with serve(routes) as server:
        assert _fetch(server.base_url + "/metrics") == BODY
