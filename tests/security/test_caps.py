"""Caps on what a peer can make the agent hold: request bodies, scrape bodies, series, labels.

Already covered elsewhere, not repeated here:
- scrape body size: tests/collection/test_collector.py (50 MB refused at the cap) and
  tests/reliability/test_body_limits.py (100 MB streamed, endless, declared; memory bounded);
- orchestrator answers: tests/orchestrator/test_client.py (an oversized answer is not read
  beyond the cap);
- Prometheus answers: tests/sources/test_errors.py;
- the parser's series and label caps for any input: tests/fuzz/test_exposition_fuzz.py.

Added here: the sidecar's request-body cap (it used to read the whole body before checking its
size), the body never read without a valid token, the list limit, and the series and label
caps as the collector applies them to a real scrape.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from perf_pipelines.collection.collector import ScrapeLimits, collect
from perf_pipelines.sidecar.app import create_app
from perf_pipelines.sidecar.routes.recommendations import MAX_BODY_BYTES
from perf_pipelines.storage.db import create_db_engine, ensure_schema
from perf_pipelines.targets import Target
from tests.sidecar.support import make_settings
from tests.support.http_servers import Route, serve

TOKEN = "caps-test-token-0123456789"
PATH = "/api/v1/recommendations/rec-1/status"


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    engine = create_db_engine(f"sqlite:///{tmp_path_factory.mktemp('caps') / 'perf.db'}")
    ensure_schema(engine)
    yield engine
    engine.dispose()


class Asgi:
    """Calls an ASGI app directly and counts how much of the request body it pulled."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def post(self, headers: dict[str, str], chunk: bytes, chunks: int | None) -> tuple[int, int]:
        """(status, chunks read). `chunks=None` sends chunks forever (a never-ending upload)."""
        pulled = 0
        status = 0

        async def receive() -> dict[str, Any]:
            nonlocal pulled
            pulled += 1
            more = chunks is None or pulled < chunks
            return {"type": "http.request", "body": chunk, "more_body": more}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": PATH,
            "raw_path": PATH.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8002),
        }
        asyncio.run(asyncio.wait_for(self.app(scope, receive, send), timeout=10))
        return status, pulled


@pytest.fixture
def open_sidecar(database: Any) -> Asgi:
    return Asgi(create_app(make_settings(), database))


@pytest.fixture
def token_sidecar(database: Any) -> Asgi:
    return Asgi(create_app(make_settings(orchestrator_token=TOKEN), database))


JSON = {"content-type": "application/json"}


def test_a_declared_oversized_body_is_refused_before_any_of_it_is_read(
    open_sidecar: Asgi,
) -> None:
    headers = {**JSON, "content-length": str(1 << 30)}
    status, pulled = open_sidecar.post(headers, b"x" * 65536, chunks=None)
    assert status == 413
    assert pulled == 0


def test_a_never_ending_upload_is_cut_at_the_cap(open_sidecar: Asgi) -> None:
    chunk = b"x" * 16384
    status, pulled = open_sidecar.post(JSON, chunk, chunks=None)
    assert status == 413
    assert pulled * len(chunk) <= MAX_BODY_BYTES + len(chunk)  # stopped right past 64 KiB


def test_a_body_just_under_the_cap_is_read_and_validated(open_sidecar: Asgi) -> None:
    status, _ = open_sidecar.post(JSON, b" " * (MAX_BODY_BYTES - 1), chunks=1)
    assert status == 422  # read in full, then refused as not JSON


def test_without_a_valid_token_the_body_is_never_read(token_sidecar: Asgi) -> None:
    for headers, expected in (
        (JSON, 401),
        ({**JSON, "authorization": "Bearer wrong"}, 403),
        ({**JSON, "authorization": f"Basic {TOKEN}"}, 401),
    ):
        status, pulled = token_sidecar.post(headers, b"x" * 16384, chunks=None)
        assert (status, pulled) == (expected, 0)


def test_a_non_utf8_body_is_a_422_not_a_500(open_sidecar: Asgi) -> None:
    # Found by schemathesis: the 422 body echoed the input bytes and failed to encode them.
    status, _ = open_sidecar.post(JSON, b"\x80\xff{", chunks=1)
    assert status == 422


@pytest.mark.parametrize(
    ("query", "status"),
    [("limit=1000", 200), ("limit=1001", 422), ("limit=0", 422), ("target=" + "t" * 129, 422)],
)
def test_recommendation_list_is_capped(database: Any, query: str, status: int) -> None:
    async def get() -> int:
        transport = httpx.ASGITransport(app=create_app(make_settings(), database))
        async with httpx.AsyncClient(transport=transport, base_url="http://sidecar") as client:
            return (await client.get(f"/api/v1/recommendations?{query}")).status_code

    assert asyncio.run(get()) == status


def _scrape(body: bytes, limits: ScrapeLimits) -> Any:
    with serve({"/metrics": Route(body=body)}) as server:
        target = Target(name="t", url=server.base_url + "/metrics", engine="vllm")  # type: ignore[arg-type]
        (results,) = asyncio.run(collect([target], limits))
    return results[0]


def test_the_collector_applies_its_series_cap() -> None:
    body = "# TYPE vllm:num_requests_running gauge\n" + "".join(
        f'vllm:num_requests_running{{model_name="m",engine="{i}"}} 1\n' for i in range(1001)
    )
    result = _scrape(body.encode(), ScrapeLimits(timeout_s=5, max_series=1000))
    assert not result.up
    assert "more than 1000 series" in (result.error or "")


def test_the_collector_applies_the_label_cap() -> None:
    labels = ",".join(f'l{i}="v"' for i in range(100))
    body = (
        "# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{model_name="m",{labels}}} 1\n'
    )
    result = _scrape(body.encode(), ScrapeLimits(timeout_s=5))
    assert not result.up
    assert "101 labels exceed the cap of 64" in (result.error or "")


def test_series_of_unwanted_families_do_not_count_against_the_cap(tmp_path: Path) -> None:
    # A server with many unrelated series is not refused: only kept series count.
    body = (
        "# TYPE other_metric gauge\n"
        + "".join(f'other_metric{{i="{i}"}} 1\n' for i in range(5000))
        + '# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="m"} 3\n'
    )
    result = _scrape(body.encode(), ScrapeLimits(timeout_s=5, max_series=10))
    assert result.up and result.snapshots[0].requests_running == 3
