"""Schemathesis against the sidecar's own OpenAPI schema, in process (ASGI), on a real migrated
SQLite database with rows in every table the routes read.

Every operation gets generated valid and invalid requests (path, query, headers, body); each
response must not be a 5xx and must conform to the schema: documented status code, content
type, and body schema. Twice: without a token (the default), and with ORCHESTRATOR_TOKEN set,
where the status route must answer 401/403 as documented. The database is up here, so the
documented 503 of the detailed health must not appear either (tests/sidecar covers it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from sqlalchemy import insert

from perf_pipelines.sidecar.app import create_app
from perf_pipelines.storage.db import create_db_engine, ensure_schema
from perf_pipelines.storage.schema import (
    agent_health,
    metric_snapshots,
    orchestrator_events,
    tuning_recommendations,
)
from tests.sidecar.support import event, health_row, make_settings, recommendation, snapshot

TOKEN = "schemathesis-test-token-123456"
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _app(directory: Path, **overrides: object) -> Iterator[FastAPI]:
    engine = create_db_engine(f"sqlite:///{directory / 'perf.db'}")
    ensure_schema(engine)
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(
            insert(tuning_recommendations),
            [
                recommendation("rec-open", at=now),
                recommendation("rec-applied", status="applied", outcome="improved", at=now),
                recommendation("rec-rejected", status="rejected", at=now),
                recommendation("rec-superseded", status="superseded", at=now),
            ],
        )
        connection.execute(
            insert(metric_snapshots),
            [
                snapshot("run-1", "vllm-a", now - timedelta(seconds=30)),
                snapshot("run-1", "vllm-b", now - timedelta(seconds=30), up=False, error="down"),
            ],
        )
        connection.execute(insert(agent_health), [health_row(now - timedelta(seconds=20))])
        connection.execute(
            insert(orchestrator_events),
            [event(now - timedelta(seconds=10), "heartbeat", True, status_code=200)],
        )
    yield create_app(make_settings(**overrides), engine, db_deadline_s=5.0)
    engine.dispose()


@pytest.fixture(scope="module")
def open_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    for app in _app(tmp_path_factory.mktemp("sidecar-open")):
        yield schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)


@pytest.fixture(scope="module")
def token_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    for app in _app(tmp_path_factory.mktemp("sidecar-token"), orchestrator_token=TOKEN):
        yield schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)


# Listed here rather than through `schemathesis.pytest.from_fixture`, whose lazy loader breaks
# on pytest 9 (it writes `Function._nodeid`); the first test keeps the list complete.
OPERATIONS = [
    ("GET", "/api/v1/health"),
    ("GET", "/api/v1/health/detailed"),
    ("GET", "/api/v1/"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/recommendations"),
    ("POST", "/api/v1/recommendations/{rec_id}/status"),
]
# Routes without parameters or body have no invalid input to generate.
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or "recommendations" in path
]


def run_operation(
    schema: schemathesis.BaseSchema,
    method: str,
    path: str,
    mode: GenerationMode,
    headers: dict[str, str] | None = None,
    path_parameters: dict[str, str] | None = None,
) -> Counter[int]:
    operation = schema[path][method]
    statuses: Counter[int] = Counter()

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    def check(case: schemathesis.Case) -> None:
        if headers:
            case.headers = {**(case.headers or {}), **headers}
        response = case.call_and_validate()
        assert response.status_code < 500, (case.as_curl_command(), response.text)
        statuses[response.status_code] += 1

    check()
    return statuses


def test_the_list_covers_every_operation(open_schema: schemathesis.BaseSchema) -> None:
    documented = {
        (method.upper(), path)
        for path, item in open_schema.raw_schema["paths"].items()
        for method in item
    }
    assert documented == set(OPERATIONS)


@pytest.mark.parametrize(
    ("method", "path", "mode"), CASES, ids=[f"{m} {p} {g}" for m, p, g in CASES]
)
def test_every_route_without_a_token(
    open_schema: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    statuses = run_operation(open_schema, method, path, mode)
    if path == "/api/v1/health/detailed":
        assert set(statuses) == {200}  # the database is up: never the documented 503


@pytest.mark.parametrize("rec_id", ["rec-open", "rec-applied", "rec-rejected", "rec-superseded"])
def test_status_route_on_stored_recommendations(
    open_schema: schemathesis.BaseSchema, rec_id: str
) -> None:
    method, path = OPERATIONS[-1]
    statuses = run_operation(
        open_schema, method, path, GenerationMode.POSITIVE, path_parameters={"rec_id": rec_id}
    )
    assert set(statuses) <= {200, 409}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_status_route_with_a_token_set(
    token_schema: schemathesis.BaseSchema, mode: GenerationMode
) -> None:
    method, path = OPERATIONS[-1]
    # No credentials: 401 every time, whatever the body (checked before the body is read).
    assert set(run_operation(token_schema, method, path, mode)) == {401}
    wrong = run_operation(token_schema, method, path, mode, {"Authorization": "Bearer nope"})
    assert set(wrong) == {403}
    right = run_operation(token_schema, method, path, mode, {"Authorization": f"Bearer {TOKEN}"})
    assert not set(right) & {401, 403}


def test_the_schema_documents_every_status_the_routes_return(
    open_schema: schemathesis.BaseSchema,
) -> None:
    paths = open_schema.raw_schema["paths"]
    post = paths["/api/v1/recommendations/{rec_id}/status"]["post"]["responses"]
    assert {"200", "401", "403", "404", "409", "413", "422"} <= set(post)
    assert "503" in paths["/api/v1/health/detailed"]["get"]["responses"]
