"""The agent's component health, shared by the `health_check` job and the sidecar.

Each check returns a `ComponentHealth` and never raises. Component statuses: `ok`, `degraded`
(works, but something needs attention), `down` (does not work) and `not_configured` (an optional
integration that is off: no ORCHESTRATOR_URL, no REDIS_URL).

Overall (`overall_status`): `unhealthy` when the database component is not `ok` (unreachable,
tables unreadable or schema not at the code's head revision: the agent cannot store or serve
anything reliably), else `degraded` when any component is degraded or down, else `healthy`.

The database is read once per check (`read_database`): liveness, schema revision, and every
figure the database-backed components judge. Only `dagster` differs between the two callers:
the job asks the Dagster instance for `optimization_cycle` runs (`check_optimization_cycle`);
the sidecar, which has no instance, relays what the newest `agent_health` row recorded
(`check_recorded_dagster`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, Engine, insert, select, text

from perf_pipelines.logs import SecretRedactor, redact_and_clip
from perf_pipelines.orchestrator.events import OrchestratorStatus, orchestrator_status
from perf_pipelines.storage.db import schema_revision
from perf_pipelines.storage.schema import agent_health
from perf_pipelines.storage.summary import FleetSummary, fleet_summary

COMPONENT_STATUSES = ("ok", "degraded", "down", "not_configured")
NOT_JUDGED = "not judged: the database cannot be read"
_ERROR_MAX = 300


@dataclass(frozen=True)
class ComponentHealth:
    status: str  # ok | degraded | down | not_configured
    detail: str
    latency_ms: float | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The shape of one entry of `agent_health.components` and of the sidecar's answer."""
        return asdict(self)


def describe_error(exc: BaseException, *secrets: str | None) -> str:
    """`Type: first line of the message`, with `secrets` and secret-looking text removed."""
    redact = SecretRedactor([s for s in secrets if s])
    message = redact_and_clip(str(exc), _ERROR_MAX, redact, first_line=True)
    return redact_and_clip(
        f"{type(exc).__name__}: {message}" if message else type(exc).__name__, _ERROR_MAX
    )


def _age_s(then: datetime | None, now: datetime) -> float | None:
    return None if then is None else round(max(0.0, (now - then).total_seconds()), 1)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


# --- one pass over the database ---------------------------------------------------------------


@dataclass(frozen=True)
class RecordedHealth:
    """The newest `agent_health` row of this agent."""

    checked_at: datetime
    status: str
    components: dict[str, Any]


@dataclass(frozen=True)
class DatabaseState:
    """What one pass over the database found.

    `reachable` False: no connection or no answer to `SELECT 1` (`error` says why). Reachable
    with `fleet` None: the tables could not be read (`error`), so nothing else was either.
    """

    reachable: bool
    error: str | None = None
    latency_ms: float | None = None
    dialect: str | None = None
    revision: str | None = None
    fleet: FleetSummary | None = None
    link: OrchestratorStatus | None = None
    last_health: RecordedHealth | None = None


