"""A secret that straddles the point where a message is cut never survives in part.

Every message that is shortened is redacted first, then cut (`logs.redact_and_clip`). Cut
first, the piece before the cut no longer equals the known token and a URL cut before its `@`
no longer looks like userinfo, so neither way of finding a secret matches it. Each test puts a
secret across the cut of one path at every position (1 … len-1 of its characters before the
cut) and asserts that no 8-character piece of it is left.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import pytest

from perf_pipelines.collection.collector import ScrapeLimits, scrape_target
from perf_pipelines.dagster_defs.sensors import _short_error
from perf_pipelines.formatting import markdown_table
from perf_pipelines.health.checks import check_orchestrator, describe_error
from perf_pipelines.logs import REDACT, JsonFormatter, SecretRedactor, redact_and_clip
from perf_pipelines.orchestrator.client import OrchestratorClient
from perf_pipelines.orchestrator.events import OrchestratorStatus
from perf_pipelines.sidecar.metrics import FleetCollector
from perf_pipelines.storage.summary import FleetSummary
from perf_pipelines.targets import Target
from tests.support.http_servers import Route, serve

TOKEN = "Zq8xW3vK9mP2rT7yL4nB6cH1jD5fG0sA"  # 32 characters, no 8 of them common elsewhere
SPLITS = range(1, len(TOKEN))  # how many of the token's characters come before the cut


def _pieces_left(text: str, secret: str = TOKEN) -> list[str]:
    return [secret[i : i + 8] for i in range(len(secret) - 7) if secret[i : i + 8] in text]


def _assert_clean(text: str, where: str) -> None:
    left = _pieces_left(text)
    assert not left, f"{where}: pieces of the secret survived: {left} in {text!r}"


def _straddling(limit: int, split: int, secret: str = TOKEN, before: str = "") -> str:
    """Padding so that `split` characters of `secret` (after `before`) precede position `limit`."""
    pad = limit - len(before) - split
    assert pad >= 0
    return "x" * pad + before + secret + " and the rest of the message"


# --- the helper itself ----------------------------------------------------------------------


@pytest.mark.parametrize("split", SPLITS)
def test_redact_and_clip_removes_a_known_token_across_the_cut(split: int) -> None:
    text = _straddling(100, split)
    clipped = redact_and_clip(text, 100, SecretRedactor([TOKEN]))
    _assert_clean(clipped, "known token")
    assert len(clipped) == 100


@pytest.mark.parametrize("split", SPLITS)
def test_redact_and_clip_removes_url_userinfo_across_the_cut(split: int) -> None:
    text = _db_url_straddling(120, split)
    _assert_clean(redact_and_clip(text, 120), "URL password")


def test_first_line_is_taken_after_redaction() -> None:
    text = f"failed\nAuthorization: Bearer {TOKEN}"
    assert redact_and_clip(text, 300, first_line=True) == "failed"
    assert redact_and_clip(f"  {TOKEN} x\nmore", 300, SecretRedactor([TOKEN]), first_line=True) == (
        "*** x"
    )


# --- each place a message is formed and cut --------------------------------------------------


class _EchoingOrchestrator(BaseHTTPRequestHandler):
    """Answers every POST 400 with the body set by the test: an error quoting the token."""

    body: ClassVar[bytes] = b""

    def log_message(self, *args: object) -> None:
        return

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(400)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


@pytest.fixture(scope="module")
def echoing_orchestrator() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingOrchestrator)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("split", SPLITS)
def test_orchestrator_error_body_is_redacted_before_its_snippet_is_cut(
    echoing_orchestrator: str, split: int
) -> None:
    # The client quotes the first 200 characters of an error body: the token straddles them.
    _EchoingOrchestrator.body = _straddling(200, split, before="").encode()
    with OrchestratorClient(echoing_orchestrator, token=TOKEN, timeout_s=5) as client:
        attempt = client.post_json("heartbeat", "/api/v1/agents/a/heartbeat", {})
    assert attempt.status_code == 400 and attempt.error, attempt
    _assert_clean(attempt.error, "orchestrator client error")


@pytest.mark.parametrize("split", SPLITS)
def test_sensor_error_text_is_redacted_then_cut(split: int) -> None:
    # `_short_error` keeps 300 characters of "Type: message".
    exc = RuntimeError(_straddling(300 - len("RuntimeError: "), split))
    _assert_clean(_short_error(exc, SecretRedactor([TOKEN])), "sensor error")


@pytest.mark.parametrize("split", SPLITS)
def test_health_check_errors_are_redacted_then_cut(split: int) -> None:
    exc = OSError(_straddling(500 - len("OSError: "), split))
    _assert_clean(describe_error(exc, TOKEN), "describe_error")
    # The orchestrator component quotes 160 characters of the stored error of the last attempt.
    status = OrchestratorStatus(
        last_attempt_at=None,
        last_kind="heartbeat",
        last_success=False,
        last_status_code=500,
        last_error=_db_url_straddling(160, split),
        last_success_at=None,
        consecutive_failures=1,
    )
    now = datetime.now(UTC)
    component = check_orchestrator(True, replace(status, last_attempt_at=now), now, 30.0)
    _assert_clean(component.detail, "orchestrator health component")


@pytest.mark.parametrize("split", SPLITS)
def test_a_scrape_error_stored_for_a_target_is_redacted_before_its_snippet_is_cut(
    split: int,
) -> None:
    # The parser quotes 80 characters of a bad line; the collector stores that text in
    # metric_snapshots.error. A page that shows a connection URL with its password: the cut
    # used to fall before the `@`, so the password was not seen as userinfo.
    line = "!" + _db_url_straddling(79, split)  # not a metric name: quoted in the error
    body = f"vllm:num_requests_running 1\n{line}\n".encode()
    with serve({"/metrics": Route(body=body)}) as server:
        target = Target(name="t", url=f"{server.base_url}/metrics")  # type: ignore[call-arg]

        async def scrape() -> str | None:
            async with httpx.AsyncClient() as client:
                result = await scrape_target(client, target, ScrapeLimits(timeout_s=5))
            return result.error

        error = asyncio.run(scrape())
    assert error and "invalid exposition" in error, error
    _assert_clean(error, "metric_snapshots.error")


@pytest.mark.parametrize("split", [1, 8, 16, 31])
def test_dagster_metadata_table_cells_are_redacted_then_cut(split: int) -> None:
    cell = _straddling(200, split)
    REDACT.add(TOKEN)
    try:
        _assert_clean(markdown_table(["error"], [[cell]]), "markdown table cell")
    finally:
        REDACT._secrets.remove(TOKEN)


def _db_url_straddling(limit: int, split: int, before: str = "") -> str:
    """A connection URL whose password (TOKEN) has `split` characters before position `limit`."""
    text = _straddling(limit, split, before=f"{before}postgresql://agent:")
    return text.replace(" and the rest", "@db.internal:5432/perf and the rest")


@pytest.mark.parametrize("split", SPLITS)
def test_log_records_of_a_failed_metrics_read_never_carry_the_password(split: int) -> None:
    # The sidecar's /metrics logs 240 characters of the database error; the formatter redacts
    # again, but a password already cut before its `@` could not be recognised there.
    message = _db_url_straddling(240, split)

    def unreadable() -> FleetSummary:
        raise OSError(message)

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("a", "performance"))
    log = logging.getLogger("perf_pipelines.sidecar.metrics")
    log.addHandler(handler)
    try:
        families = list(FleetCollector(unreadable, "0", "a").collect())
    finally:
        log.removeHandler(handler)
    assert families, "the collector yielded nothing"
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert records, "no log record written"
    for record in records:
        _assert_clean(json.dumps(record), "log record")
