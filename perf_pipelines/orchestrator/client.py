"""A small, defensive HTTP client for the orchestrator: it never raises for network trouble.

Every call returns an `Attempt` (success, status code, latency, error text). Requests carry
`Authorization: Bearer <token>` when a token is set; the token is redacted from every error text
this module produces, so it cannot reach logs, events or the sensor cursor. Redirects are not
followed (a redirect could send the bearer token to another host), responses are read up to a
cap, and the whole exchange has one deadline.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from perf_pipelines import __version__
from perf_pipelines.logs import SecretRedactor, redact_and_clip

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024
_ERROR_SNIPPET = 200
_ERROR_MAX = 500


@dataclass(frozen=True, slots=True)
class Attempt:
    """One request to the orchestrator and what came of it."""

    kind: str  # register | heartbeat
    path: str
    started_at: datetime
    success: bool
    status_code: int | None
    latency_ms: float
    error: str | None = None
    response: Any = None  # the parsed JSON answer of a successful call, when there was one

    @property
    def unknown_agent(self) -> bool:
        """The orchestrator does not know this agent (HTTP 404): register again."""
        return self.status_code == 404


class _TooLarge(Exception):
    pass


class _Overdue(Exception):
    pass


class OrchestratorClient:
    """POSTs JSON to `base_url` + path. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        self._max_bytes = max_response_bytes
        self._redact = SecretRedactor([token] if token else [])
        headers = {
            "Accept": "application/json",
            "User-Agent": f"perf_pipelines/{__version__}",
        }
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
            # No proxy or .netrc from the environment: the token goes to ORCHESTRATOR_URL only.
            trust_env=False,
            transport=transport,
        )

    def __enter__(self) -> OrchestratorClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def redact(self, text: str) -> str:
        return redact_and_clip(text, _ERROR_MAX, self._redact)

    def post_json(self, kind: str, path: str, payload: dict[str, Any]) -> Attempt:
        started_at = datetime.now(UTC)
        started = time.perf_counter()
        # httpx's timeout bounds each phase; this bounds the whole exchange (a trickling answer).
        deadline = started + 2 * self._timeout_s
        status_code: int | None = None
        body = b""
        error: str | None = None
        try:
            with self._client.stream("POST", path, json=payload) as response:
                status_code = response.status_code
                body = self._read_capped(response, deadline)
        except httpx.TimeoutException:
            error = f"timeout after {self._timeout_s:g}s"
        except _Overdue:
            error = f"timeout: answer not complete after {2 * self._timeout_s:g}s"
        except httpx.ConnectError as exc:
            error = f"connection failed: {exc or type(exc).__name__}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except _TooLarge:
            # The status line already arrived; the body is only informative.
            pass
        latency_ms = (time.perf_counter() - started) * 1000
        success = error is None and status_code is not None and 200 <= status_code < 300
        if error is None and not success:
            error = self._describe_status(status_code, body)
        return Attempt(
            kind=kind,
            path=path,
            started_at=started_at,
            success=success,
            status_code=status_code,
            latency_ms=round(latency_ms, 2),
            error=None if error is None else self.redact(error),
            response=_parse_json(body) if success else None,
        )

    def _read_capped(self, response: httpx.Response, deadline: float) -> bytes:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self._max_bytes:
                raise _TooLarge
            if time.perf_counter() > deadline:
                raise _Overdue
            chunks.append(chunk)
        return b"".join(chunks)

    def _describe_status(self, status_code: int | None, body: bytes) -> str:
        if status_code is None:
            return "no answer"
        if 300 <= status_code < 400:
            return f"HTTP {status_code}: redirect not followed"
        try:
            reason = httpx.codes.get_reason_phrase(status_code)
        except ValueError:
            reason = ""
        text = f"HTTP {status_code} {reason}".strip()
        if status_code == 404:
            text += ": unknown agent or wrong endpoint"
        elif status_code in (401, 403):
            text += ": check ORCHESTRATOR_TOKEN"
        # The whole body (at most max_response_bytes) is redacted before the snippet is cut from
        # it: a token the orchestrator echoes across the cut would otherwise keep its first part.
        snippet = redact_and_clip(
            body.decode("utf-8", "replace").strip(), _ERROR_SNIPPET, self._redact
        )
        return f"{text} ({snippet})" if snippet else text


def _parse_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None
