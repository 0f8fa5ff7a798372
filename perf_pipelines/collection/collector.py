"""Scrape the `/metrics` of many inference servers concurrently, safely and with bounded cost.

Per target: one overall deadline (a server that trickles bytes cannot hold the round), a cap on
the body size (checked on the header and while streaming), redirects followed only within the
same origin, and every failure turned into a recorded reason. One bad target never fails a round.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urljoin, urlsplit

import httpx

from perf_pipelines.collection.server_settings import ServerSettings, add_llamacpp_settings
from perf_pipelines.engines import snapshots_from_text
from perf_pipelines.engines.canonical import CanonicalSnapshot, Engine
from perf_pipelines.engines.exposition import ExpositionError
from perf_pipelines.logs import redact_and_clip
from perf_pipelines.targets import Target

USER_AGENT = "perf_pipelines/collector"
# Ask for the classic text format first; both are parsed, this just keeps bodies smaller.
ACCEPT = (
    "text/plain;version=0.0.4;q=1.0, application/openmetrics-text;version=1.0.0;q=0.5, */*;q=0.1"
)
_MAX_REDIRECTS = 3
_REJECTED_CONTENT_TYPES = ("text/html", "application/json", "application/xml", "image/")


class ScrapeError(Exception):
    """A scrape failed for a reason worth storing (the message is that reason)."""


@dataclass(frozen=True, slots=True)
class ScrapeLimits:
    timeout_s: float = 5.0
    concurrency: int = 64
    max_bytes: int = 16 * 1024 * 1024
    max_series: int = 200_000


@dataclass(slots=True)
class ScrapeResult:
    """The outcome of scraping one target once."""

    target: Target
    collected_at: datetime
    up: bool
    scrape_ms: float
    error: str | None = None
    engine: Engine | None = None
    body_bytes: int | None = None
    snapshots: list[CanonicalSnapshot] = field(default_factory=list)


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


async def read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    """The streamed body, refused (ScrapeError) as soon as it is known to exceed `max_bytes`."""
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ScrapeError(f"body of {int(declared)} bytes exceeds the {max_bytes}-byte cap")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise ScrapeError(f"body exceeds the {max_bytes}-byte cap")
        chunks.append(chunk)
    return b"".join(chunks)


async def fetch_metrics(client: httpx.AsyncClient, url: str, max_bytes: int) -> bytes:
    """GET the exposition body, following same-origin redirects only."""
    current = url
    for _ in range(_MAX_REDIRECTS + 1):
        async with client.stream("GET", current) as response:
            if response.is_redirect:
                location = response.headers.get("location", "")
                following = urljoin(current, location)
                if not _same_origin(url, following):
                    raise ScrapeError(
                        f"redirect to another origin refused ({response.status_code})"
                    )
                current = following
                continue
            if response.status_code != 200:
                raise ScrapeError(f"HTTP {response.status_code} {response.reason_phrase}".strip())
            content_type = response.headers.get("content-type", "").lower()
            if content_type.startswith(_REJECTED_CONTENT_TYPES):
                raise ScrapeError(
                    f"unexpected content type {content_type.split(';')[0]!r}, not a metrics page"
                )
            return await read_capped(response, max_bytes)
    raise ScrapeError(f"more than {_MAX_REDIRECTS} redirects")


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return f"timeout after {timeout_s:g}s"
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed: {exc or type(exc).__name__}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"protocol error: {exc}"
    if isinstance(exc, ExpositionError):
        return f"invalid exposition: {exc}"
    if isinstance(exc, ScrapeError):
        return str(exc)
    if isinstance(exc, httpx.HTTPError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _error_text(exc: BaseException, timeout_s: float) -> str:
    # Error texts are stored and shown in the UI: keep them short and free of secrets.
    return redact_and_clip(_describe(exc, timeout_s), 500)


async def scrape_target(
    client: httpx.AsyncClient, target: Target, limits: ScrapeLimits
) -> ScrapeResult:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limits.timeout_s):
            body = await fetch_metrics(client, target.url, limits.max_bytes)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ScrapeError(f"body is not UTF-8 (byte {exc.start})") from None
        engine, snapshots = snapshots_from_text(
            text, target.engine_hint, max_series=limits.max_series
        )
    except Exception as exc:  # every failure becomes a stored reason, never a failed round
        return ScrapeResult(
            target=target,
            collected_at=datetime.now(UTC),
            up=False,
            scrape_ms=(time.perf_counter() - started) * 1000,
            error=_error_text(exc, limits.timeout_s),
            engine=target.engine_hint,
        )
    for snapshot in snapshots:
        if snapshot.model is None:
            snapshot.model = target.model
    return ScrapeResult(
        target=target,
        collected_at=datetime.now(UTC),
        up=True,
        scrape_ms=(time.perf_counter() - started) * 1000,
        engine=engine,
        body_bytes=len(body),
        snapshots=snapshots,
    )


# httpcore scans every pooled connection on each request event, so one shared pool of N
# connections costs O(N) per request; small per-origin pools keep that constant.
_CONNECTIONS_PER_ORIGIN = 8


class ClientPool:
    """One small httpx client per origin (scheme, host, port), sharing one TLS context, and as
    many requests in flight per origin as its client has connections."""

    def __init__(self, limits: ScrapeLimits) -> None:
        self._limits = limits
        self._clients: dict[tuple[str, str, int], httpx.AsyncClient] = {}
        self._slots: dict[tuple[str, str, int], asyncio.Semaphore] = {}
        # Building a TLS context loads the CA bundle (milliseconds): do it once, not per origin.
        self._tls = ssl.create_default_context()
        # llama.cpp's /props, read once per target URL while the pool lives (one run).
        self.llamacpp_settings: dict[str, ServerSettings] = {}

    def _connections(self) -> int:
        return min(self._limits.concurrency, _CONNECTIONS_PER_ORIGIN)

    def slots_for(self, target: Target) -> asyncio.Semaphore:
        """Held while a request to the target's origin is in flight. Requests beyond the pool's
        connections would wait inside httpcore, which rescans every waiting request on each
        event (12 % of the collector's CPU with 1,000 targets behind one address); waiting here
        is free, and a target's timeout no longer counts time spent behind other targets."""
        slots = self._slots.get(target.origin)
        if slots is None:
            slots = self._slots[target.origin] = asyncio.Semaphore(self._connections())
        return slots

    def client_for(self, target: Target) -> httpx.AsyncClient:
        client = self._clients.get(target.origin)
        if client is None:
            connections = self._connections()
            client = httpx.AsyncClient(
                follow_redirects=False,
                timeout=httpx.Timeout(self._limits.timeout_s),
                limits=httpx.Limits(
                    max_connections=connections, max_keepalive_connections=connections
                ),
                headers={"Accept": ACCEPT, "User-Agent": USER_AGENT},
                verify=self._tls,
                trust_env=False,
            )
            self._clients[target.origin] = client
        return client

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self._clients.values()))
        self._clients.clear()
        self._slots.clear()


