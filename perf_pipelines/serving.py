"""Serving an ASGI app with uvicorn in a background thread, on loopback by default.

For the simulated fleet in tests and evaluation, and for the test doubles of the sidecar and the
orchestrator: one place that starts the server, waits until it listens, and stops it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn


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
