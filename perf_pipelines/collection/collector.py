"""Scrape the `/metrics` of many inference servers concurrently, safely and with bounded cost.

Per target: one overall deadline that covers the request, the decompression and the parse (a
server that trickles bytes, or sends a body that is slow to inflate or to parse, cannot hold the
round), a cap on the body size (checked on the header, on the bytes received and on every
inflated layer), a cap on the compression ratio, caps on the series, models and label text of
one target, redirects followed only within the same origin, and every failure turned into a
recorded reason. One bad target never fails a round, nor delays another: bodies are inflated in
small steps that give the event loop its turn, and parsed in a worker thread.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from urllib.parse import urljoin, urlsplit

import httpx

from perf_pipelines.collection.server_settings import ServerSettings, add_llamacpp_settings
from perf_pipelines.engines import snapshots_from_text
from perf_pipelines.engines.canonical import CanonicalSnapshot, Engine
from perf_pipelines.engines.exposition import ExpositionError, ExpositionLimitError
from perf_pipelines.logs import redact_and_clip
from perf_pipelines.targets import Target

USER_AGENT = "perf_pipelines/collector"
# Ask for the classic text format first; both are parsed, this just keeps bodies smaller.
ACCEPT = (
    "text/plain;version=0.0.4;q=1.0, application/openmetrics-text;version=1.0.0;q=0.5, */*;q=0.1"
)
# Only the encodings `read_capped` inflates itself, in bounded steps. Said explicitly: httpx
# would also offer br and zstd once their packages are installed.
ACCEPT_ENCODING = "gzip, deflate"
_MAX_REDIRECTS = 3
_REJECTED_CONTENT_TYPES = ("text/html", "application/json", "application/xml", "image/")
# Inflating is done in steps of at most this much output, with the event loop's turn between
# two: a small body may inflate to the cap, but never in one long synchronous call.
_INFLATE_STEP = 64 * 1024
# Content codings applied on top of each other ("gzip, gzip" is valid HTTP): at most this many.
_MAX_CODINGS = 2
# The ratio cap applies once this much is inflated: tiny bodies have any ratio at no cost.
_RATIO_FLOOR = 1024 * 1024
# Bodies up to this size are parsed on the event loop: at most ~20 ms in the slowest path of the
# parser (every line with escapes), and a real page (2-140 KB) in ~2 ms, less than handing it to
# a thread costs (+0.35 ms of CPU per scrape, measured over 1,000 targets). Larger ones go to a
# worker thread.
_INLINE_PARSE_BYTES = 128 * 1024
# Which setting raises each cap of `ExpositionLimitError.limit`, for the stored reason.
_LIMIT_SETTINGS = {
    "series": "SCRAPE_MAX_SERIES",
    "models": "SCRAPE_MAX_MODELS",
    "label_bytes": "SCRAPE_MAX_LABEL_BYTES",
}


class ScrapeError(Exception):
    """A scrape failed for a reason worth storing (the message is that reason)."""


@dataclass(frozen=True, slots=True)
class ScrapeLimits:
    """What one target may cost (the SCRAPE_* settings; their defaults, and why, in README.md)."""

    timeout_s: float = 5.0
    concurrency: int = 64
    max_bytes: int = 16 * 1024 * 1024  # received, and inflated at every layer
    # Inflated bytes per received byte. Expositions gzip 4–18×; a bomb inflates ~1,000× a layer.
    max_ratio: float = 100.0
    max_series: int = 50_000
    max_models: int = 256
    max_label_bytes: int = 8 * 1024 * 1024


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


class _Inflater:
    """One content coding (gzip or deflate) undone in steps of at most `_INFLATE_STEP` bytes."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        # gzip: the gzip wrapper only; deflate: the zlib wrapper, or raw deflate as some servers
        # send (decided on the first bytes, as httpx does).
        self._inflate = zlib.decompressobj(zlib.MAX_WBITS | 16 if coding == "gzip" else 0)
        self._started = False

    def pieces(self, data: bytes) -> Iterator[bytes]:
        while not self._inflate.eof:
            try:
                out = self._inflate.decompress(data, _INFLATE_STEP)
            except zlib.error as exc:
                if self.coding == "deflate" and not self._started:
                    self._started = True
                    self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
                    continue
                raise ScrapeError(f"compressed body is corrupt ({self.coding}: {exc})") from None
            self._started = True
            data = self._inflate.unconsumed_tail
            if out:
                yield out
            # A full step may leave output inside zlib with no input left: ask again.
            if not data and len(out) < _INFLATE_STEP:
                return

    @property
    def finished(self) -> bool:
        return self._inflate.eof


