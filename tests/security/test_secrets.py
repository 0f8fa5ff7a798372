"""Tokens and credentials never reach logs, stored error texts or start-up errors.

Already covered elsewhere, not repeated here:
- tests/test_logs.py::test_secrets_never_reach_the_log (configured token, Bearer, URL userinfo,
  password=, exception text);
- tests/test_settings.py::test_rejected_token_value_is_not_echoed;
- tests/dagster_defs/test_sensor.py (an orchestrator that echoes the Authorization header in its
  error body: the sensor's skip reason, events and logs stay clean) and
  tests/orchestrator/test_client.py::test_a_wrong_token_is_reported_without_echoing_it;
- tests/cli/test_sidecar.py::test_sidecar_process_never_logs_the_token (a real process).

Added here: the forms those miss (Basic auth headers, `redis://:pw@` URLs, secrets in `extra`
objects), a property over random secrets, and the error texts the agent stores or shows:
scrape errors (table `metric_snapshots.error`, Dagster metadata), targets errors (the Dagster
failure), settings errors (printed at start-up).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perf_pipelines.collection.collector import ScrapeError, _error_text
from perf_pipelines.logs import SecretRedactor, configure_logging
from perf_pipelines.settings import SettingsError, load_settings
from perf_pipelines.targets import TargetsError, parse_targets

SECRET = "s3cr3t-Value-9f8e7d"


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("DEBUG", secrets=[SECRET], stream=stream)
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    "message",
    [
        f"Authorization: Basic {SECRET}",
        f"headers={{'authorization': 'Basic {SECRET}'}}",
        f"redis://:{SECRET}@cache:6379/0 unreachable",
        f"postgresql+psycopg://perf:{SECRET}@db:5432/perf refused",
        f"GET http://h/metrics?access_token={SECRET}&x=1",
        f'{{"password": "{SECRET}"}}',
        f"api-key: {SECRET}",
    ],
)
def test_secret_forms_are_redacted_without_being_configured(message: str) -> None:
    # A fresh redactor: the patterns alone must catch these (no configured secret).
    assert SECRET not in SecretRedactor()(message)


def test_secrets_in_extra_objects_and_exceptions_are_redacted(log_stream: io.StringIO) -> None:
    log = logging.getLogger("perf.security")
    log.warning("request failed", extra={"headers": {"Authorization": f"Bearer {SECRET}"}})
    log.info("config %s", {"token": SECRET}, extra={"url": f"http://u:{SECRET}@h/"})
    try:
        raise httpx.HTTPStatusError(
            f"401 for http://h/?token={SECRET}",
            request=httpx.Request("GET", "http://h/", headers={"Authorization": SECRET}),
            response=httpx.Response(401),
        )
    except httpx.HTTPError:
        log.exception("orchestrator said no")
    output = log_stream.getvalue()
    assert SECRET not in output
    records = [json.loads(line) for line in output.splitlines()]
    assert len(records) == 3 and all("***" in json.dumps(r) for r in records)


@settings(max_examples=200, deadline=None)
@given(
    secret=st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=4, max_size=40
    ),
    template=st.sampled_from(
        [
            "{}",
            "token={}",
            "sent Authorization: Bearer {} to the orchestrator",
            "error: {} rejected",
            "{}{}",
            "prefix-{}-suffix",
        ]
    ),
)
def test_a_configured_secret_never_survives_redaction(secret: str, template: str) -> None:
    redact = SecretRedactor([secret])
    assert secret not in redact(template.format(secret, secret))


def test_scrape_error_texts_are_redacted() -> None:
    # What is stored in metric_snapshots.error and shown in the Dagster preview and checks.
    for exc in (
        httpx.ConnectError(f"cannot connect to http://user:{SECRET}@10.0.0.1:8000/metrics"),
        ScrapeError(f"HTTP 401 Unauthorized: Bearer {SECRET}"),
        RuntimeError(f"token={SECRET}"),
    ):
        assert SECRET not in _error_text(exc, 5.0)


@pytest.mark.parametrize(
    "url",
    [
        f"http://admin:{SECRET}@vllm-a:8000/metrics",
        f"http://:{SECRET}@vllm-a:8000/metrics",
        f"https://{SECRET}@vllm-a/metrics",
        f"ftp://admin:{SECRET}@vllm-a/metrics",  # wrong scheme and credentials
    ],
)
def test_a_targets_url_with_credentials_is_rejected_without_echoing_them(url: str) -> None:
    # This message becomes the Dagster failure of metric_snapshots.
    with pytest.raises(TargetsError) as excinfo:
        parse_targets({"targets": [{"name": "a", "url": url}]})
    assert SECRET not in str(excinfo.value)
    assert "targets.0.url" in str(excinfo.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ORCHESTRATOR_URL", f"ftp://user:{SECRET}@orchestrator"),  # echoed before the fix
        ("PROMETHEUS_URL", f"gopher://user:{SECRET}@prometheus:70"),  # echoed before the fix
        ("ORCHESTRATOR_URL", f"http://user:{SECRET}@orchestrator"),
        ("PROMETHEUS_URL", f"https://:{SECRET}@prometheus"),
        ("DATABASE_URL", f"mysql://perf:{SECRET}@db/perf"),
    ],
)
def test_rejected_urls_with_credentials_are_not_echoed_at_start_up(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as excinfo:
        load_settings(_env_file=None)
    assert variable in str(excinfo.value)
    assert SECRET not in str(excinfo.value)
