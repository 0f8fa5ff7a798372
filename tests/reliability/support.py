"""Helpers of the fault-injection tests: a loopback server whose answers are produced lazily
(100 MB without holding 100 MB, sequences of bodies, answers held at a gate), row accounting in
the real databases, and a sampler of the process's resident memory.

`tests/support/http_servers.py` serves fixed bodies; this complements it for answers that must be
generated while being sent. Every server binds 127.0.0.1 and every wait here is bounded.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, select

from perf_pipelines.storage.schema import metric_snapshots
from tests.support.http_servers import LoopbackHTTPServer, running

TEXT = "text/plain; version=0.0.4; charset=utf-8"
Responder = Callable[["_Handler"], None]

# One valid exposition line, repeated: a huge body that would parse if it were ever read whole.
_LINE = b'vllm:num_requests_running{engine="0",model_name="m"} 1\n'
_CHUNK = _LINE * (65536 // len(_LINE))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do (and chunked framing)
    server: _Server

    def log_message(self, *args: object) -> None:
        return

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        responder = self.server.routes.get(path) or self.server.routes.get("*")
        with self.server.lock:
            self.server.hits[path] = self.server.hits.get(path, 0) + 1
        if responder is None:
            self.send_error(404)
            return
        try:
            responder(self)
        except OSError:  # the client went away (e.g. the collector hit its cap): expected
            self.close_connection = True

    def send_body(self, body: bytes, content_type: str = TEXT) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(LoopbackHTTPServer):
    request_queue_size = 256

    def __init__(self, routes: dict[str, Responder]) -> None:
        super().__init__(_Handler)
        self.routes = routes
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        self.bytes_sent = 0


@contextmanager
def serve_lazily(routes: dict[str, Responder]) -> Iterator[_Server]:
    """Serve `routes` (path → responder; "*" matches any other path) on a free loopback port."""
    with running(_Server(routes)) as server:
        yield server


def static(body: bytes, content_type: str = TEXT) -> Responder:
    def respond(handler: _Handler) -> None:
        handler.send_body(body, content_type)

    return respond


def huge(total_bytes: int, *, declare_length: bool) -> Responder:
    """A valid-looking exposition of `total_bytes`, generated while sent (never held in memory).

    With `declare_length` the size is announced in Content-Length; without it the body is
    chunked, so the only defence is counting while streaming. Stops when the client hangs up.
    """

    def respond(handler: _Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", TEXT)
        if declare_length:
            handler.send_header("Content-Length", str(total_bytes))
        else:
            handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        framed = f"{len(_CHUNK):x}\r\n".encode() + _CHUNK + b"\r\n"
        sent = 0
        while sent < total_bytes and not handler.server.stop_event.is_set():
            handler.wfile.write(_CHUNK if declare_length else framed)
            sent += len(_CHUNK)
            handler.server.bytes_sent += len(_CHUNK)
        if not declare_length:
            handler.wfile.write(b"0\r\n\r\n")
        handler.close_connection = True

    return respond


def sequence(bodies: Sequence[bytes]) -> Responder:
    """The n-th request gets bodies[n] (the last one again after the end): a server whose
    counters move between scrapes."""
    lock = threading.Lock()
    served = [0]

    def respond(handler: _Handler) -> None:
        with lock:
            index = min(served[0], len(bodies) - 1)
            served[0] += 1
        handler.send_body(bodies[index])

    return respond


def gated(body: bytes, entered: threading.Event, release: threading.Event) -> Responder:
    """Answers only once `release` is set (at most 30 s): lets a test act while a run waits."""

    def respond(handler: _Handler) -> None:
        entered.set()
        release.wait(30)
        handler.send_body(body)

    return respond


# -- databases -----------------------------------------------------------------------------


def duplicate_snapshot_keys(connection: Connection) -> list[Any]:
    """Groups of `metric_snapshots` rows sharing the unique key (must always be empty)."""
    t = metric_snapshots
    model = func.coalesce(t.c.model, "")
    return connection.execute(
        select(t.c.run_id, t.c.target, t.c.sample_index, model, func.count())
        .group_by(t.c.run_id, t.c.target, t.c.sample_index, model)
        .having(func.count() > 1)
    ).all()


def rows_by_run(connection: Connection) -> dict[str, int]:
    t = metric_snapshots
    return dict(connection.execute(select(t.c.run_id, func.count()).group_by(t.c.run_id)).all())  # type: ignore[arg-type]


def write_targets(path: Path, entries: Sequence[str]) -> Path:
    """A targets file from YAML flow mappings, one per entry."""
    path.write_text("targets:\n" + "".join(f"  - {entry}\n" for entry in entries))
    return path


# -- memory ----------------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


class PeakRss:
    """Samples this process's resident set every 2 ms while the block runs; `growth` is the
    peak minus the value on entry (a high-water mark of the block, unlike ru_maxrss, which is
    the whole process's since it started)."""

    def __init__(self) -> None:
        self.baseline = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __enter__(self) -> PeakRss:
        self.baseline = self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.baseline
