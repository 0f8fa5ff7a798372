"""The fleet on loopback: `GET /<server>/metrics` per server and a JSON control API.

A bare ASGI app rather than FastAPI: a 1,000-server benchmark scrapes it hundreds of times a
second, and routing two path shapes by hand costs far less than a framework's per-request work.

Control API (loopback only, JSON):
- `GET /control/servers` — every server with settings, workload and state
- `GET /control/servers/<name>` — one server
- `PUT /control/servers/<name>/settings` — `{"max_num_seqs": 384, ...}`: restart with new flags
- `PUT /control/servers/<name>/workload` — `{"rate_rps": 5, ...}`: change the traffic
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from perf_lab.simulator.fleet import Fleet, Unavailable, UnknownServerError
from perf_lab.simulator.settings import SettingsError
from perf_pipelines.serving import serve_in_thread

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
SERVICE = "perf-lab fleet simulator"
_MAX_BODY = 64 * 1024
_TEXT = b"text/plain; version=0.0.4; charset=utf-8"


class FleetApp:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        status, content_type, body = await self._route(scope, receive)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _route(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        method, parts = scope["method"], [p for p in scope["path"].split("/") if p]
        try:
            if method == "GET" and len(parts) == 2 and parts[1] == "metrics":
                return 200, _TEXT, self.fleet.exposition(parts[0]).encode()
            if parts[:2] == ["control", "servers"]:
                return await self._control(method, parts[2:], receive)
            if method == "GET" and not parts:
                names = sorted(self.fleet.servers)
                return _json(
                    200,
                    {
                        # Who answers: scripts/demo.sh checks that the port it scrapes is the
                        # simulator it started, not another program on the same port.
                        "service": SERVICE,
                        "pid": os.getpid(),
                        "servers": len(names),
                        "metrics": [f"/{n}/metrics" for n in names[:50]],
                    },
                )
            return _json(404, {"error": "not found"})
        except UnknownServerError as exc:
            return _json(404, {"error": f"unknown server {exc.args[0]!r}"})
        except Unavailable as exc:
            return 503, b"text/plain; charset=utf-8", f"503 Service Unavailable: {exc}\n".encode()
        except SettingsError as exc:
            return _json(422, {"error": str(exc)})

    async def _control(
        self, method: str, rest: list[str], receive: Receive
    ) -> tuple[int, bytes, bytes]:
        if method == "GET" and not rest:
            return _json(200, [s.describe() for s in self.fleet.servers.values()])
        if method == "GET" and len(rest) == 1:
            return _json(200, self.fleet.server(rest[0]).describe())
        if method == "PUT" and len(rest) == 2 and rest[1] in ("settings", "workload"):
            body = await _read_json(receive)
            if not isinstance(body, dict):
                return _json(422, {"error": "expected a JSON object"})
            if rest[1] == "settings":
                return _json(200, self.fleet.apply_settings(rest[0], body))
            return _json(200, self.fleet.set_workload(rest[0], body))
        return _json(405 if rest else 404, {"error": "unsupported control request"})


async def _read_json(receive: Receive) -> Any:
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _MAX_BODY:
            raise SettingsError("request body too large")
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    try:
        return json.loads(b"".join(chunks) or b"null")
    except ValueError:
        raise SettingsError("body is not valid JSON") from None


def _json(status: int, payload: Any) -> tuple[int, bytes, bytes]:
    return status, b"application/json", json.dumps(payload, default=str).encode()


def make_server(fleet: Fleet, host: str = "127.0.0.1", port: int = 9400) -> uvicorn.Server:
    config = uvicorn.Config(
        FleetApp(fleet),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        backlog=4096,
        lifespan="off",
        timeout_keep_alive=30,
    )
    return uvicorn.Server(config)


@contextmanager
def run_fleet_in_thread(fleet: Fleet, port: int = 0) -> Iterator[str]:
    """Serve `fleet` on loopback in a background thread; yields the base URL."""
    with serve_in_thread(make_server(fleet, port=port).config, "simulated fleet") as url:
        yield url
