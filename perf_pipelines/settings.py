"""Configuration from environment variables (and `.env`), validated once at start-up.

Names are the contract in DESIGN.md; seed names (PORT, HOST, AGENT_ID, ...) are kept as they are.
A bad value raises `SettingsError` naming the environment variable, so a mis-configured
deployment stops at once instead of failing later in a scrape.
"""

from __future__ import annotations

import socket
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from croniter import croniter
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CAPABILITIES: tuple[str, ...] = (
    "performance_monitoring",
    "bottleneck_detection",
    "kv_cache_optimization",
    "quantization_optimization",
    "batch_size_tuning",
)


def is_wildcard_address(host: str) -> bool:
    """A bind address meaning "every interface": reachable, but no address to tell a client."""
    # Compared, never bound: the linters' wildcard-bind warnings do not apply.
    return host in ("0.0.0.0", "::", "")  # noqa: S104  # nosec B104


class SettingsError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


def _check_http_url(value: str | None, variable: str) -> str | None:
    if value is None or value == "":
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # Never echo the value: a rejected URL may carry credentials (ftp://user:pw@host).
        raise ValueError(
            f"{variable} must be an http(s) URL with a host, got scheme {parts.scheme or 'none'!r}"
        )
    if parts.username or parts.password:
        raise ValueError(f"{variable} must not carry credentials in the URL")
    return value.rstrip("/")


# Days in each month at most (29 February included): a day of month beyond them never comes.
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def check_cron(value: str) -> str:
    """A 5-field cron expression as Dagster's scheduler reads it (croniter, which Dagster vendors),
    checked here so a bad one stops the start with the variable's name, not a schedule error later.
    Besides croniter's syntax: exactly 5 fields (croniter also takes 6, with seconds; Dagster does
    not) and a day of month that exists in a chosen month (`0 0 30 2 *` would never fire)."""
    if len(value.split()) != 5 or not croniter.is_valid(value):
        raise ValueError(
            f"must be a 5-field cron expression (minute hour day month weekday), got {value!r}"
        )
    (_, _, days, months, weekdays), _ = croniter.expand(value)
    # "L" (last day of the month) and "*" always come; only plain day numbers can miss.
    if weekdays == ["*"] and all(isinstance(day, int) for day in days):
        longest = 31 if months == ["*"] else max(_MONTH_DAYS[month - 1] for month in months)
        if min(days) > longest:
            raise ValueError(f"never fires: no chosen month has day {min(days)}, got {value!r}")
    return value


