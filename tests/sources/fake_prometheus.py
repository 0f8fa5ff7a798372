"""A scripted stand-in for the Prometheus HTTP API, for the misbehaviours a real one rarely shows
(400 with error JSON, HTML error pages, hangs, redirects, warnings, huge answers).

Routes map a path to a `Reply` or a function of the parsed request returning one; every request
is recorded with its method, path, headers and form fields.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from perf_pipelines.engines.exposition import parse_exposition
from tests.support.http_servers import LoopbackHTTPServer, running


@dataclass
class Reply:
    body: bytes = b""
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, list[str]]


Handler = Reply | Callable[[Request], Reply]


def ok(data: Any, warnings: list[str] | None = None) -> Reply:
    payload: dict[str, Any] = {"status": "success", "data": data}
    if warnings:
        payload["warnings"] = warnings
    return Reply(json.dumps(payload).encode())


def error(status: int, error_type: str, message: str) -> Reply:
    payload = {"status": "error", "errorType": error_type, "error": message}
    return Reply(json.dumps(payload).encode(), status=status)


NO_TARGETS = ok({"activeTargets": [], "droppedTargets": []})


class _Handler(BaseHTTPRequestHandler):
    server: _FakeServer

    def log_message(self, *args: object) -> None:
        return

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        form = parse_qs(raw if method == "POST" else parts.query, keep_blank_values=True)
        request = Request(method, parts.path, dict(self.headers.items()), form)
        self.server.requests.append(request)
        handler = self.server.routes.get(parts.path)
        reply = handler(request) if callable(handler) else handler
        if reply is None:
            reply = Reply(b"404 page not found\n", 404, "text/plain; charset=utf-8")
        if reply.hang:
            self.server.stop_event.wait(30)
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        try:
            self.wfile.write(reply.body)
        except OSError:
            return

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


class _FakeServer(LoopbackHTTPServer):
    def __init__(self, routes: dict[str, Handler]) -> None:
        super().__init__(_Handler)
        self.routes = routes
        self.requests: list[Request] = []

    @property
    def url(self) -> str:
        return self.base_url


@contextmanager
def fake_prometheus(routes: dict[str, Handler]) -> Iterator[_FakeServer]:
    with running(_FakeServer(routes)) as server:
        yield server


def matrix_from_exposition(
    text: str, times: list[float], job: str = "fake", instance: str = "127.0.0.1:1"
) -> dict[str, Any]:
    """The query_range answer Prometheus would give for a target that exposed `text` at every
    one of `times` (each time is also the scrape's timestamp)."""
    series = []
    for family in parse_exposition(text).values():
        for sample in family.samples:
            metric = {**sample.labels, "__name__": sample.name, "job": job, "instance": instance}
            values = [[t, _prom_float(sample.value)] for t in times]
            series.append({"metric": metric, "values": values})
    target = {"job": job, "instance": instance}
    series.append({"metric": {"__name__": "up", **target}, "values": [[t, "1"] for t in times]})
    series.append(
        {
            "metric": {"perf_pipelines_series": "scrape_timestamp", **target},
            "values": [[t, repr(t)] for t in times],
        }
    )
    return {"resultType": "matrix", "result": series}


def _prom_float(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