class _BodyDecoder:
    """Undoes the response's content codings, every layer bounded: no layer may inflate past
    `max_bytes` nor past `max_ratio` times the bytes received (once `_RATIO_FLOOR` is reached),
    and output comes in pieces of at most `_INFLATE_STEP` bytes. httpx's own decoders inflate a
    whole received chunk in one call: 11 KB of gzip-in-gzip made 2.2 GiB in one go, on the
    event loop, where no deadline can interrupt it."""

    def __init__(self, content_encoding: str, max_bytes: int, max_ratio: float) -> None:
        codings = [c.strip().lower() for c in content_encoding.split(",")]
        codings = ["gzip" if c == "x-gzip" else c for c in codings if c and c != "identity"]
        for coding in codings:
            if coding not in ("gzip", "deflate"):
                raise ScrapeError(f"unsupported Content-Encoding {coding!r}")
        if len(codings) > _MAX_CODINGS:
            raise ScrapeError(f"{len(codings)} content codings stacked; at most {_MAX_CODINGS}")
        # Codings are listed in the order they were applied: undo the last one first.
        self._layers = [_Inflater(coding) for coding in reversed(codings)]
        self._inflated = [0] * len(self._layers)
        self.max_bytes = max_bytes
        self.max_ratio = max_ratio
        self.received = 0

    @property
    def identity(self) -> bool:
        return not self._layers

    def pieces(self, raw: bytes) -> Iterator[bytes]:
        """The decoded pieces of the next received chunk."""
        self.received += len(raw)
        pieces: Iterable[bytes] = (raw,)
        for index in range(len(self._layers)):
            pieces = self._through(index, pieces)
        return iter(pieces)

    def _through(self, index: int, pieces: Iterable[bytes]) -> Iterator[bytes]:
        layer = self._layers[index]
        for piece in pieces:
            for out in layer.pieces(piece):
                inflated = self._inflated[index] = self._inflated[index] + len(out)
                if inflated > self.max_bytes:
                    raise ScrapeError(
                        f"compressed body inflates past the {self.max_bytes}-byte cap"
                    )
                if inflated > _RATIO_FLOOR and inflated > self.max_ratio * self.received:
                    raise ScrapeError(
                        f"compressed body exceeds the compression ratio cap of "
                        f"{self.max_ratio:g}:1 ({inflated} bytes from {self.received})"
                    )
                yield out

    def finish(self) -> None:
        for layer in self._layers:
            if not layer.finished:
                raise ScrapeError(f"compressed body ends early ({layer.coding}; truncated?)")


async def read_capped(response: httpx.Response, max_bytes: int, max_ratio: float = 100.0) -> bytes:
    """The streamed body, decoded, refused (ScrapeError) as soon as it is known to exceed
    `max_bytes` (received or inflated, at any layer) or to inflate more than `max_ratio` times
    what was received. Content codings are undone here, not by httpx (see `_BodyDecoder`)."""
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ScrapeError(f"body of {int(declared)} bytes exceeds the {max_bytes}-byte cap")
    decoder = _BodyDecoder(response.headers.get("content-encoding", ""), max_bytes, max_ratio)
    chunks: list[bytes] = []
    size = 0
    async for raw in response.aiter_raw():
        if decoder.identity:
            size += len(raw)
            if size > max_bytes:
                raise ScrapeError(f"body exceeds the {max_bytes}-byte cap")
            chunks.append(raw)
            continue
        if decoder.received + len(raw) > max_bytes:
            raise ScrapeError(f"body exceeds the {max_bytes}-byte cap")
        for piece in decoder.pieces(raw):
            chunks.append(piece)
            # Bounded work per step; the deadline (and every other target) gets its turn.
            await asyncio.sleep(0)
    decoder.finish()
    return b"".join(chunks)


