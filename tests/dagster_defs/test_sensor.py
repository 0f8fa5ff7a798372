"""The `orchestrator_heartbeat` sensor, tick by tick with `build_sensor_context`, carrying the
cursor between ticks, against a real loopback orchestrator and real databases."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import build_sensor_context
from sqlalchemy import select

from perf_pipelines import __version__
from perf_pipelines.dagster_defs.resources import AgentResource, DatabaseResource, TargetsResource
from perf_pipelines.dagster_defs.sensors import STANDALONE, orchestrator_heartbeat_sensor
from perf_pipelines.engines.canonical import CanonicalSnapshot
from perf_pipelines.settings import CAPABILITIES
from perf_pipelines.storage.db import create_db_engine
from perf_pipelines.storage.schema import orchestrator_events
from perf_pipelines.storage.snapshots import SnapshotRow, insert_snapshots
from tests.support.http_servers import closed_port
from tests.support.orchestrator import TestOrchestrator, run_orchestrator

TOKEN = "tok-Zq9-never-to-be-seen"
# Longer than two ticks on a busy 2-core machine (measured up to ~0.7 s each: every tick sets up
# the database resource afresh and disposes of it after), so "not due yet" is not a race.
INTERVAL = 2.0
SENSOR = orchestrator_heartbeat_sensor(INTERVAL)


class Output:
    """Everything the test printed or logged: Python logging at DEBUG (httpx, alembic, ...)
    and the sensor's `context.log`, which is Dagster's own logger writing to stderr."""

    def __init__(self, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]):
        self._caplog, self._capfd, self._seen = caplog, capfd, ""

    @property
    def text(self) -> str:
        captured = self._capfd.readouterr()
        self._seen += captured.out + captured.err
        return self._caplog.text + self._seen


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Output:
    caplog.set_level(logging.DEBUG)
    return Output(caplog, capfd)


@pytest.fixture
def orchestrator():
    with run_orchestrator(token=TOKEN) as server:
        yield server


def _targets_file(tmp_path: Path) -> Path:
    path = tmp_path / "targets.yaml"
    path.write_text(
        "targets:\n"
        "  - {name: llama-a, url: 'http://10.0.0.1:8000/metrics', engine: vllm}\n"
        "  - {name: qwen-b, url: 'http://10.0.0.2:30000/metrics', engine: sglang}\n"
    )
    return path


def _resources(url: str | None, database_url: str, tmp_path: Path, **agent: Any) -> dict:
    return {
        "agent": AgentResource(
            agent_id="perf-7",
            environment="test",
            orchestrator_url=url,
            orchestrator_token=TOKEN,
            orchestrator_heartbeat_interval=INTERVAL,
            orchestrator_timeout_s=0.3,
            sidecar_url="http://127.0.0.1:8002",
            **agent,
        ),
        "database": DatabaseResource(url=database_url),
        "targets": TargetsResource(path=str(_targets_file(tmp_path))),
    }


class Ticker:
    """Evaluates ticks like the daemon: each one gets the cursor the previous one returned."""

    def __init__(self, resources: dict) -> None:
        self.resources = resources
        self.cursor: str | None = None
        self.messages: list[str] = []

    def tick(self) -> str:
        # A context manager, as the daemon does: the database resource is torn down after the
        # tick (its connections closed).
        with build_sensor_context(cursor=self.cursor, resources=self.resources) as context:
            data = SENSOR.evaluate_tick(context)
        assert data.run_requests == []
        self.cursor = data.cursor
        assert data.skip_message is not None
        self.messages.append(data.skip_message)
        return data.skip_message

    @property
    def state(self) -> dict[str, Any]:
        assert self.cursor is not None
        return json.loads(self.cursor)

    def make_due(self) -> None:
        """Jump to the next attempt without waiting for it (the wait itself is asserted)."""
        state = self.state
        state["next_attempt_at"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        self.cursor = json.dumps(state)


def _events(database_url: str) -> list[Any]:
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(orchestrator_events).order_by("id")).all()
    finally:
        engine.dispose()


def _seed_latest_run(database_url: str) -> None:
    """One collection run: one target up, one down, so the heartbeat says 'degraded'."""
    now = datetime.now(UTC) - timedelta(seconds=20)
    rows = [
        SnapshotRow(run_id="cycle-1", sample_index=0, target="llama-a", engine="vllm", model="m",
                    collected_at=now, up=True, error=None, scrape_ms=3.0, body_bytes=100,
                    snapshot=CanonicalSnapshot(model="m", requests_running=1.0)),
        SnapshotRow(run_id="cycle-1", sample_index=0, target="qwen-b", engine="sglang",
                    model=None, collected_at=now, up=False, error="connection failed",
                    scrape_ms=1.0, body_bytes=None, snapshot=None),
    ]  # fmt: skip
    engine = DatabaseResource(url=database_url).get_engine()
    with engine.begin() as connection:
        insert_snapshots(connection, rows)


def test_registers_then_heartbeats_every_interval(
    orchestrator: TestOrchestrator, database_url: str, tmp_path: Path
) -> None:
    _seed_latest_run(database_url)
    ticker = Ticker(_resources(orchestrator.url, database_url, tmp_path))

    message = ticker.tick()
    assert message.startswith("registered with the orchestrator (HTTP 201")
    (register,) = orchestrator.requests
    assert register.path == "/api/v1/agents/register"
    assert register.headers["authorization"] == f"Bearer {TOKEN}"
    body = register.body
    assert body["agent_id"] == "perf-7" and body["agent_type"] == "performance"
    assert body["version"] == __version__ and body["capabilities"] == list(CAPABILITIES)
    assert body["endpoint"] == "http://127.0.0.1:8002"
    assert body["metadata"]["environment"] == "test"
    assert body["metadata"]["targets"] == 2
    assert body["metadata"]["engines"] == {"vllm": 1, "sglang": 1}
    state = ticker.state
    assert state["registered"] is True and state["consecutive_failures"] == 0
    assert state["last_status"] == "registered" and state["last_heartbeat_at"] is None

    assert ticker.tick().startswith("next heartbeat due in")
    assert len(orchestrator.requests) == 1  # not yet: the interval has not passed

    time.sleep(INTERVAL)
    assert ticker.tick().startswith("heartbeat sent (degraded; HTTP 200")
    heartbeat = orchestrator.requests[-1]
    assert heartbeat.path == "/api/v1/agents/perf-7/heartbeat"
    assert heartbeat.body["agent_id"] == "perf-7" and heartbeat.body["status"] == "degraded"
    assert datetime.fromisoformat(heartbeat.body["timestamp"]) <= datetime.now(UTC)
    summary = heartbeat.body["summary"]
    assert summary["targets_total"] == 2 and summary["targets_up"] == 1
    assert summary["open_recommendations"] == 0 and summary["regressions"] == 0
    assert summary["critical_bottlenecks"] == 0
    assert 19 <= summary["last_cycle_age_s"] < 60
    assert ticker.state["last_heartbeat_at"] is not None

    events = _events(database_url)
    assert [(e.kind, e.success, e.status_code) for e in events] == [
        ("register", True, 201),
        ("heartbeat", True, 200),
    ]
    assert all(e.agent_id == "perf-7" and e.latency_ms > 0 and e.error is None for e in events)
    assert events[1].detail["status"] == "degraded"
    assert events[1].detail["summary"]["targets_up"] == 1


def test_unknown_agent_registers_again(
    orchestrator: TestOrchestrator, sqlite_url: str, tmp_path: Path
) -> None:
    ticker = Ticker(_resources(orchestrator.url, sqlite_url, tmp_path))
    ticker.tick()
    orchestrator.forget()
    ticker.make_due()
    message = ticker.tick()
    assert "did not know the agent (HTTP 404)" in message and "registered" in message
    assert orchestrator.kinds() == ["register", "heartbeat", "register"]
    assert [(e.kind, e.status_code) for e in _events(sqlite_url)] == [
        ("register", 201),
        ("heartbeat", 404),
        ("register", 201),
    ]
    assert ticker.state["registered"] is True


def test_outages_back_off_are_recorded_and_never_raise(
    orchestrator: TestOrchestrator, sqlite_url: str, tmp_path: Path
) -> None:
    ticker = Ticker(_resources(orchestrator.url, sqlite_url, tmp_path))
    ticker.tick()
    ceilings = []
    for failures, breakage in enumerate(["500", "hang", "closed"], start=1):
        if breakage == "500":
            orchestrator.fail_with(500)
        elif breakage == "hang":
            orchestrator.hang()
        else:
            port = int(orchestrator.url.rsplit(":", 1)[1])
            orchestrator.stop()
        ticker.make_due()
        before = datetime.now(UTC)
        message = ticker.tick()
        state = ticker.state
        assert state["consecutive_failures"] == failures and state["last_status"] == "failed"
        assert f"{failures} consecutive failure(s), retrying in" in message
        wait = (datetime.fromisoformat(state["next_attempt_at"]) - before).total_seconds()
        ceiling = INTERVAL * 2 ** (failures - 1)
        assert ceiling / 2 - 0.5 <= wait <= ceiling + 0.5  # the tick itself takes a moment
        ceilings.append(ceiling)
        # Not due yet: a tick in between sends nothing.
        if breakage == "500":
            sent = len(orchestrator.requests)
            assert "backing off after 1 failure(s)" in ticker.tick()
            assert len(orchestrator.requests) == sent

    failed = [e for e in _events(sqlite_url) if not e.success]
    assert [e.status_code for e in failed] == [500, None, None]
    assert failed[0].error.startswith("HTTP 500")
    assert failed[1].error == "timeout after 0.3s"
    assert failed[2].error.startswith("connection failed")
    assert [e.detail["consecutive_failures"] for e in failed] == [1, 2, 3]

    # The orchestrator comes back on the same address: the next heartbeat heals everything.
    orchestrator.recover()
    orchestrator.start(port=port)
    ticker.make_due()
    assert ticker.tick().startswith("heartbeat sent")
    assert ticker.state["consecutive_failures"] == 0 and ticker.state["last_error"] is None


def test_the_token_never_leaks(
    orchestrator: TestOrchestrator,
    sqlite_url: str,
    tmp_path: Path,
    logs: Output,
) -> None:
    ticker = Ticker(_resources(orchestrator.url, sqlite_url, tmp_path))
    ticker.tick()
    cursors = [ticker.cursor]
    # A careless orchestrator that echoes the Authorization header in its error answers.
    orchestrator.fail_with(500, echo_headers=True)
    ticker.make_due()
    ticker.tick()
    cursors.append(ticker.cursor)
    orchestrator.recover()
    orchestrator.hang()
    ticker.make_due()
    ticker.tick()
    cursors.append(ticker.cursor)
    orchestrator.recover()

    assert orchestrator.requests[0].headers["authorization"] == f"Bearer {TOKEN}"
    events = _events(sqlite_url)
    assert len(events) == 3 and "***" in (events[1].error or "")
    seen = "\n".join(
        [logs.text, *map(str, cursors), *ticker.messages, *(str(tuple(e)) for e in events)]
    )
    assert TOKEN not in seen
    assert "told to fail" in seen  # the error itself is kept, only the secret is gone
    assert "HTTP 500" in logs.text and "timeout after 0.3s" in logs.text  # logs were captured


def test_standalone_skips_without_touching_anything(sqlite_url: str, tmp_path: Path) -> None:
    ticker = Ticker(_resources(None, sqlite_url, tmp_path))
    assert ticker.tick() == STANDALONE == "standalone: ORCHESTRATOR_URL is not set"
    assert ticker.cursor is None
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()


def test_a_database_outage_still_heartbeats_as_unhealthy(
    orchestrator: TestOrchestrator, tmp_path: Path, logs: Output
) -> None:
    broken = f"postgresql+psycopg://perf:pw-x1@127.0.0.1:{closed_port()}/perf"
    ticker = Ticker(_resources(orchestrator.url, broken, tmp_path))
    assert ticker.tick().startswith("registered")
    ticker.make_due()
    assert ticker.tick().startswith("heartbeat sent (unhealthy")
    summary = orchestrator.requests[-1].body["summary"]
    assert summary["error"].startswith("database unavailable")
    assert "pw-x1" not in logs.text and "pw-x1" not in summary["error"]
    assert "could not record" in logs.text
