"""The orchestrator client against a real loopback orchestrator: it reports, it never raises."""

from __future__ import annotations

import time

import pytest

from perf_pipelines.orchestrator.client import OrchestratorClient
from tests.support.http_servers import closed_port
from tests.support.orchestrator import REGISTER_PATH, TestOrchestrator, run_orchestrator

TOKEN = "s3cr3t-orchestrator-token"


@pytest.fixture
def orchestrator():
    with run_orchestrator(token=TOKEN) as server:
        yield server


def test_posts_json_with_the_bearer_token(orchestrator: TestOrchestrator) -> None:
    with OrchestratorClient(orchestrator.url, token=TOKEN, timeout_s=2) as client:
        attempt = client.post_json("register", REGISTER_PATH, {"agent_id": "a-1"})
    assert attempt.success and attempt.status_code == 201 and attempt.error is None
    assert attempt.response == {"registered": True, "agent_id": "a-1"}
    assert attempt.latency_ms > 0 and attempt.kind == "register"
    (request,) = orchestrator.requests
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.body == {"agent_id": "a-1"}


def test_a_wrong_token_is_reported_without_echoing_it(orchestrator: TestOrchestrator) -> None:
    with OrchestratorClient(orchestrator.url, token="wrong-token-123", timeout_s=2) as client:
        attempt = client.post_json("register", REGISTER_PATH, {"agent_id": "a-1"})
    assert not attempt.success and attempt.status_code == 401
    assert "ORCHESTRATOR_TOKEN" in (attempt.error or "")
    assert "wrong-token-123" not in (attempt.error or "")


@pytest.mark.parametrize("status", [500, 503, 302])
def test_error_statuses_are_failures(orchestrator: TestOrchestrator, status: int) -> None:
    orchestrator.fail_with(status)
    with OrchestratorClient(orchestrator.url, token=TOKEN, timeout_s=2) as client:
        attempt = client.post_json("heartbeat", "/api/v1/agents/a-1/heartbeat", {})
    assert not attempt.success and attempt.status_code == status
    assert attempt.error is not None and attempt.error.startswith(f"HTTP {status}")
    if status == 302:
        assert "redirect not followed" in attempt.error
    assert len(orchestrator.requests) == 1  # a redirect is not followed


def test_unknown_agent_is_a_404(orchestrator: TestOrchestrator) -> None:
    with OrchestratorClient(orchestrator.url, token=TOKEN, timeout_s=2) as client:
        attempt = client.post_json("heartbeat", "/api/v1/agents/nobody/heartbeat", {"x": 1})
    assert attempt.unknown_agent and not attempt.success


def test_a_hanging_orchestrator_times_out(orchestrator: TestOrchestrator) -> None:
    orchestrator.hang()
    started = time.monotonic()
    with OrchestratorClient(orchestrator.url, token=TOKEN, timeout_s=0.3) as client:
        attempt = client.post_json("register", REGISTER_PATH, {"agent_id": "a-1"})
    assert time.monotonic() - started < 2
    assert not attempt.success and attempt.status_code is None
    assert attempt.error == "timeout after 0.3s"


def test_a_closed_port_is_a_connection_error() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with OrchestratorClient(url, token=TOKEN, timeout_s=1) as client:
        attempt = client.post_json("register", REGISTER_PATH, {"agent_id": "a-1"})
    assert not attempt.success and attempt.status_code is None
    assert attempt.error is not None and attempt.error.startswith("connection failed")
    assert TOKEN not in attempt.error


def test_an_oversized_answer_is_not_read_beyond_the_cap(orchestrator: TestOrchestrator) -> None:
    orchestrator.pad_answers(200_000)
    with OrchestratorClient(
        orchestrator.url, token=TOKEN, timeout_s=2, max_response_bytes=4096
    ) as client:
        attempt = client.post_json("register", REGISTER_PATH, {"agent_id": "a-1"})
    # The status decides; the oversized body is dropped, not parsed.
    assert attempt.success and attempt.status_code == 201 and attempt.response is None


def test_a_base_url_path_prefix_is_kept(orchestrator: TestOrchestrator) -> None:
    with OrchestratorClient(orchestrator.url + "/orch/", token=TOKEN, timeout_s=2) as client:
        client.post_json("register", REGISTER_PATH, {"agent_id": "a-1"})
    assert orchestrator.requests[0].path == "/orch" + REGISTER_PATH
