"""A small, defensive client for the Prometheus HTTP API (`/api/v1/...`).

Every call has one overall deadline, a cap on the response size (checked on the header and while
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
import ssl
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from perf_pipelines.collection.collector import ScrapeError, read_capped
from perf_pipelines.logs import REDACT
from perf_pipelines.settings import _check_http_url

log = logging.getLogger(__name__)

USER_AGENT = "perf_pipelines/prometheus-source"
_ERROR_LIMIT = 500


class PrometheusError(Exception):
    """A Prometheus API call failed; the message is the reason (short, no secrets)."""


@dataclass(frozen=True)
class PrometheusConfig:
    """Where Prometheus is and how to talk to it. Secrets are excluded from repr()."""

    url: str
    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = 10.0
    max_bytes: int = 16 * 1024 * 1024
    concurrency: int = 8

    def validated_url(self) -> str:
        """The base URL, checked like PROMETHEUS_URL; raises `PrometheusError` when unusable."""
        try:
            checked = _check_http_url(self.url, "PROMETHEUS_URL")
        except ValueError as exc:
            raise PrometheusError(str(exc)) from None
        if checked is None:
            raise PrometheusError("PROMETHEUS_URL is not set")
        return checked


@dataclass(frozen=True)
class ApiResult:
    data: Any
    warnings: tuple[str, ...] = ()


def _short(text: str) -> str:
    return REDACT(text)[:_ERROR_LIMIT]


class PrometheusClient:
    """`async with PrometheusClient(config) as client: await client.query(...)`."""

    def __init__(self, config: PrometheusConfig) -> None:
        self.config = config
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
        return await self._call(
            "POST", "/api/v1/query", {"query": promql, "time": _ts(at), **self._timeout()}
        )

    async def query_range(self, promql: str, start: float, end: float, step: float) -> ApiResult:
        params = {"query": promql, "start": _ts(start), "end": _ts(end), "step": f"{step:.3f}"}
        return await self._call("POST", "/api/v1/query_range", {**params, **self._timeout()})

    async def series(self, matchers: list[str], start: float, end: float) -> ApiResult:
        params: dict[str, Any] = {"match[]": matchers, "start": _ts(start), "end": _ts(end)}
        return await self._call("POST", "/api/v1/series", params)

    async def active_targets(self) -> ApiResult:
        return await self._call("GET", "/api/v1/targets", {"state": "active"})

    # -- plumbing ----------------------------------------------------------------------------

    def _timeout(self) -> dict[str, str]:
        # Prometheus then stops evaluating at the same deadline instead of working on for nobody.
        return {"timeout": f"{max(1, round(self.config.timeout_s * 1000))}ms"}

    async def _call(self, method: str, path: str, params: dict[str, Any]) -> ApiResult:
        if self._client is None:
            raise RuntimeError("use 'async with PrometheusClient(...)'")
        log.debug("prometheus %s %s", method, path)
        try:
            async with asyncio.timeout(self.config.timeout_s):
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
            raise PrometheusError(
                f"Prometheus did not answer {path} within {self.config.timeout_s:g}s "
                "(PROMETHEUS_QUERY_TIMEOUT_S)"
            ) from None
        except httpx.ConnectError as exc:
            raise PrometheusError(
                _short(f"cannot reach Prometheus at {self.config.url}: {exc or 'connect error'}")
            ) from None
        except httpx.HTTPError as exc:
            raise PrometheusError(
                _short(f"Prometheus request failed: {type(exc).__name__}: {exc}")
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
                )
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
                    "or PROMETHEUS_USERNAME/PROMETHEUS_PASSWORD"
                )
            what = "an HTML page" if "html" in content_type or body[:1] == b"<" else "no API JSON"
            kind = content_type or "no content type"
            raise PrometheusError(
                f"PROMETHEUS_URL answered {path} with HTTP {status} and {what} ({kind}): "
                "is it the Prometheus server's base URL?"
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
            raise PrometheusError(_short(f"{prefix} ({error_type}): {error}"))
        if status != 200:
            raise PrometheusError(f"Prometheus answered {path} with HTTP {status}")
        notes = [str(w) for w in payload.get("warnings") or []]
        notes += [f"info: {i}" for i in payload.get("infos") or []]
        return ApiResult(payload.get("data"), tuple(_short(n) for n in notes))


def _ts(value: float) -> str:
    return f"{value:.3f}"
