"""A test orchestrator: a real HTTP server on loopback that speaks the agent protocol.

`POST /api/v1/agents/register` adds the agent; `POST /api/v1/agents/{id}/heartbeat` answers 404
for an agent it does not know. Every request is recorded (method, path, headers, JSON body).
It can be told to misbehave: answer with a fixed status (`fail_with(500)`), hang until
released (`hang()`), forget all agents (`forget()`, like an orchestrator restart), or go away
(`stop()`: the port closes). With `token` set, requests without that bearer token get 401.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from perf_pipelines.serving import ThreadedServer, start_in_thread

REGISTER_PATH = "/api/v1/agents/register"


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def kind(self) -> str:
        return "register" if self.path == REGISTER_PATH else "heartbeat"


@dataclass
class _Behaviour:
    fail_status: int | None = None
    hang: bool = False
    padding: int = 0  # extra bytes in every answer (an oversized response)
    echo_headers: bool = False  # echo the Authorization header in errors (careless)
    released: threading.Event = field(default_factory=threading.Event)


class TestOrchestrator:
    __test__ = False  # not a pytest class

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.requests: list[Recorded] = []
        self.agents: dict[str, dict[str, Any]] = {}
        self.behaviour = _Behaviour()
        self._lock = threading.Lock()
        self._running: ThreadedServer | None = None
        self.url = ""

    # -- control -------------------------------------------------------------------------
    def fail_with(self, status: int | None, echo_headers: bool = False) -> None:
        self.behaviour.fail_status = status
        self.behaviour.echo_headers = echo_headers

    def pad_answers(self, size: int) -> None:
        self.behaviour.padding = size

    def hang(self) -> None:
        self.behaviour.released.clear()
        self.behaviour.hang = True

    def recover(self) -> None:
        self.behaviour.fail_status = None
        self.behaviour.hang = False
        self.behaviour.padding = 0
        self.behaviour.echo_headers = False
        self.behaviour.released.set()

    def forget(self) -> None:
        with self._lock:
            self.agents.clear()

    def kinds(self) -> list[str]:
        return [r.kind for r in self.requests]

    # -- ASGI ----------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        with self._lock:
            self.requests.append(Recorded(scope["method"], scope["path"], headers, body))
        status, payload = await self._answer(scope["method"], scope["path"], headers, body)
        if self.behaviour.padding and isinstance(payload, dict):
            payload = {**payload, "padding": "x" * self.behaviour.padding}
        data = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})

    async def _answer(
        self, method: str, path: str, headers: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        behaviour = self.behaviour
        if behaviour.hang:
            while not behaviour.released.is_set():
                await asyncio.sleep(0.02)
        if behaviour.fail_status is not None:
            if behaviour.echo_headers:
                return behaviour.fail_status, {
                    "error": "told to fail",
                    "you sent": headers.get("authorization"),
                }
            return behaviour.fail_status, {"error": "told to fail"}
        if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"error": "bad or missing bearer token"}
        if method != "POST" or not isinstance(body, dict):
            return 400, {"error": "expected a JSON POST"}
        if path == REGISTER_PATH:
            with self._lock:
                self.agents[str(body.get("agent_id"))] = body
            return 201, {"registered": True, "agent_id": body.get("agent_id")}
        parts = path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "agents"] and len(parts) == 5 and parts[4] == "heartbeat":
            if parts[3] not in self.agents:
                return 404, {"error": f"unknown agent {parts[3]}"}
            return 200, {"ok": True}
        return 404, {"error": "no such route"}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, port: int = 0) -> str:
        config = uvicorn.Config(
            self, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off"
        )
        self._running = start_in_thread(config, "test orchestrator")
        self.url = self._running.url
        return self.url

    @property
    def serving(self) -> bool:
        return self._running is not None

    def stop(self) -> None:
        """Go away: release hung requests, close the port (the URL stays, now refused)."""
        self.behaviour.released.set()
        if self._running is not None:
            self._running.stop()
            self._running = None


@contextmanager
def run_orchestrator(token: str | None = None) -> Iterator[TestOrchestrator]:
    orchestrator = TestOrchestrator(token=token)
    orchestrator.start()
    try:
        yield orchestrator
    finally:
        orchestrator.stop()
