"""The register/heartbeat state machine with a fake clock against a real loopback orchestrator."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from perf_pipelines import __version__
from perf_pipelines.orchestrator.client import OrchestratorClient
from perf_pipelines.orchestrator.heartbeat import (
    AgentReport,
    HeartbeatConfig,
    HeartbeatState,
    TickOutcome,
    backoff_delay,
    report_from_fleet,
    run_tick,
)
from perf_pipelines.settings import CAPABILITIES
from perf_pipelines.storage.summary import FleetSummary
from tests.support.orchestrator import TestOrchestrator, run_orchestrator

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
INTERVAL = 30.0


def _config(url: str, agent_id: str = "perf-1") -> HeartbeatConfig:
    return HeartbeatConfig(
        orchestrator_url=url,
        agent_id=agent_id,
        agent_type="performance",
        version=__version__,
        endpoint="http://127.0.0.1:8002",
        register_path="/api/v1/agents/register",
        heartbeat_path=f"/api/v1/agents/{agent_id}/heartbeat",
        interval_s=INTERVAL,
    )


class Agent:
    """Drives `run_tick` like the sensor: cursor in, cursor out, a clock the test moves."""

    def __init__(self, orchestrator: TestOrchestrator, seed: int = 7) -> None:
        self.orchestrator = orchestrator
        self.config = _config(orchestrator.url)
        self.cursor: str | None = None
        self.rng = random.Random(seed)
        self.report = AgentReport("healthy", {"targets_total": 2, "targets_up": 2})

    def tick(self, at: datetime) -> TickOutcome:
        with OrchestratorClient(self.orchestrator.url, timeout_s=0.3) as client:
            outcome = run_tick(
                self.config,
                HeartbeatState.from_cursor(self.cursor),
                client,
                at,
                lambda: self.report,
                lambda: {"environment": "test", "targets": 2},
                self.rng,
            )
        self.cursor = outcome.state.to_cursor()
        return outcome


@pytest.fixture
def orchestrator():
    with run_orchestrator() as server:
        yield server


def test_first_tick_registers_then_heartbeats_once_per_interval(
    orchestrator: TestOrchestrator,
) -> None:
    agent = Agent(orchestrator)
    first = agent.tick(T0)
    assert [a.kind for a in first.attempts] == ["register"]
    assert first.state.registered and first.state.last_status == "registered"
    assert first.state.next_attempt_at == T0 + timedelta(seconds=INTERVAL)
    register = orchestrator.requests[0]
    assert register.body == {
        "agent_id": "perf-1",
        "agent_type": "performance",
        "version": __version__,
        "capabilities": list(CAPABILITIES),
        "endpoint": "http://127.0.0.1:8002",
        "metadata": {"environment": "test", "targets": 2},
    }
    (event,) = first.events
    assert event["kind"] == "register" and event["success"] and event["status_code"] == 201

    early = agent.tick(T0 + timedelta(seconds=10))
    assert early.attempts == [] and early.events == []
    assert early.message == "next heartbeat due in 20.0s"
    # Within the slack of a tick that comes a hair early, the heartbeat goes out.
    due = agent.tick(T0 + timedelta(seconds=INTERVAL - 0.5))
    assert [a.kind for a in due.attempts] == ["heartbeat"]
    heartbeat = orchestrator.requests[-1]
    assert heartbeat.path == "/api/v1/agents/perf-1/heartbeat"
    assert heartbeat.body == {
        "agent_id": "perf-1",
        "status": "healthy",
        "timestamp": (T0 + timedelta(seconds=INTERVAL - 0.5)).isoformat(),
        "summary": {"targets_total": 2, "targets_up": 2},
    }
    assert due.state.last_heartbeat_at == T0 + timedelta(seconds=INTERVAL - 0.5)
    assert due.state.last_status == "heartbeat_ok"
    assert orchestrator.kinds() == ["register", "heartbeat"]


def test_404_registers_again_in_the_same_tick(orchestrator: TestOrchestrator) -> None:
    agent = Agent(orchestrator)
    agent.tick(T0)
    orchestrator.forget()  # the orchestrator restarted and lost its registry
    outcome = agent.tick(T0 + timedelta(seconds=INTERVAL))
    assert [(a.kind, a.status_code) for a in outcome.attempts] == [
        ("heartbeat", 404),
        ("register", 201),
    ]
    assert [e["success"] for e in outcome.events] == [False, True]
    assert outcome.events[0]["detail"]["action"] == "register again"
    assert outcome.state.registered and outcome.state.consecutive_failures == 0
    assert "HTTP 404" in outcome.message and "registered" in outcome.message
    assert "perf-1" in orchestrator.agents


def test_failures_back_off_with_growing_jittered_waits_then_recover(
    orchestrator: TestOrchestrator,
) -> None:
    agent = Agent(orchestrator)
    agent.tick(T0)
    orchestrator.fail_with(500)
    now = T0 + timedelta(seconds=INTERVAL)
    waits = []
    for expected_failures in range(1, 7):
        outcome = agent.tick(now)
        (attempt,) = outcome.attempts
        assert not attempt.success and attempt.status_code == 500
        state = outcome.state
        assert state.consecutive_failures == expected_failures and state.last_status == "failed"
        assert state.registered  # a 5xx is not "unknown agent": no new registration
        assert state.next_attempt_at is not None
        wait = (state.next_attempt_at - now).total_seconds()
        ceiling = min(300.0, INTERVAL * 2 ** (expected_failures - 1))
        assert ceiling / 2 <= wait <= ceiling
        (event,) = outcome.events
        assert event["detail"]["consecutive_failures"] == expected_failures
        assert event["detail"]["retry_in_s"] == pytest.approx(wait, abs=0.01)
        assert "retrying in" in outcome.message
        # Before the retry is due nothing is sent.
        quiet = agent.tick(now + timedelta(seconds=wait / 2))
        assert quiet.attempts == [] and "backing off after" in quiet.message
        waits.append(wait)
        now = state.next_attempt_at
    # Below the cap each wait is at least the previous ceiling, so waits grow; then they stay
    # within [150, 300] s.
    assert waits[:4] == sorted(waits[:4]) and all(150 <= w <= 300 for w in waits[4:])
    assert len(set(waits)) == len(waits)  # jittered, not a fixed ladder

    orchestrator.recover()
    healed = agent.tick(now)
    assert healed.attempts[0].success
    assert healed.state.consecutive_failures == 0 and healed.state.last_error is None
    assert healed.state.next_attempt_at == now + timedelta(seconds=INTERVAL)


def test_timeouts_and_a_vanished_orchestrator_back_off_too(
    orchestrator: TestOrchestrator,
) -> None:
    agent = Agent(orchestrator)
    orchestrator.hang()
    hung = agent.tick(T0)
    assert hung.state.consecutive_failures == 1 and not hung.state.registered
    assert hung.events[0]["error"] == "timeout after 0.3s"
    orchestrator.stop()
    assert hung.state.next_attempt_at is not None
    gone = agent.tick(hung.state.next_attempt_at)
    assert gone.state.consecutive_failures == 2
    assert (gone.events[0]["error"] or "").startswith("connection failed")
    assert gone.events[0]["kind"] == "register"


def test_a_new_orchestrator_or_agent_id_starts_over(orchestrator: TestOrchestrator) -> None:
    agent = Agent(orchestrator)
    agent.tick(T0)
    agent.config = _config(orchestrator.url, agent_id="perf-2")
    outcome = agent.tick(T0 + timedelta(seconds=1))
    assert [a.kind for a in outcome.attempts] == ["register"]
    assert orchestrator.requests[-1].body["agent_id"] == "perf-2"


@pytest.mark.parametrize("cursor", [None, "", "not json", "[]", '{"v": 99}'])
def test_an_unreadable_cursor_starts_with_registration(cursor: str | None) -> None:
    assert HeartbeatState.from_cursor(cursor) == HeartbeatState()


def test_state_round_trips_through_the_cursor() -> None:
    state = HeartbeatState(
        registered=True,
        last_heartbeat_at=T0,
        consecutive_failures=2,
        next_attempt_at=T0 + timedelta(seconds=45),
        last_status="failed",
        last_error="HTTP 500 Internal Server Error",
        registered_at=T0 - timedelta(hours=1),
        identity="perf-1@http://o",
    )
    cursor = state.to_cursor()
    assert HeartbeatState.from_cursor(cursor) == state
    data = json.loads(cursor)
    assert {
        "registered",
        "last_heartbeat_at",
        "consecutive_failures",
        "next_attempt_at",
        "last_status",
    } <= data.keys()


def test_backoff_grows_until_the_cap() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(failures, 30.0, 300.0, rng) for failures in range(1, 40)]
    assert delays[:4] == sorted(delays[:4])
    assert all(150.0 <= d <= 300.0 for d in delays[4:])
    assert 0.5 <= backoff_delay(1, 1.0, 300.0, rng) <= 1.0
    assert 150.0 <= backoff_delay(10**6, 30.0, 300.0, rng) <= 300.0


def _fleet(**overrides: object) -> FleetSummary:
    values: dict[str, object] = {
        "targets": 3,
        "targets_up": 3,
        "scrape_errors": {},
        "last_collection_at": T0 - timedelta(seconds=90),
        "last_analysis_at": T0 - timedelta(seconds=80),
        "open_recommendations": {
            ("kv_cache_optimization", "warning"): 2,
            ("batch_size_tuning", "critical"): 1,
        },
        "outcomes": {"improved": 4},
        "critical_bottlenecks": 1,
    }
    values.update(overrides)
    return FleetSummary(**values)  # type: ignore[arg-type]


def test_report_summarises_the_fleet() -> None:
    report = report_from_fleet(_fleet(), T0)
    assert report.status == "healthy"
    assert report.summary == {
        "targets_total": 3,
        "targets_up": 3,
        "targets_down": 0,
        "open_recommendations": 3,
        "open_recommendations_by_capability": {
            "batch_size_tuning": 1,
            "kv_cache_optimization": 2,
        },
        "critical_bottlenecks": 1,
        "regressions": 0,
        "last_cycle_at": (T0 - timedelta(seconds=90)).isoformat(),
        "last_cycle_age_s": 90.0,
    }
    json.dumps(report.summary)  # goes on the wire as is


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        ({"targets_up": 2}, "degraded"),
        ({"outcomes": {"regressed": 1}}, "degraded"),
        ({"targets": 0, "targets_up": 0, "last_collection_at": None}, "healthy"),
    ],
)
def test_report_status(overrides: dict[str, object], status: str) -> None:
    assert report_from_fleet(_fleet(**overrides), T0).status == status