async def scrape_round(
    pool: ClientPool, targets: Sequence[Target], limits: ScrapeLimits
) -> list[ScrapeResult]:
    """Scrape every target once, at most `limits.concurrency` at a time, in target order."""
    semaphore = asyncio.Semaphore(limits.concurrency)

    async def bounded(target: Target) -> ScrapeResult:
        # The origin's slot first: a task waiting for a busy origin holds no global slot.
        async with pool.slots_for(target), semaphore:
            result = await scrape_target(pool.client_for(target), target, limits)
            if result.up and result.engine is Engine.LLAMACPP:
                # Its slots and their context are not in /metrics: /props says them.
                await add_llamacpp_settings(
                    pool.client_for(target),
                    target.url,
                    result.snapshots,
                    limits.timeout_s,
                    pool.llamacpp_settings,
                )
            return result

    return list(await asyncio.gather(*(bounded(t) for t in targets)))


async def collect(
    targets: Sequence[Target], limits: ScrapeLimits, samples: int = 1, interval_s: float = 0.0
) -> list[list[ScrapeResult]]:
    """Take `samples` rounds, `interval_s` apart (start to start), so rates exist within a run."""
    rounds: list[list[ScrapeResult]] = []
    pool = ClientPool(limits)
    try:
        for index in range(samples):
            started = time.monotonic()
            rounds.append(await scrape_round(pool, targets, limits))
            if index + 1 < samples:
                await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))
    finally:
        await pool.aclose()
    return rounds
