"""A small, defensive client for the Prometheus HTTP API (`/api/v1/...`).

Every call has its own deadline (PROMETHEUS_QUERY_TIMEOUT_S) inside the client's overall one
(PROMETHEUS_CYCLE_TIMEOUT_S: a frozen Prometheus costs one cycle deadline, not one query deadline
per target), a cap on the response size (checked on the header and while
streaming), no redirects (credentials must not travel to another origin), and turns every failure
into a `PrometheusError` whose message is a short, secret-free reason fit to be stored. Response
`warnings` (and Prometheus 3's `infos`) are returned with the data, never dropped.

Queries are sent as form-encoded POSTs: the agent's selectors list every metric name an adapter
reads, which can be longer than proxies accept in a URL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import ssl
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from perf_pipelines.collection.collector import ScrapeError, read_capped
from perf_pipelines.logs import REDACT, redact_and_clip
from perf_pipelines.settings import _check_http_url

log = logging.getLogger(__name__)

USER_AGENT = "perf_pipelines/prometheus-source"
_ERROR_LIMIT = 500


class PrometheusError(Exception):
    """A Prometheus API call failed; the message is the reason (short, no secrets).

    `source_wide`: the failure is Prometheus' own (unreachable, silent, refusing the
    credentials, not an API at all, out of time), not the one query's: nothing else asked of it
    will fare better. `cycle_deadline`: it is the client's overall deadline that ran out.
    """

    def __init__(
        self, message: str, *, source_wide: bool = False, cycle_deadline: bool = False
    ) -> None:
        super().__init__(message)
        self.source_wide = source_wide or cycle_deadline
        self.cycle_deadline = cycle_deadline


@dataclass(frozen=True)
class PrometheusConfig:
    """Where Prometheus is and how to talk to it. Secrets are excluded from repr()."""

    url: str
    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = 10.0  # each API call
    max_bytes: int = 16 * 1024 * 1024
    concurrency: int = 8
    cycle_timeout_s: float = 60.0  # everything one client (one cycle) asks, together
    # Labels that name who scraped a series, not what it measures (docs/prometheus.md).
    dedup_labels: tuple[str, ...] = (
        "job",
        "replica",
        "prometheus_replica",
        "prometheus",
        "__replica__",
    )

    def validated_url(self) -> str:
        """The base URL, checked like PROMETHEUS_URL; raises `PrometheusError` when unusable."""
        try:
            checked = _check_http_url(self.url, "PROMETHEUS_URL")
        except ValueError as exc:
            raise PrometheusError(str(exc), source_wide=True) from None
        if checked is None:
            raise PrometheusError("PROMETHEUS_URL is not set", source_wide=True)
        return checked


def label_list(text: str) -> tuple[str, ...]:
    """PROMETHEUS_DEDUP_LABELS ("job, replica") as label names."""
    return tuple(label.strip() for label in text.split(",") if label.strip())


@dataclass(frozen=True)
class ApiResult:
    data: Any
    warnings: tuple[str, ...] = ()


def _short(text: str) -> str:
    return redact_and_clip(text, _ERROR_LIMIT)


class PrometheusClient:
    """`async with PrometheusClient(config) as client: await client.query(...)`.

    `deadline` (`time.monotonic()` seconds) ends every call, however many; by default
    `config.cycle_timeout_s` after entering. Each call gets the smaller of its own timeout and
    what is left.
    """

    def __init__(self, config: PrometheusConfig, deadline: float | None = None) -> None:
        self.config = config
        self.deadline = deadline
        self._client: httpx.AsyncClient | None = None
        # Known secret values are masked wherever an error text or a log line could carry them.
        REDACT.add(config.token)
        REDACT.add(config.password)
        if config.username and config.password:
            # the form a server that echoes the Authorization header would quote
            encoded = f"{config.username}:{config.password}".encode()
            REDACT.add(base64.b64encode(encoded).decode())

    async def __aenter__(self) -> PrometheusClient:
        base = self.config.validated_url()
        if self.deadline is None:
            self.deadline = time.monotonic() + self.config.cycle_timeout_s
        auth: httpx.Auth | None = None
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        elif self.config.username:
            auth = httpx.BasicAuth(self.config.username, self.config.password or "")
        connections = max(1, self.config.concurrency)
        self._client = httpx.AsyncClient(
            base_url=base,
            auth=auth,
            headers=headers,
            follow_redirects=False,
            timeout=httpx.Timeout(self.config.timeout_s),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            verify=ssl.create_default_context(),
            trust_env=False,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- endpoints ---------------------------------------------------------------------------

    async def query(self, promql: str, at: float) -> ApiResult:
        params = {"query": promql, "time": _ts(at)}
        return await self._call("POST", "/api/v1/query", params, evaluates=True)

    async def query_range(self, promql: str, start: float, end: float, step: float) -> ApiResult:
        params = {"query": promql, "start": _ts(start), "end": _ts(end), "step": f"{step:.3f}"}
        return await self._call("POST", "/api/v1/query_range", params, evaluates=True)

    async def series(self, matchers: list[str], start: float, end: float) -> ApiResult:
        params: dict[str, Any] = {"match[]": matchers, "start": _ts(start), "end": _ts(end)}
        return await self._call("POST", "/api/v1/series", params)

    async def active_targets(self) -> ApiResult:
        return await self._call("GET", "/api/v1/targets", {"state": "active"})

    # -- plumbing ----------------------------------------------------------------------------

    def _budget(self, path: str) -> tuple[float, bool]:
        """Seconds this call may take, and whether the cycle's deadline (not its own) sets it."""
        left = (self.deadline - time.monotonic()) if self.deadline is not None else math.inf
        if left <= 0:
            raise PrometheusError(self._cycle_late(path), cycle_deadline=True)
        return min(self.config.timeout_s, left), left < self.config.timeout_s

    def _cycle_late(self, path: str) -> str:
        return (
            f"Prometheus did not answer {path} within the cycle's deadline of "
            f"{self.config.cycle_timeout_s:g}s (PROMETHEUS_CYCLE_TIMEOUT_S)"
        )

    async def _call(
        self, method: str, path: str, params: dict[str, Any], *, evaluates: bool = False
    ) -> ApiResult:
        if self._client is None:
            raise RuntimeError("use 'async with PrometheusClient(...)'")
        budget, cycle_bound = self._budget(path)
        if evaluates:
            # Prometheus then stops evaluating at the same deadline instead of working on for
            # nobody.
            params = {**params, "timeout": f"{max(1, round(budget * 1000))}ms"}
        log.debug("prometheus %s %s", method, path)
        try:
            async with asyncio.timeout(budget):
                if method == "GET":
                    request = self._client.build_request("GET", path, params=params)
                else:
                    request = self._client.build_request("POST", path, data=params)
                response = await self._client.send(request, stream=True)
                try:
                    body = await self._read_capped(response)
                finally:
                    await response.aclose()
        except PrometheusError:
            raise
        except (TimeoutError, httpx.TimeoutException):
            if cycle_bound:
                raise PrometheusError(self._cycle_late(path), cycle_deadline=True) from None
            raise PrometheusError(
                f"Prometheus did not answer {path} within {self.config.timeout_s:g}s "
                "(PROMETHEUS_QUERY_TIMEOUT_S)",
                source_wide=True,
            ) from None
        except httpx.ConnectError as exc:
            raise PrometheusError(
                _short(f"cannot reach Prometheus at {self.config.url}: {exc or 'connect error'}"),
                source_wide=True,
            ) from None
        except httpx.HTTPError as exc:
            raise PrometheusError(
                _short(f"Prometheus request failed: {type(exc).__name__}: {exc}"),
                source_wide=True,
            ) from None
        return self._decode(response, body, path)

    async def _read_capped(self, response: httpx.Response) -> bytes:
        try:
            return await read_capped(response, self.config.max_bytes)
        except ScrapeError as exc:
            raise PrometheusError(f"Prometheus response: {exc}") from None

    def _decode(self, response: httpx.Response, body: bytes, path: str) -> ApiResult:
        status = response.status_code
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if response.is_redirect:
            location = response.headers.get("location", "?")
            raise PrometheusError(
                _short(
                    f"Prometheus answered {path} with a redirect (HTTP {status} to {location}); "
                    "set PROMETHEUS_URL to the final address"
                ),
                source_wide=True,
            )
        payload: Any = None
        if content_type == "application/json" or body[:1] == b"{":
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
        if not isinstance(payload, dict) or "status" not in payload:
            if status in (401, 403):
                raise PrometheusError(
                    f"Prometheus refused the credentials (HTTP {status}): check PROMETHEUS_TOKEN "
                    "or PROMETHEUS_USERNAME/PROMETHEUS_PASSWORD",
                    source_wide=True,
                )
            what = "an HTML page" if "html" in content_type or body[:1] == b"<" else "no API JSON"
            kind = content_type or "no content type"
            # A 404 is a route this server does not have (Thanos and Mimir serve no
            # /api/v1/targets); anything else means PROMETHEUS_URL is no Prometheus API at all.
            raise PrometheusError(
                f"PROMETHEUS_URL answered {path} with HTTP {status} and {what} ({kind}): "
                "is it the Prometheus server's base URL?",
                source_wide=status != 404,
            )
        if payload.get("status") != "success":
            error_type = payload.get("errorType") or "error"
            error = str(payload.get("error") or "no error message")
            prefix = {
                400: "Prometheus rejected the query",
                401: "Prometheus refused the credentials",
                403: "Prometheus refused the credentials",
                422: "Prometheus could not execute the query",
                503: "Prometheus is unavailable or timed out",
            }.get(status, f"Prometheus answered HTTP {status}")
            # A query Prometheus refused or gave up on is that query's problem; refused
            # credentials or an unavailable server are everybody's.
            source_wide = status in (401, 403) or (status == 503 and error_type == "unavailable")
            raise PrometheusError(
                _short(f"{prefix} ({error_type}): {error}"), source_wide=source_wide
            )
        if status != 200:
            raise PrometheusError(f"Prometheus answered {path} with HTTP {status}")
        notes = [str(w) for w in payload.get("warnings") or []]
        notes += [f"info: {i}" for i in payload.get("infos") or []]
        return ApiResult(payload.get("data"), tuple(_short(n) for n in notes))


def _ts(value: float) -> str:
    return f"{value:.3f}"
