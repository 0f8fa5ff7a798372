"""The registration/heartbeat state machine, with its state serialisable as a sensor cursor.

    unregistered ──register ok──► registered ──heartbeat ok──► registered (next in INTERVAL)
         ▲   │                        │
         │   └─fail─► backoff         ├─404 (unknown agent)──► register again, same tick
         └───────────────────────────┘└─timeout / connection error / 5xx / other─► backoff

Backoff after the n-th consecutive failure: d = min(cap, INTERVAL·2^(n-1)), wait a uniformly
random time in [d/2, d] ("equal jitter"): below the cap each wait is at least the previous
ceiling, so waits grow; at the cap they stay between cap/2 and cap; and agents restarted together
do not hammer the orchestrator in step. A success resets it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from perf_pipelines.orchestrator.client import Attempt
from perf_pipelines.settings import CAPABILITIES
from perf_pipelines.storage.summary import FleetSummary

BACKOFF_CAP_S = 300.0
_STATE_VERSION = 1


class Poster(Protocol):
    def post_json(self, kind: str, path: str, payload: dict[str, Any]) -> Attempt: ...


@dataclass(frozen=True)
class HeartbeatConfig:
    orchestrator_url: str
    agent_id: str
    agent_type: str
    version: str
    endpoint: str  # where the orchestrator reaches the agent (the sidecar)
    register_path: str
    heartbeat_path: str  # with {agent_id} already substituted
    interval_s: float
    backoff_cap_s: float = BACKOFF_CAP_S

    @property
    def identity(self) -> str:
        """Which orchestrator and agent a cursor belongs to: a change means register again."""
        return f"{self.agent_id}@{self.orchestrator_url}"

    @property
    def slack_s(self) -> float:
        # The daemon ticks at least `interval` apart, measured from tick start; a heartbeat due a
        # few milliseconds after the tick would otherwise wait a whole extra interval.
        return min(2.0, 0.1 * self.interval_s)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


@dataclass(frozen=True)
class HeartbeatState:
    """Everything the sensor remembers between ticks (its cursor, as JSON)."""

    registered: bool = False
    last_heartbeat_at: datetime | None = None
    consecutive_failures: int = 0
    next_attempt_at: datetime | None = None
    last_status: str = "new"  # new | registered | heartbeat_ok | unknown_agent | failed
    last_error: str | None = None  # already redacted
    registered_at: datetime | None = None
    identity: str | None = None

    def to_cursor(self) -> str:
        data = asdict(self)
        for key in ("last_heartbeat_at", "next_attempt_at", "registered_at"):
            data[key] = _iso(data[key])
        data["v"] = _STATE_VERSION
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_cursor(cls, cursor: str | None) -> HeartbeatState:
        """The state in `cursor`; a missing or unreadable cursor starts over (register)."""
        if not cursor:
            return cls()
        try:
            data = json.loads(cursor)
        except ValueError:
            return cls()
        if not isinstance(data, dict) or data.get("v") != _STATE_VERSION:
            return cls()
        failures = data.get("consecutive_failures")
        error = data.get("last_error")
        identity = data.get("identity")
        return cls(
            registered=data.get("registered") is True,
            last_heartbeat_at=_parse_time(data.get("last_heartbeat_at")),
            consecutive_failures=failures if isinstance(failures, int) and failures >= 0 else 0,
            next_attempt_at=_parse_time(data.get("next_attempt_at")),
            last_status=str(data.get("last_status") or "new"),
            last_error=error if isinstance(error, str) else None,
            registered_at=_parse_time(data.get("registered_at")),
            identity=identity if isinstance(identity, str) else None,
        )


@dataclass(frozen=True)
class AgentReport:
    """What the heartbeat says: a status and a small summary of the agent's state."""

    status: str  # healthy | degraded | unhealthy
    summary: dict[str, Any] = field(default_factory=dict)


def report_from_fleet(fleet: FleetSummary, now: datetime) -> AgentReport:
    """The heartbeat's status and summary, from the same figures as /metrics and health."""
    last_cycle = fleet.last_collection_at
    by_capability: dict[str, int] = {}
    for (capability, _severity), count in fleet.open_recommendations.items():
        by_capability[capability] = by_capability.get(capability, 0) + count
    down = fleet.targets - fleet.targets_up
    summary = {
        "targets_total": fleet.targets,
        "targets_up": fleet.targets_up,
        "targets_down": down,
        "open_recommendations": fleet.open_total,
        "open_recommendations_by_capability": dict(sorted(by_capability.items())),
        "critical_bottlenecks": fleet.critical_bottlenecks,
        "regressions": fleet.regressions,
        "last_cycle_at": _iso(last_cycle),
        "last_cycle_age_s": None
        if last_cycle is None
        else round(max(0.0, (now - last_cycle).total_seconds()), 1),
    }
    status = "degraded" if fleet.regressions > 0 or down > 0 else "healthy"
    return AgentReport(status=status, summary=summary)


def registration_payload(config: HeartbeatConfig, metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        "agent_id": config.agent_id,
        "agent_type": config.agent_type,
        "version": config.version,
        "capabilities": list(CAPABILITIES),
        "endpoint": config.endpoint,
        "metadata": metadata,
    }


def heartbeat_payload(
    config: HeartbeatConfig, report: AgentReport, now: datetime
) -> dict[str, Any]:
    return {
        "agent_id": config.agent_id,
        "status": report.status,
        "timestamp": _iso(now),
        "summary": report.summary,
    }