def _last_health(connection: Connection, agent_id: str) -> RecordedHealth | None:
    row = connection.execute(
        select(agent_health.c.checked_at, agent_health.c.status, agent_health.c.components)
        .where(agent_health.c.agent_id == agent_id)
        .order_by(agent_health.c.checked_at.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    components = row.components if isinstance(row.components, dict) else {}
    return RecordedHealth(row.checked_at, row.status, components)


def read_database(engine: Engine, agent_id: str) -> DatabaseState:
    """One connection: liveness, schema revision and every figure the components judge."""
    password = engine.url.password
    started = time.perf_counter()
    try:
        connection = engine.connect()
    except Exception as exc:
        return DatabaseState(reachable=False, error=describe_error(exc, password))
    with connection:
        try:
            connection.execute(text("SELECT 1"))
        except Exception as exc:
            return DatabaseState(reachable=False, error=describe_error(exc, password))
        latency = round((time.perf_counter() - started) * 1000, 2)
        reached = DatabaseState(reachable=True, latency_ms=latency, dialect=engine.dialect.name)
        try:
            return replace(
                reached,
                revision=schema_revision(connection),
                fleet=fleet_summary(connection),
                link=orchestrator_status(connection, agent_id),
                last_health=_last_health(connection, agent_id),
            )
        except Exception as exc:
            # Reachable, but the tables cannot be read (schema missing or broken).
            connection.rollback()
            try:
                revision = schema_revision(connection)
            except Exception:
                revision = None
            return replace(reached, revision=revision, error=describe_error(exc, password))


# --- the checks -------------------------------------------------------------------------------


def check_database(state: DatabaseState, head: str) -> ComponentHealth:
    """Reachable, tables readable, schema at `head` (the newest revision this code knows)."""
    if not state.reachable:
        return ComponentHealth("down", f"unreachable: {state.error or 'no answer'}")
    data = {"dialect": state.dialect, "revision": state.revision, "head": head}
    if state.revision != head:
        return ComponentHealth(
            "degraded",
            f"schema at revision {state.revision or 'none'}, code expects {head}: "
            "run `perf-pipelines db upgrade`",
            state.latency_ms,
            data,
        )
    if state.error is not None:
        return ComponentHealth(
            "degraded", f"tables not readable: {state.error}", state.latency_ms, data
        )
    return ComponentHealth(
        "ok", f"{state.dialect}, schema at head ({head})", state.latency_ms, data
    )


def check_targets(
    fleet: FleetSummary, configured: int | None, now: datetime, config_error: str | None = None
) -> ComponentHealth:
    """Reachability as seen by the latest collection run (no extra scrape of the fleet).

    `configured`: targets in the targets file; 0 when PERF_TARGETS is unset; None when the caller
    did not read the file (the sidecar).
    """
    data: dict[str, Any] = {
        "configured": configured,
        "scraped": fleet.targets,
        "up": fleet.targets_up,
        "down": fleet.targets - fleet.targets_up,
        "last_collection_at": _iso(fleet.last_collection_at),
        "data_age_s": _age_s(fleet.last_collection_at, now),
        "errors": dict(sorted(fleet.scrape_errors.items(), key=lambda kv: -kv[1])[:5]),
    }
    if config_error is not None:
        return ComponentHealth("degraded", f"targets file unusable: {config_error}", data=data)
    if configured == 0:
        return ComponentHealth("degraded", "no targets configured (PERF_TARGETS)", data=data)
    if fleet.targets == 0:
        return ComponentHealth("degraded", "no collection run stored yet", data=data)
    down = fleet.targets - fleet.targets_up
    summary = f"{fleet.targets_up}/{fleet.targets} up in the latest collection run"
    worst = max(fleet.scrape_errors.items(), key=lambda kv: kv[1], default=None)
    reason = f"; most common error: {worst[0]}" if down and worst else ""
    if fleet.targets_up == 0:
        return ComponentHealth("down", summary + reason, data=data)
    if down:
        return ComponentHealth("degraded", summary + reason, data=data)
    return ComponentHealth("ok", summary, data=data)


@dataclass(frozen=True)
class CycleRun:
    """A finished `optimization_cycle` run, as the Dagster instance recorded it."""

    run_id: str
    status: str  # SUCCESS | FAILURE | CANCELED
    finished_at: datetime


def check_optimization_cycle(
    last_success: CycleRun | None,
    last_finished: CycleRun | None,
    now: datetime,
    stale_after_s: float,
) -> ComponentHealth:
    """The job's `dagster` component: the optimization cycle succeeded within `stale_after_s`."""
    data: dict[str, Any] = {
        "stale_after_s": round(stale_after_s, 1),
        "last_success_run_id": None if last_success is None else last_success.run_id,
        "last_success_at": None if last_success is None else last_success.finished_at.isoformat(),
        "last_success_age_s": None
        if last_success is None
        else _age_s(last_success.finished_at, now),
        "last_run_status": None if last_finished is None else last_finished.status,
    }
    note = ""
    if (
        last_finished is not None
        and last_finished.status != "SUCCESS"
        and (last_success is None or last_finished.finished_at > last_success.finished_at)
    ):
        note = f"; latest run {last_finished.run_id[:8]} {last_finished.status}"
    if last_success is None:
        return ComponentHealth(
            "degraded", "no successful optimization_cycle run yet" + note, data=data
        )
    age = _age_s(last_success.finished_at, now) or 0.0
    if age > stale_after_s:
        return ComponentHealth(
            "degraded",
            f"last successful optimization_cycle {age:.0f}s ago (stale after {stale_after_s:.0f}s)"
            + note,
            data=data,
        )
    status = "degraded" if note else "ok"
    return ComponentHealth(
        status, f"last successful optimization_cycle {age:.0f}s ago" + note, data=data
    )


def check_recorded_dagster(
    state: DatabaseState, now: datetime, stale_after_s: float
) -> ComponentHealth:
    """The sidecar's `dagster` component: the newest `agent_health` row of this agent.

    A row younger than `stale_after_s` (from HEALTH_CHECK_CRON) shows that the Dagster daemon
    runs schedules; its `dagster` component is what the job read from the run records (last
    successful and last failed `optimization_cycle`), so it is relayed as recorded. No row, or
    an older one, is `degraded`: the daemon or `health_check_schedule` is not running, and
    nothing fresher can be said without a Dagster instance.
    """
    if state.fleet is None:
        return ComponentHealth("degraded", NOT_JUDGED)
    fleet, last = state.fleet, state.last_health
    data: dict[str, Any] = {
        "health_check_at": None if last is None else last.checked_at.isoformat(),
        "health_check_age_s": None if last is None else _age_s(last.checked_at, now),
        "health_check_stale_after_s": round(stale_after_s, 1),
        "last_collection_age_s": _age_s(fleet.last_collection_at, now),
    }
    collection_age = data["last_collection_age_s"]
    collected = (
        "no collection stored yet"
        if collection_age is None
        else f"newest collection {collection_age:.0f}s ago"
    )
    if last is None:
        return ComponentHealth(
            "degraded",
            f"no health_check run recorded yet: is the Dagster daemon running? ({collected})",
            data=data,
        )
    age = data["health_check_age_s"] or 0.0
    if age > stale_after_s:
        return ComponentHealth(
            "degraded",
            f"newest health_check run {age:.0f}s ago (stale after {stale_after_s:.0f}s): are "
            f"the Dagster daemon and its schedules running? ({collected})",
            data=data,
        )
    recorded = last.components.get("dagster")
    if not isinstance(recorded, dict) or recorded.get("status") not in COMPONENT_STATUSES:
        return ComponentHealth(
            "degraded", f"health_check run {age:.0f}s ago recorded no dagster component", data=data
        )
    recorded_data = recorded.get("data")
    return ComponentHealth(
        str(recorded["status"]),
        f"{recorded.get('detail', '')} (as of health_check {age:.0f}s ago)",
        data={**(recorded_data if isinstance(recorded_data, dict) else {}), **data},
    )


def check_orchestrator(
    configured: bool, status: OrchestratorStatus | None, now: datetime, interval_s: float
) -> ComponentHealth:
    """The latest registration/heartbeat attempts recorded by the sensor."""
    if not configured:
        return ComponentHealth("not_configured", "standalone: ORCHESTRATOR_URL is not set")
    if status is None or status.last_attempt_at is None:
        return ComponentHealth(
            "degraded", "no registration or heartbeat attempt recorded yet (sensor running?)"
        )
    # Ticks come at least one interval apart, plus the daemon's loop; three missed is stale.
    stale_after = 3 * interval_s + 60
    data: dict[str, Any] = {
        "last_attempt_at": status.last_attempt_at.isoformat(),
        "last_kind": status.last_kind,
        "last_status_code": status.last_status_code,
        "last_success_at": _iso(status.last_success_at),
        "last_success_age_s": _age_s(status.last_success_at, now),
        "consecutive_failures": status.consecutive_failures,
    }
    if not status.last_success:
        reason = status.last_error or f"HTTP {status.last_status_code}"
        return ComponentHealth(
            "down",
            f"last {status.last_kind} failed ({redact_and_clip(' '.join(reason.split()), 160)}); "
            f"{status.consecutive_failures} consecutive failure(s)",
            data=data,
        )
    age = _age_s(status.last_success_at, now) or 0.0
    if age > stale_after:
        return ComponentHealth(
            "degraded",
            f"last contact {age:.0f}s ago, expected every {interval_s:g}s (sensor stopped?)",
            data=data,
        )
    return ComponentHealth("ok", f"last {status.last_kind} ok {age:.0f}s ago", data=data)


def database_components(
    state: DatabaseState,
    head: str,
    now: datetime,
    *,
    targets_configured: int | None,
    targets_error: str | None = None,
    orchestrator_configured: bool,
    heartbeat_interval_s: float,
) -> dict[str, ComponentHealth]:
    """`database`, `targets` and `orchestrator`: the components judged from `state`.

    While the tables cannot be read, the components that need them are `degraded` / not judged.
    """
    fleet, unread = state.fleet, ComponentHealth("degraded", NOT_JUDGED)
    return {
        "database": check_database(state, head),
        "targets": unread
        if fleet is None
        else check_targets(fleet, targets_configured, now, targets_error),
        "orchestrator": unread
        if fleet is None and orchestrator_configured
        else check_orchestrator(orchestrator_configured, state.link, now, heartbeat_interval_s),
    }


def _redis_address(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def check_cache(redis_url: str | None, timeout_s: float = 2.0) -> ComponentHealth:
    """PING the Redis at REDIS_URL (no retry); never shows the URL (it may carry a password)."""
    if not redis_url:
        return ComponentHealth("not_configured", "REDIS_URL is not set")
    password = urlsplit(redis_url).password
    try:
        address = _redis_address(redis_url)
    except ValueError:
        return ComponentHealth("down", "REDIS_URL cannot be parsed")
    try:
        import redis  # only when configured: keeps the sidecar's start-up lean
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        return ComponentHealth(
            "down", "the redis package is not installed", data={"address": address}
        )
    started = time.perf_counter()
    client = None
    try:
        client = redis.Redis.from_url(
            redis_url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # a health probe reports, it does not retry
        )
        client.ping()
    except Exception as exc:
        return ComponentHealth(
            "down", f"{address}: {describe_error(exc, password)}", data={"address": address}
        )
    finally:
        if client is not None:
            client.close()
    latency = round((time.perf_counter() - started) * 1000, 2)
    return ComponentHealth("ok", f"PING {address} ok", latency, {"address": address})


def overall_status(components: Mapping[str, ComponentHealth]) -> str:
    """`unhealthy` | `degraded` | `healthy` (the rule in this module's docstring)."""
    database = components.get("database")
    if database is not None and database.status != "ok":
        return "unhealthy"
    if any(c.status in ("degraded", "down") for c in components.values()):
        return "degraded"
    return "healthy"


def write_health(
    connection: Connection,
    *,
    checked_at: datetime,
    run_id: str | None,
    agent_id: str,
    components: Mapping[str, ComponentHealth],
) -> dict[str, Any]:
    """Insert one `agent_health` row; returns it."""
    row = {
        "checked_at": checked_at.astimezone(UTC),
        "run_id": run_id,
        "agent_id": agent_id,
        "status": overall_status(components),
        "components": {name: c.as_json() for name, c in components.items()},
    }
    connection.execute(insert(agent_health), [row])
    return row
