"""The `orchestrator_heartbeat` sensor: registers the agent, then heartbeats, from the daemon.

It starts no run: it only talks to the orchestrator and records each attempt in
`orchestrator_events`, so every tick ends as a skip whose reason says what happened. Its state
(registered, failures, next attempt) is the JSON cursor of `HeartbeatState`.

No `from __future__ import annotations` here: Dagster reads the resource annotations at
definition time.
"""

import socket
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from dagster import (
    DefaultSensorStatus,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from perf_pipelines import __version__
from perf_pipelines.dagster_defs.resources import AgentResource, DatabaseResource, TargetsResource
from perf_pipelines.logs import SecretRedactor, redact_and_clip
from perf_pipelines.orchestrator.client import OrchestratorClient
from perf_pipelines.orchestrator.events import insert_events
from perf_pipelines.orchestrator.heartbeat import (
    AgentReport,
    HeartbeatConfig,
    HeartbeatState,
    report_from_fleet,
    run_tick,
)
from perf_pipelines.storage.summary import fleet_summary
from perf_pipelines.targets import TargetsError

STANDALONE = "standalone: ORCHESTRATOR_URL is not set"


def _redactor(agent: AgentResource) -> SecretRedactor:
    return SecretRedactor([agent.orchestrator_token] if agent.orchestrator_token else [])


def _short_error(exc: BaseException, redact: SecretRedactor) -> str:
    return redact_and_clip(f"{type(exc).__name__}: {exc}", 300, redact, first_line=True)


def _config(agent: AgentResource) -> HeartbeatConfig:
    assert agent.orchestrator_url
    return HeartbeatConfig(
        orchestrator_url=agent.orchestrator_url,
        agent_id=agent.agent_id,
        agent_type=agent.agent_type,
        version=__version__,
        endpoint=agent.sidecar_url,
        register_path=agent.orchestrator_register_endpoint,
        heartbeat_path=agent.heartbeat_path,
        interval_s=agent.orchestrator_heartbeat_interval,
    )


def _metadata(agent: AgentResource, targets: TargetsResource) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "environment": agent.environment,
        "hostname": socket.gethostname(),
        "heartbeat_interval_s": agent.orchestrator_heartbeat_interval,
        "targets": None,
        "engines": {},
    }
    try:
        target_list = targets.load()
    except TargetsError as exc:
        metadata["targets_error"] = redact_and_clip(str(exc), 300)
    else:
        metadata["targets"] = len(target_list)
        metadata["engines"] = dict(
            Counter(t.engine_hint.value for t in target_list if t.engine_hint)
        )
    return metadata


def heartbeat_tick(
    context: SensorEvaluationContext,
    agent: AgentResource,
    database: DatabaseResource,
    targets: TargetsResource,
) -> SensorResult:
    """One tick: whatever the protocol says is due; never raises for an orchestrator outage."""
    if not agent.orchestrator_url:
        return SensorResult(skip_reason=SkipReason(STANDALONE), cursor=context.cursor)
    redact = _redactor(agent)
    now = datetime.now(UTC)
    state = HeartbeatState.from_cursor(context.cursor)

    def report() -> AgentReport:
        try:
            with database.get_engine().connect() as connection:
                fleet = fleet_summary(connection)
        except Exception as exc:  # the agent is alive but cannot read its state: say so
            error = _short_error(exc, redact)
            context.log.warning(f"heartbeat summary unavailable: {error}")
            return AgentReport("unhealthy", {"error": f"database unavailable: {error}"})
        return report_from_fleet(fleet, now)

    with OrchestratorClient(
        agent.orchestrator_url,
        token=agent.orchestrator_token,
        timeout_s=agent.orchestrator_timeout_s,
    ) as client:
        outcome = run_tick(
            _config(agent), state, client, now, report, lambda: _metadata(agent, targets)
        )
    if outcome.events:
        try:
            with database.get_engine().begin() as connection:
                insert_events(connection, outcome.events)
        except Exception as exc:
            context.log.warning(
                f"could not record {len(outcome.events)} orchestrator event(s): "
                f"{_short_error(exc, redact)}"
            )
    message = redact(outcome.message)
    if any(not attempt.success for attempt in outcome.attempts):
        context.log.warning(message)
    elif outcome.attempts:
        context.log.info(message)
    return SensorResult(skip_reason=SkipReason(message), cursor=outcome.state.to_cursor())


def orchestrator_heartbeat_sensor(interval_s: float) -> SensorDefinition:
    """The sensor, evaluated every ORCHESTRATOR_HEARTBEAT_INTERVAL seconds (the daemon's default
    of 30 s would otherwise decide the heartbeat rate)."""

    @sensor(
        name="orchestrator_heartbeat",
        minimum_interval_seconds=max(1, int(interval_s)),
        # Running by default: an orchestrator that is configured expects the agent at once.
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Registers the agent with ORCHESTRATOR_URL, then heartbeats every "
            "ORCHESTRATOR_HEARTBEAT_INTERVAL s; backs off while the orchestrator is away and "
            "records every attempt in `orchestrator_events`. Starts no runs."
        ),
    )
    def orchestrator_heartbeat(
        context: SensorEvaluationContext,
        agent: AgentResource,
        database: DatabaseResource,
        targets: TargetsResource,
    ) -> SensorResult:
        return heartbeat_tick(context, agent, database, targets)

    return orchestrator_heartbeat
