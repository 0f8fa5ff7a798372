"""The orchestrator flaps (up, 503, up, forgets the agent, port closed, up …) and is slow. Extends
tests/dagster_defs/test_sensor.py, which covers one outage of each kind, exponential back-off,
re-registration after a 404 and the token never leaking: here the outages alternate with
recoveries and answers are late, and every attempt must be recorded exactly once, no tick may
raise or outlast the client timeout, and back-off must reset on each success (no runaway).
"""

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.dagster_defs.test_sensor import INTERVAL, TOKEN, Ticker, _events, _resources
from tests.support.orchestrator import TestOrchestrator, run_orchestrator

CLIENT_TIMEOUT_S = 0.3  # orchestrator_timeout_s in test_sensor._resources


def test_a_flapping_orchestrator_never_breaks_a_tick(sqlite_url: str, tmp_path: Path) -> None:
    with run_orchestrator(token=TOKEN) as orchestrator:
        ticker = Ticker(_resources(orchestrator.url, sqlite_url, tmp_path))
        assert ticker.tick().startswith("registered")
        port = int(orchestrator.url.rsplit(":", 1)[1])
        steps = ["503", "ok", "503", "ok", "forget", "closed", "ok", "500", "ok", "forget", "ok"]
        expected = [("register", True, 201)]
        for step in steps:
            if step in ("503", "500"):
                orchestrator.fail_with(int(step))
            elif step == "forget":  # an orchestrator restart that lost its registrations
                orchestrator.forget()
            elif step == "closed":
                orchestrator.stop()
            elif step == "ok":
                orchestrator.recover()
                if not orchestrator.serving:  # came back on the same address
                    orchestrator.start(port=port)
            ticker.make_due()
            before = datetime.now(UTC)
            started = time.monotonic()
            message = ticker.tick()
            assert time.monotonic() - started < CLIENT_TIMEOUT_S * 2 + 1.5, (step, message)
            state = ticker.state
            if step in ("503", "500", "closed"):
                # Each outage follows a success: one failure, the first back-off step only.
                assert state["consecutive_failures"] == 1, (step, message)
                assert "1 consecutive failure(s), retrying in" in message
                wait = (datetime.fromisoformat(state["next_attempt_at"]) - before).total_seconds()
                assert wait <= INTERVAL + 0.5
                expected.append(("heartbeat", False, None if step == "closed" else int(step)))
            elif step == "forget":
                assert "did not know the agent (HTTP 404)" in message and "registered" in message
                assert state["consecutive_failures"] == 0
                expected += [("heartbeat", False, 404), ("register", True, 201)]
            else:
                assert message.startswith("heartbeat sent"), message
                assert state["consecutive_failures"] == 0 and state["last_error"] is None
                expected.append(("heartbeat", True, 200))
        assert ticker.state["registered"] is True
        requests = list(orchestrator.requests)

    events = _events(sqlite_url)
    # Every attempt is one row, in order, none twice and none missing.
    assert [(e.kind, e.success, e.status_code) for e in events] == expected
    assert len(events) == len(requests) + steps.count("closed")  # a closed port sees nothing
    assert len({e.id for e in events}) == len(events)


class SlowOrchestrator(TestOrchestrator):
    """Answers every request `delay` seconds after it arrived (then as usual)."""

    __test__ = False
    delay = 0.0

    async def _answer(self, *args: Any) -> tuple[int, Any]:
        await asyncio.sleep(self.delay)
        return await super()._answer(*args)


def test_a_slow_orchestrator_costs_at_most_the_client_timeout(
    sqlite_url: str, tmp_path: Path
) -> None:
    orchestrator = SlowOrchestrator(token=TOKEN)
    orchestrator.start()
    try:
        ticker = Ticker(_resources(orchestrator.url, sqlite_url, tmp_path))
        ticker.tick()

        # Slow but within the timeout: a success, with the latency it really had.
        orchestrator.delay = 0.15
        ticker.make_due()
        assert ticker.tick().startswith("heartbeat sent")

        # Slower than the timeout: the tick gives up at the timeout and backs off; the late
        # answer is ignored (the attempt stays a failure) and the next one waits for its back-off.
        orchestrator.delay = 1.0
        ticker.make_due()
        sent_before = len(orchestrator.requests)
        before = datetime.now(UTC)
        started = time.monotonic()
        message = ticker.tick()
        took = time.monotonic() - started
        assert "1 consecutive failure(s)" in message
        assert f"timeout after {CLIENT_TIMEOUT_S:g}s" in ticker.state["last_error"]
        assert took < CLIENT_TIMEOUT_S + 0.7, took
        # The back-off counts from the attempt's start: at least half the first step (jitter).
        wait = datetime.fromisoformat(ticker.state["next_attempt_at"]) - before
        assert wait.total_seconds() >= INTERVAL / 2 - 0.05
        time.sleep(1.0)  # the late 200 has been written by now, to a client that left
        assert len(orchestrator.requests) == sent_before + 1

        orchestrator.delay = 0.0
        ticker.make_due()
        assert ticker.tick().startswith("heartbeat sent")
    finally:
        orchestrator.stop()

    events = _events(sqlite_url)
    assert [(e.kind, e.success) for e in events] == [
        ("register", True),
        ("heartbeat", True),
        ("heartbeat", False),
        ("heartbeat", True),
    ]
    slow, timed_out = events[1], events[2]
    assert slow.latency_ms >= 150 and slow.error is None
    assert timed_out.error == f"timeout after {CLIENT_TIMEOUT_S:g}s"
    assert CLIENT_TIMEOUT_S * 1000 <= timed_out.latency_ms < (CLIENT_TIMEOUT_S + 0.5) * 1000
