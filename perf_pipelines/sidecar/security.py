"""The orchestrator's bearer token on the routes that change data.

FastAPI's `HTTPBearer` reads the `Authorization` header (scheme case-insensitive, credentials
stripped); with `auto_error=False` it yields `None` for a missing or non-bearer header, so that
the answers stay the sidecar's own: 401 with `WWW-Authenticate: Bearer` without a bearer token,
403 with a wrong one. Nothing is checked while ORCHESTRATOR_TOKEN is unset. Being a dependency,
the check runs before the route reads the body.

`HTTPBearer` is called from `bearer_credentials` rather than used as the dependency itself:
used directly, FastAPI would declare the scheme as required on the operation in the OpenAPI
schema, which is false while ORCHESTRATOR_TOKEN is unset (schemathesis's ignored-auth check
fails on exactly that). The 401 and 403 responses document the token instead.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from perf_pipelines.sidecar.dependencies import SettingsDep

_bearer = HTTPBearer(auto_error=False)


async def bearer_credentials(request: Request) -> HTTPAuthorizationCredentials | None:
    """The `Authorization: Bearer …` credentials, or None when there are none."""
    return await _bearer(request)


async def require_orchestrator_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_credentials)],
) -> None:
    """401 without a bearer token, 403 with a wrong one (constant-time comparison)."""
    token = settings.token
    if token is None:
        return
    if credentials is None:
        raise HTTPException(
            401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    if not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
        raise HTTPException(403, "invalid token")
