"""How the sidecar's errors look: their OpenAPI documentation and the app-wide handlers.

Any database failure a route does not handle itself is 503 `{"detail": "database
unavailable"}`; anything unexpected is 500 `{"detail": "internal error"}`, without a trace.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from perf_pipelines.health import describe_error

# The logger these warnings have always had, so that log filters keep matching them.
log = logging.getLogger("perf_pipelines.sidecar.app")

# What FastAPI's `responses=` takes: status code (or "default", "4XX") → OpenAPI response.
Responses = dict[int | str, dict[str, Any]]


def error_doc(description: str) -> dict[str, Any]:
    """An error response for the OpenAPI schema: `{"detail": "..."}`."""
    schema = {"type": "object", "properties": {"detail": {"type": "string"}}}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


DATABASE_DOWN: Responses = {503: error_doc("database unavailable")}


async def database_error(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("database error: %s", describe_error(exc))
    return JSONResponse({"detail": "database unavailable"}, status_code=503)


async def unexpected_error(_request: Request, _exc: Exception) -> JSONResponse:
    # Logged by the server with its traceback (secrets redacted); the client gets no trace.
    return JSONResponse({"detail": "internal error"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SQLAlchemyError, database_error)
    app.add_exception_handler(Exception, unexpected_error)
