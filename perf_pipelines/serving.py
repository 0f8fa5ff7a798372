"""Serving an ASGI app with uvicorn: in a background thread, and with request limits.

`start_in_thread`/`serve_in_thread`, for the simulated fleet in tests and evaluation and for the
test doubles of the sidecar and the orchestrator: one place that starts the server, waits until
it listens, and stops it. `limited_config`, for the sidecar: uvicorn with explicit limits on
what a client may send and how slowly.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True)
class HttpLimits:
    """What the server itself enforces before a request reaches the app."""

    max_header_bytes: int = 16 * 1024  # request line and headers together
    header_timeout_s: float = 10.0  # from connection (or the previous response) to a whole head
    keep_alive_s: int = 5  # an idle kept-alive connection is closed after this (seconds)


class HeadDeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on the request head, and 431 for an oversized one.

    uvicorn has no timeout while a request head arrives: a client sending one byte a second
    (slowloris) held a connection for ever. The deadline runs from the connection (or the end of
    the previous response) until the head is complete; then it is cancelled, the body has the
    app's own deadline. h11 refuses a head over its buffer cap; uvicorn answers every refusal
    400, this says 431 when the cap was the reason.
    """

    header_timeout_s = HttpLimits.header_timeout_s  # set per server by `limited_config`

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a new request's head was read whole
            self._stop_head_timer()

    def on_response_complete(self) -> None:
        # Armed before the base class looks for a pipelined request (which stops it again).
        self._await_head()
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        cap = self.config.h11_max_incomplete_event_size
        if cap is not None and len(self.conn.trailing_data[0]) > cap:
            self._refuse(b"431 Request Header Fields Too Large", b"request head too large")
        else:
            super().send_400_response(msg)

    def _await_head(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_overdue)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.conn.trailing_data[0]:  # part of a head arrived: say why the door closes
            self._refuse(b"408 Request Timeout", b"request head not received in time")
        else:  # nothing since the connection (or the last response): just close it
            self.transport.close()

    def _refuse(self, status_line: bytes, message: bytes) -> None:
        # Written raw: h11's state may not allow a response (no request head was parsed).
        self.transport.write(
            b"HTTP/1.1 " + status_line + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(message), message)
        )
        self.transport.close()


def limited_config(
    app: Any, host: str, port: int, limits: HttpLimits, **options: Any
) -> uvicorn.Config:
    """A uvicorn Config with `limits`: the h11 implementation, deliberately (httptools, the
    default when installed, has no cap on the request head: a 16 MiB header was read whole and
    answered 200), its head-size cap, the head deadline and the keep-alive timeout."""
    protocol = type(
        "SidecarH11Protocol",
        (HeadDeadlineH11Protocol,),
        {"header_timeout_s": limits.header_timeout_s},
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_keep_alive=limits.keep_alive_s,
        **options,
    )


@dataclass
class ThreadedServer:
    server: uvicorn.Server
    thread: threading.Thread
    url: str  # http://127.0.0.1:PORT with the port actually bound

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=timeout_s)


def start_in_thread(config: uvicorn.Config, name: str = "server") -> ThreadedServer:
    """Start `config`'s server in a daemon thread and wait (≤ 10 s) until it listens."""
    server = uvicorn.Server(config)
    # Read by uvicorn releases that install handlers from Config; not in the type stubs.
    server.config.install_signal_handlers = False  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return ThreadedServer(server, thread, f"http://{config.host}:{port}")


@contextmanager
def serve_in_thread(config: uvicorn.Config, name: str = "server") -> Iterator[str]:
    """`start_in_thread` as a context manager; yields the base URL and stops on exit."""
    running = start_in_thread(config, name)
    try:
        yield running.url
    finally:
        running.stop()
