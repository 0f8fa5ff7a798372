"""The sidecar's request log: one line per request, never headers or query strings."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

# The logger the request lines have always had, so that log filters keep matching them.
log = logging.getLogger("perf_pipelines.sidecar.app")

# Probes and scrapes: logged at DEBUG while they succeed, so that they do not flood the log.
QUIET_PATHS = frozenset({"/api/v1/health", "/api/v1/health/detailed", "/metrics"})


class RequestLog:
    """ASGI middleware: logs method, path, status and duration of each request."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            path = scope.get("path", "")
            quiet = path in QUIET_PATHS and status < 500
            log.log(
                logging.DEBUG if quiet else logging.INFO,
                "%s %s %d",
                scope.get("method"),
                path,
                status,
                extra={
                    "http_method": scope.get("method"),
                    "http_path": path,
                    "http_status": status,
                    "duration_ms": round(1000 * (time.perf_counter() - started), 2),
                    "client": (scope.get("client") or ("-",))[0],
                },
            )