class Settings(BaseSettings):
    """Every setting of the agent; field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # seed names
    port: int = Field(8002, ge=1, le=65535, description="sidecar HTTP port")
    host: str = Field("127.0.0.1", description="sidecar bind address")
    sidecar_url: str | None = Field(
        None,
        description="the sidecar's URL as the orchestrator reaches it (registration's endpoint); "
        "default http://HOST:PORT, which is wrong when the sidecar binds 0.0.0.0 or runs in "
        "another container",
    )
    # The sidecar's request limits (docs/sidecar.md, "Request limits"): what one client may send,
    # and how slowly, before it is refused; enforced by uvicorn's h11 protocol and the app.
    sidecar_max_header_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024)
    sidecar_max_headers: int = Field(100, ge=10, le=10_000)
    sidecar_max_body_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    sidecar_header_timeout_s: float = Field(10.0, gt=0, le=600)
    sidecar_body_timeout_s: float = Field(30.0, gt=0, le=600)
    sidecar_keep_alive_s: int = Field(5, ge=1, le=600)
    environment: Literal["development", "staging", "production", "test"] = "development"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    agent_id: str = Field("performance-agent-001", pattern=r"^[A-Za-z0-9._-]{1,128}$")
    agent_type: str = "performance"
    orchestrator_url: str | None = None
    orchestrator_register_endpoint: str = "/api/v1/agents/register"
    orchestrator_heartbeat_endpoint: str = "/api/v1/agents/{agent_id}/heartbeat"
    orchestrator_heartbeat_interval: float = Field(30.0, gt=0, le=3600)
    orchestrator_token: SecretStr | None = None
    database_url: str | None = None
    redis_url: str | None = None
    prometheus_port: int | None = Field(None, ge=1, le=65535)
    # added by this project
    perf_home: Path = Path("./.perf_home")
    perf_targets: Path | None = None
    prometheus_url: str | None = None
    # Prometheus as a source (docs/prometheus.md): credentials are never logged
    prometheus_token: SecretStr | None = None  # bearer token
    prometheus_username: str | None = None  # basic auth, with PROMETHEUS_PASSWORD
    prometheus_password: SecretStr | None = None
    prometheus_query_timeout_s: float = Field(10.0, gt=0, le=300)
    # everything one cycle asks Prometheus, together: a frozen Prometheus costs this, once
    prometheus_cycle_timeout_s: float = Field(60.0, gt=0, le=3600)
    # labels naming who scraped a series (jobs, HA replicas): series differing only in them
    # are one server's, read once (docs/prometheus.md)
    prometheus_dedup_labels: str = Field(
        "job,replica,prometheus_replica,prometheus,__replica__", pattern=r"^[\w, ]*$"
    )
    prometheus_backfill_minutes: float = Field(
        60.0, ge=0, le=7 * 24 * 60, description="history loaded for a target seen the first time"
    )
    prometheus_backfill_step_s: float = Field(15.0, ge=1, le=3600)
    scrape_timeout_s: float = Field(5.0, gt=0, le=120)
    scrape_concurrency: int = Field(64, ge=1, le=4096)
    scrape_max_bytes: int = Field(16 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    # Caps per target; past one the target is stored down with the reason (README.md: why these
    # defaults). A real vLLM page keeps ~200 series of the families we read per model and rank.
    scrape_max_series: int = Field(50_000, ge=10, le=10_000_000)
    scrape_max_models: int = Field(256, ge=1, le=100_000)
    scrape_max_label_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    # 8 samples 5 s apart span 35 s: one cycle shows a condition held DETECTION_MIN_SUSTAINED_S
    scrape_samples: int = Field(8, ge=1, le=100, description="samples per target per cycle")
    scrape_interval_s: float = Field(5.0, ge=0, le=600, description="pause between samples")
    analysis_window_minutes: float = Field(
        15.0, gt=0, le=24 * 60, description="how far back bottleneck analysis looks"
    )
    detection_sustained_share: float = Field(
        0.5, gt=0, le=1, description="share of the observed time a condition must hold"
    )
    detection_min_sustained_s: float = Field(
        30.0, ge=0, le=3600, description="seconds a condition must hold to count as sustained"
    )
    outcome_settle_minutes: float = Field(
        2.0, ge=0, le=24 * 60, description="restart and warm-up time excluded after a change"
    )
    optimization_cycle_cron: str = "*/5 * * * *"
    # Every 5 minutes: the sidecar calls health stale after two missed runs (~12 min), soon enough
    # for a probe; every minute made 1,440 runs a day in Dagster's storage for no faster answer.
    health_check_cron: str = "*/5 * * * *"
    retention_days: float = Field(
        7.0, gt=0, le=3650, description="snapshots, reports, health rows and events kept"
    )
    retention_cron: str = "17 3 * * *"
    recommendation_ttl_minutes: float = Field(
        60.0, gt=0, le=7 * 24 * 60, description="open advice not given again this long expires"
    )

    @field_validator("orchestrator_url")
    @classmethod
    def _orchestrator_url(cls, value: str | None) -> str | None:
        return _check_http_url(value, "ORCHESTRATOR_URL")

    @field_validator("sidecar_url")
    @classmethod
    def _sidecar_url(cls, value: str | None) -> str | None:
        return _check_http_url(value, "SIDECAR_URL")

    @field_validator("prometheus_url")
    @classmethod
    def _prometheus_url(cls, value: str | None) -> str | None:
        return _check_http_url(value, "PROMETHEUS_URL")

    @field_validator("orchestrator_register_endpoint", "orchestrator_heartbeat_endpoint")
    @classmethod
    def _endpoint_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"must be a path starting with '/', got {value!r}")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("DATABASE_URL must be a sqlite:/// or postgresql+psycopg:// URL")
        if value.startswith(("postgresql://", "postgres://")):
            # SQLAlchemy would pick psycopg2 for a bare scheme; we ship psycopg 3.
            value = "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @field_validator("perf_targets")
    @classmethod
    def _targets_path(cls, value: Path | None) -> Path | None:
        if value is not None and str(value) == "":
            return None
        return value

    @model_validator(mode="after")
    def _prometheus_auth(self) -> Settings:
        if self.prometheus_token and self.prometheus_username:
            raise ValueError(
                "set PROMETHEUS_TOKEN or PROMETHEUS_USERNAME/PROMETHEUS_PASSWORD, not both"
            )
        if self.prometheus_password and not self.prometheus_username:
            raise ValueError("PROMETHEUS_PASSWORD needs PROMETHEUS_USERNAME")
        return self

    @field_validator("optimization_cycle_cron", "health_check_cron", "retention_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return check_cron(value)

    @property
    def advertised_sidecar_url(self) -> str:
        if self.sidecar_url:
            return self.sidecar_url
        # A wildcard bind address is no address to reach; this machine's name is the best guess.
        host = socket.gethostname() if is_wildcard_address(self.host) else self.host
        return f"http://{host}:{self.port}"

    @cached_property
    def resolved_database_url(self) -> str:
        """DATABASE_URL, or a SQLite file under PERF_HOME when unset."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.perf_home / 'perf_pipelines.db').resolve()}"

    @property
    def heartbeat_path(self) -> str:
        return self.orchestrator_heartbeat_endpoint.replace("{agent_id}", self.agent_id)

    @property
    def token(self) -> str | None:
        return self.orchestrator_token.get_secret_value() if self.orchestrator_token else None


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment; a bad value raises `SettingsError` naming it."""
    try:
        # Overrides are field values by name, checked by pydantic at run time (that is the point).
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            location = ".".join(str(part) for part in error["loc"]) or "settings"
            # Never echo the rejected input: it may be a token.
            problems.append(f"{location.upper()}: {error['msg']}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
