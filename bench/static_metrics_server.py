"""A loopback server answering every path with one exposition file (for collector benchmarks).

Run as a separate process so that its CPU does not count against the collector's.
Usage: python bench/static_metrics_server.py FILE PORT
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn


def make_app(body: bytes):  # type: ignore[no-untyped-def]
    headers = [
        (b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


if __name__ == "__main__":
    exposition = Path(sys.argv[1]).read_bytes()
    uvicorn.run(
        make_app(exposition),
        host="127.0.0.1",
        port=int(sys.argv[2]),
        log_level="warning",
        access_log=False,
        backlog=4096,
    )