def backoff_delay(
    failures: int, base_s: float, cap_s: float = BACKOFF_CAP_S, rng: random.Random | None = None
) -> float:
    """Seconds to wait after the `failures`-th consecutive failure (equal jitter, capped)."""
    ceiling = min(cap_s, base_s * 2.0 ** max(0, min(failures, 32) - 1))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


@dataclass(frozen=True)
class TickOutcome:
    state: HeartbeatState
    attempts: list[Attempt]
    events: list[dict[str, Any]]  # rows for `orchestrator_events`
    message: str


def _event(config: HeartbeatConfig, attempt: Attempt, detail: dict[str, Any]) -> dict[str, Any]:
    return {
        "occurred_at": attempt.started_at,
        "agent_id": config.agent_id,
        "kind": attempt.kind,
        "success": attempt.success,
        "status_code": attempt.status_code,
        "latency_ms": attempt.latency_ms,
        "error": attempt.error,
        "detail": {"path": attempt.path, **detail},
    }


def _seconds(delta: timedelta) -> str:
    return f"{max(0.0, delta.total_seconds()):.1f}s"


def run_tick(
    config: HeartbeatConfig,
    state: HeartbeatState,
    client: Poster,
    now: datetime,
    report: Callable[[], AgentReport],
    metadata: Callable[[], dict[str, Any]],
    rng: random.Random | None = None,
) -> TickOutcome:
    """One evaluation: do whatever is due (register, heartbeat, both or nothing)."""
    if state.identity != config.identity:
        state = HeartbeatState(identity=config.identity)
    if state.next_attempt_at is not None and now + timedelta(seconds=config.slack_s) < (
        state.next_attempt_at
    ):
        wait = _seconds(state.next_attempt_at - now)
        action = "heartbeat" if state.registered else "registration"
        message = f"next {action} due in {wait}"
        if state.consecutive_failures:
            message += (
                f" (backing off after {state.consecutive_failures} failure(s): {state.last_error})"
            )
        return TickOutcome(state, [], [], message)

    attempts: list[Attempt] = []
    events: list[dict[str, Any]] = []
    notes: list[str] = []
    if state.registered:
        agent_report = report()
        attempt = client.post_json(
            "heartbeat", config.heartbeat_path, heartbeat_payload(config, agent_report, now)
        )
        attempts.append(attempt)
        detail: dict[str, Any] = {"status": agent_report.status, "summary": agent_report.summary}
        if attempt.success:
            state = replace(
                state,
                last_heartbeat_at=now,
                consecutive_failures=0,
                next_attempt_at=now + timedelta(seconds=config.interval_s),
                last_status="heartbeat_ok",
                last_error=None,
            )
            events.append(_event(config, attempt, detail))
            message = (
                f"heartbeat sent ({agent_report.status}; HTTP {attempt.status_code}, "
                f"{attempt.latency_ms:.0f} ms); next in {config.interval_s:g}s"
            )
            return TickOutcome(state, attempts, events, message)
        if not attempt.unknown_agent:
            return _failed(config, state, attempt, now, rng, attempts, events, detail)
        # 404: the orchestrator forgot us (restart, expiry): register again at once.
        events.append(_event(config, attempt, {**detail, "action": "register again"}))
        notes.append("orchestrator did not know the agent (HTTP 404)")
        state = replace(state, registered=False, last_status="unknown_agent")

    agent_metadata = metadata()
    attempt = client.post_json(
        "register", config.register_path, registration_payload(config, agent_metadata)
    )
    attempts.append(attempt)
    detail = {"version": config.version, "endpoint": config.endpoint, "metadata": agent_metadata}
    if not attempt.success:
        return _failed(config, state, attempt, now, rng, attempts, events, detail, notes)
    state = replace(
        state,
        registered=True,
        registered_at=now,
        consecutive_failures=0,
        next_attempt_at=now + timedelta(seconds=config.interval_s),
        last_status="registered",
        last_error=None,
    )
    events.append(_event(config, attempt, detail))
    message = "; ".join(
        [
            *notes,
            f"registered with the orchestrator (HTTP {attempt.status_code}, "
            f"{attempt.latency_ms:.0f} ms); first heartbeat in {config.interval_s:g}s",
        ]
    )
    return TickOutcome(state, attempts, events, message)


def _failed(
    config: HeartbeatConfig,
    state: HeartbeatState,
    attempt: Attempt,
    now: datetime,
    rng: random.Random | None,
    attempts: list[Attempt],
    events: list[dict[str, Any]],
    detail: dict[str, Any],
    notes: list[str] | None = None,
) -> TickOutcome:
    failures = state.consecutive_failures + 1
    delay = backoff_delay(failures, config.interval_s, config.backoff_cap_s, rng)
    state = replace(
        state,
        consecutive_failures=failures,
        next_attempt_at=now + timedelta(seconds=delay),
        last_status="failed",
        last_error=attempt.error,
    )
    events.append(
        _event(
            config,
            attempt,
            {**detail, "consecutive_failures": failures, "retry_in_s": round(delay, 2)},
        )
    )
    message = "; ".join(
        [
            *(notes or []),
            f"{attempt.kind} failed ({attempt.error}); {failures} consecutive failure(s), "
            f"retrying in {delay:.1f}s",
        ]
    )
    return TickOutcome(state, attempts, events, message)
