"""Real HTTP servers on loopback for tests: each path has a behaviour, good or bad."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar


@dataclass(frozen=True)
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str | None = "text/plain; version=0.0.4; charset=utf-8"
    redirect_to: str | None = None
    # Misbehaviours
    declare_length: int | None = None  # announce more bytes than are sent (a truncated body)
    stall_after: int | None = None  # send this many bytes, then hang
    endless: bool = False  # stream garbage forever
    hang: bool = False  # accept, never answer


class _Handler(BaseHTTPRequestHandler):
    server: _LoopbackServer

    def log_message(self, *args: object) -> None:  # keep test output clean
        return

    def do_GET(self) -> None:
        route = self.server.routes.get(self.path.split("?")[0])
        self.server.hits[self.path] = self.server.hits.get(self.path, 0) + 1
        if route is None:
            self.send_error(404)
            return
        if route.hang:
            self.server.stop_event.wait(30)
            return
        self.send_response(route.status)
        if route.redirect_to:
            self.send_header("Location", route.redirect_to)
        if route.content_type:
            self.send_header("Content-Type", route.content_type)
        if route.endless:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"vllm:num_requests_running 1\n" * 2048
            framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
            try:
                while not self.server.stop_event.is_set():
                    self.wfile.write(framed)
            except OSError:
                return
            return
        length = route.declare_length if route.declare_length is not None else len(route.body)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if route.stall_after is not None:
            self.wfile.write(route.body[: route.stall_after])
            self.wfile.flush()
            self.server.stop_event.wait(30)
            return
        try:
            self.wfile.write(route.body)
        except OSError:
            return
        if route.declare_length is not None:
            self.close_connection = True


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server on a free loopback port; `stop_event` releases stalled handlers."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.stop_event = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


_Server = TypeVar("_Server", bound=LoopbackHTTPServer)


@contextmanager
def running(server: _Server) -> Iterator[_Server]:
    """Serve `server` in a thread for the duration of the block, then shut it down."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server
    finally:
        server.stop_event.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _LoopbackServer(LoopbackHTTPServer):
    def __init__(self, routes: dict[str, Route]) -> None:
        super().__init__(_Handler)
        self.routes = routes
        self.hits: dict[str, int] = {}


@contextmanager
def serve(routes: dict[str, Route]) -> Iterator[_LoopbackServer]:
    """Serve `routes` on a free loopback port for the duration of the block."""
    with running(_LoopbackServer(routes)) as server:
        yield server


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    time.sleep(0.01)
    return port
