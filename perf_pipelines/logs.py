"""Structured JSON logging: one object per line, with the agent's identity and no secrets.

Secrets are removed at the formatter, the last point every record passes, so that a token
that slips into a message or an exception text (e.g. an httpx error quoting a header) is
never written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {
    "message",
    "asctime",
    "taskName",
}

# Bearer tokens, userinfo in URLs (also with an empty user name, as in redis://:pw@host),
# key=value secrets, and the credentials of an Authorization header of any scheme (Basic).
_SECRET_PATTERNS = (
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1***"),
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/\s:@]*:[^/\s@]+@"), r"\1***@"),
    (
        re.compile(
            r"(?i)((?:token|password|passwd|secret|api[_-]?key)[\"']?\s*[=:]\s*[\"']?)[^\s\"',&]+"
        ),
        r"\1***",
    ),
    (
        re.compile(
            r"(?i)(authorization[\"']?\s*[=:]\s*[\"']?"
            r"(?:(?:basic|bearer|digest|negotiate|token)\s+)?)[^\s\"',}]+"
        ),
        r"\1***",
    ),
)


class SecretRedactor:
    """Replaces known secret values and secret-looking substrings with a marker."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        self._secrets = [s for s in (secrets or []) if s and len(s) >= 4]

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 4 and secret not in self._secrets:
            self._secrets.append(secret)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        for pattern, replacement in _SECRET_PATTERNS:
            text = pattern.sub(replacement, text)
        return text


REDACT = SecretRedactor()


def redact_and_clip(
    text: str,
    limit: int,
    *redactors: Callable[[str], str],
    first_line: bool = False,
    ellipsis: str = "",
) -> str:
    """`text` with its secrets replaced, then cut to `limit` characters: in that order.

    Every message that is shortened goes through here. Cut first, a secret split by the cut
    escapes both ways of finding it: the piece left no longer equals the known token, and a URL
    cut before its `@` no longer looks like userinfo. `redactors` (e.g. a client's own token)
    run before the process-wide REDACT; `first_line` keeps the first line of the redacted text
    (a secret split over two lines is matched whole first); `ellipsis` marks a cut.
    """
    chain: list[Callable[[str], str]] = [*redactors, REDACT]
    for redactor in chain:
        text = redactor(text)
    if first_line:
        lines = text.strip().splitlines()
        text = lines[0] if lines else ""
    return text if len(text) <= limit else text[:limit] + ellipsis


class JsonFormatter(logging.Formatter):
    def __init__(self, agent_id: str, agent_type: str, redact: SecretRedactor = REDACT) -> None:
        super().__init__()
        self._agent_id = agent_id
        self._agent_type = agent_type
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": self._redact(record.getMessage()),
            "agent_id": self._agent_id,
            "agent_type": self._agent_type,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = (
                    value
                    if isinstance(value, int | float | bool | None)
                    else self._redact(str(value))
                )
        if record.exc_info:
            entry["exception"] = self._redact("".join(traceback.format_exception(*record.exc_info)))
        return json.dumps(entry, default=str)


def configure_logging(
    level: str = "INFO",
    agent_id: str = "performance-agent-001",
    agent_type: str = "performance",
    secrets: list[str | None] | None = None,
    stream: Any = None,
) -> None:
    """Route the root logger to one JSON line per record on stderr (idempotent)."""
    for secret in secrets or []:
        REDACT.add(secret)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(agent_id, agent_type))
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_perf_pipelines", False):
            root.removeHandler(existing)
    # A mark on our own handler, so that configuring twice replaces it; logging has no slot
    # for it and the stubs say so.
    handler._perf_pipelines = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs full request lines at INFO, and Alembic one line per plugin it sets up at
    # every migration: noise at the agent's scale, and around a CLI's one-line error.
    for noisy in ("httpx", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
