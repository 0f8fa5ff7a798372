"""The sidecar's request limits that the app enforces (the server enforces the head's size and
deadline: `serving.limited_config`).

- more than `max_headers` header fields: 431, before any route runs (h11 caps the head's bytes,
  not its count: 1,000 short headers fit in 16 KiB);
- a body over `max_body_bytes`: 413, from Content-Length before a byte of it is read, or as
  soon as a chunked body passes the cap;
- a body that has not arrived `body_timeout_s` after the head: 408 (the head deadline ends
  where the body starts, so a client dripping its body would otherwise hold a worker);
- any answer given before the request's body was read whole closes the connection, so the
  server does not read and discard the rest of a body it refused.

Every refusal carries `Connection: close`. A pure ASGI middleware rather than Starlette's
BaseHTTPMiddleware: it must see `receive`, and it adds no task per request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import HTTPException

from perf_pipelines.serving import HttpLimits
from perf_pipelines.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_CLOSE = (b"connection", b"close")


def http_limits(settings: Settings) -> HttpLimits:
    """The server's part of the limits, from SIDECAR_* settings."""
    return HttpLimits(
        max_header_bytes=settings.sidecar_max_header_bytes,
        header_timeout_s=settings.sidecar_header_timeout_s,
        keep_alive_s=settings.sidecar_keep_alive_s,
    )


class RequestLimits:
    def __init__(
        self, app: ASGIApp, *, max_headers: int, max_body_bytes: int, body_timeout_s: float
    ) -> None:
        self.app = app
        self.max_headers = max_headers
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if len(headers) > self.max_headers:
            await _refuse(send, 431, f"more than {self.max_headers} request headers")
            return
        declared = _header(headers, b"content-length")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _refuse(send, 413, "request body too large")
            return
        body = _Body(
            receive,
            expected=declared not in (b"", b"0") or bool(_header(headers, b"transfer-encoding")),
            max_bytes=self.max_body_bytes,
            timeout_s=self.body_timeout_s,
        )

        async def send_closing_if_unread(message: Message) -> None:
            if message["type"] == "http.response.start" and not body.complete:
                present = [(k.lower(), v.lower()) for k, v in message.get("headers", [])]
                if _CLOSE not in present:
                    message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
            await send(message)

        await self.app(scope, body.receive, send_closing_if_unread)


class _Body:
    """`receive` with the body's cap and deadline; knows whether the body was read whole."""

    def __init__(self, receive: Receive, *, expected: bool, max_bytes: int, timeout_s: float):
        self._receive = receive
        self.complete = not expected
        self._max_bytes = max_bytes
        self._received = 0
        self._deadline = asyncio.get_running_loop().time() + timeout_s

    async def receive(self) -> Message:
        if self.complete:  # after the body: e.g. Starlette waiting for a disconnect
            return await self._receive()
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            raise HTTPException(
                408, "request body not received in time", headers={"Connection": "close"}
            ) from None
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._max_bytes:
                raise HTTPException(413, "request body too large", headers={"Connection": "close"})
            self.complete = not message.get("more_body", False)
        return message


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    return next((value.strip() for key, value in headers if key == name), b"")


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                _CLOSE,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
