"""The targets file (`PERF_TARGETS`, YAML): which inference servers the agent watches.

Validation is strict and happens before any scrape: unknown keys, duplicate names, non-http(s)
URLs and URLs with credentials are rejected with a message that names the entry and the field.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from perf_pipelines.engines.canonical import Engine

MAX_TARGETS = 100_000
# libyaml's loader is ~10× faster on a 10,000-entry file; same safe subset of YAML.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class TargetsError(ValueError):
    """The targets file cannot be used; the message says where and why."""


class Hardware(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu: str = Field(min_length=1, max_length=64)
    count: int = Field(1, ge=1, le=1024)


class Slo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # .inf would pass gt=0 and then reach evidence JSON, which PostgreSQL refuses.
    ttft_p95_ms: float | None = Field(None, gt=0, allow_inf_nan=False)
    itl_p95_ms: float | None = Field(None, gt=0, allow_inf_nan=False)
    e2e_p95_ms: float | None = Field(None, gt=0, allow_inf_nan=False)


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9._-]{1,128}$")
    url: str = Field(max_length=2048)
    engine: Literal["vllm", "sglang", "tgi", "llamacpp", "auto"] = "auto"
    model: str | None = Field(None, max_length=512)
    # The engine's release ("0.10.2", "v0.5.4", "3.3.4", llama.cpp's build "b5000"): advice uses
    # the flags and values of that release; unknown, only what every covered release accepts.
    version: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9._+-]+$")
    hardware: Hardware | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    slo: Slo = Field(default_factory=Slo)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return validate_scrape_url(value)

    @property
    def engine_hint(self) -> Engine | None:
        return None if self.engine == "auto" else Engine(self.engine)

    @property
    def origin(self) -> tuple[str, str, int]:
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return parts.scheme, (parts.hostname or "").lower(), port


def validate_scrape_url(value: str) -> str:
    """Accept only http(s) URLs with a host and no embedded credentials."""
    # urlsplit silently drops tabs and newlines, so check the text itself: a CR/LF would reach
    # the request line, a NUL or space the host name.
    if any(ord(c) < 0x21 or c == "\x7f" for c in value):
        raise ValueError("URL must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as exc:
        raise ValueError(f"malformed URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"URL scheme must be http or https, got {parts.scheme or 'none'!r}")
    if not parts.hostname:
        raise ValueError("URL has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("URL must not contain credentials (user:password@)")
    if parts.fragment:
        raise ValueError("URL must not contain a fragment")
    return value


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TargetsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    targets: list[Target] = Field(max_length=MAX_TARGETS)

    @field_validator("targets")
    @classmethod
    def _unique_names(cls, targets: list[Target]) -> list[Target]:
        names = Counter(t.name for t in targets)
        duplicates = sorted(name for name, count in names.items() if count > 1)
        if duplicates:
            raise ValueError(f"duplicate target names: {', '.join(duplicates[:10])}")
        return targets


def parse_targets(data: Any, source: str = "targets") -> list[Target]:
    if data is None:
        return []
    if not isinstance(data, dict):
        raise TargetsError(f"{source}: expected a mapping with a 'targets' list at the top")
    try:
        return TargetsFile.model_validate(data).targets
    except ValidationError as exc:
        problems = []
        for error in exc.errors()[:20]:
            location = ".".join(str(part) for part in error["loc"])
            problems.append(f"{location}: {error['msg']}")
        more = exc.error_count() - len(problems)
        suffix = f" (and {more} more)" if more > 0 else ""
        raise TargetsError(f"{source}: " + "; ".join(problems) + suffix) from None


def load_targets(path: Path) -> list[Target]:
    """Read and validate a targets file; any problem raises `TargetsError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TargetsError(f"cannot read targets file {path}: {exc}") from None
    try:
        # B506 is silenced: CSafeLoader/SafeLoader, the safe subset that builds no Python objects
        # (tests/security/test_yaml_loader.py).
        data = yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506  # nosec B506
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        # ValueError: e.g. an integer beyond Python's 4,300-digit limit; RecursionError: deep
        # nesting with the pure-Python loader (libyaml stops at its own depth limit).
        raise TargetsError(f"{path}: not valid YAML: {exc}") from None
    return parse_targets(data, source=str(path))


def dump_targets(targets: list[Target]) -> str:
    payload = {
        "targets": [t.model_dump(exclude_none=True, exclude_defaults=False) for t in targets]
    }
    return yaml.safe_dump(payload, sort_keys=False)