async def fetch_metrics(
    client: httpx.AsyncClient, url: str, max_bytes: int, max_ratio: float = 100.0
) -> bytes:
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
            return await read_capped(response, max_bytes, max_ratio)
    raise ScrapeError(f"more than {_MAX_REDIRECTS} redirects")


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return f"timeout after {timeout_s:g}s"
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed: {exc or type(exc).__name__}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"protocol error: {exc}"
    if isinstance(exc, ExpositionLimitError):
        return f"refused: {exc} ({_LIMIT_SETTINGS.get(exc.limit, 'a cap')})"
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


def _parse(
    body: bytes, engine: Engine | None, limits: ScrapeLimits, deadline: float
) -> tuple[Engine, list[CanonicalSnapshot]]:
    """A body to canonical snapshots (in a worker thread: see `scrape_target`)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScrapeError(f"body is not UTF-8 (byte {exc.start})") from None
    return snapshots_from_text(
        text,
        engine,
        max_series=limits.max_series,
        max_label_bytes=limits.max_label_bytes,
        max_models=limits.max_models,
        deadline=deadline,
    )


async def scrape_target(
    client: httpx.AsyncClient,
    target: Target,
    limits: ScrapeLimits,
    parsers: Executor | None = None,
) -> ScrapeResult:
    """Scrape one target: request, decompression and parse all within `limits.timeout_s`.

    A body larger than `_INLINE_PARSE_BYTES` is parsed in `parsers` (a thread pool; None: the
    loop's default executor) so that a body that takes seconds to parse holds no other
    target's scrape. A thread cannot be stopped, so the parse is also given the deadline and
    ends itself soon after it passes.
    """
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limits.timeout_s):
            body = await fetch_metrics(client, target.url, limits.max_bytes, limits.max_ratio)
            deadline = time.monotonic() + limits.timeout_s - (time.perf_counter() - started)
            parse = partial(_parse, body, target.engine_hint, limits, deadline)
            if len(body) <= _INLINE_PARSE_BYTES:
                engine, snapshots = parse()
            else:
                loop = asyncio.get_running_loop()
                engine, snapshots = await loop.run_in_executor(parsers, parse)
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
        # One thread per scrape in flight at most: a parse never waits for another one's thread
        # (threads are started only when none is idle; a normal parse takes milliseconds).
        self.parsers = ThreadPoolExecutor(
            max_workers=limits.concurrency, thread_name_prefix="perf-parse"
        )
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
                headers={
                    "Accept": ACCEPT,
                    "Accept-Encoding": ACCEPT_ENCODING,
                    "User-Agent": USER_AGENT,
                },
                verify=self._tls,
                trust_env=False,
            )
            self._clients[target.origin] = client
        return client

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self._clients.values()))
        self._clients.clear()
        self._slots.clear()
        # Not waited for: a parse that outlived its deadline ends by itself within a slice.
        self.parsers.shutdown(wait=False, cancel_futures=True)


async def scrape_round(
    pool: ClientPool, targets: Sequence[Target], limits: ScrapeLimits
) -> list[ScrapeResult]:
    """Scrape every target once, at most `limits.concurrency` at a time, in target order."""
    semaphore = asyncio.Semaphore(limits.concurrency)

    async def bounded(target: Target) -> ScrapeResult:
        # The origin's slot first: a task waiting for a busy origin holds no global slot.
        async with pool.slots_for(target), semaphore:
            result = await scrape_target(pool.client_for(target), target, limits, pool.parsers)
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
