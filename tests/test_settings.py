import socket
from pathlib import Path

import pytest

from perf_pipelines.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env from the developer's checkout
    for name in (
        "DATABASE_URL",
        "ORCHESTRATOR_URL",
        "ORCHESTRATOR_TOKEN",
        "PORT",
        "HOST",
        "PERF_TARGETS",
        "SIDECAR_URL",
    ):
        monkeypatch.delenv(name, raising=False)


def test_defaults_follow_the_design() -> None:
    settings = load_settings()
    assert settings.port == 8002
    assert settings.host == "127.0.0.1"
    assert settings.agent_id == "performance-agent-001"
    assert settings.agent_type == "performance"
    assert settings.orchestrator_url is None
    assert settings.orchestrator_register_endpoint == "/api/v1/agents/register"
    assert settings.heartbeat_path == "/api/v1/agents/performance-agent-001/heartbeat"
    assert settings.orchestrator_heartbeat_interval == 30
    assert settings.resolved_database_url.startswith("sqlite:///")
    assert settings.resolved_database_url.endswith(".perf_home/perf_pipelines.db")


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9100")
    monkeypatch.setenv("AGENT_ID", "perf-7")
    monkeypatch.setenv("ORCHESTRATOR_URL", "http://orchestrator.internal:8000/")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db/perf")
    settings = load_settings()
    assert settings.port == 9100
    assert settings.orchestrator_url == "http://orchestrator.internal:8000"
    assert settings.heartbeat_path == "/api/v1/agents/perf-7/heartbeat"
    # a bare postgresql:// URL is pinned to the psycopg 3 driver we ship
    assert settings.resolved_database_url == "postgresql+psycopg://u@db/perf"


def test_dotenv_file_is_supported(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SCRAPE_TIMEOUT_S=2.5\nLOG_LEVEL=DEBUG\n")
    settings = load_settings()
    assert settings.scrape_timeout_s == 2.5
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "not-a-port"),
        ("PORT", "70000"),
        ("SCRAPE_TIMEOUT_S", "-1"),
        ("SCRAPE_CONCURRENCY", "0"),
        ("ORCHESTRATOR_URL", "ftp://orchestrator"),
        ("PROMETHEUS_URL", "http://user:pw@prometheus:9090"),
        ("DATABASE_URL", "mysql://db/perf"),
        ("LOG_LEVEL", "LOUD"),
        ("ORCHESTRATOR_HEARTBEAT_ENDPOINT", "no-leading-slash"),
        ("OPTIMIZATION_CYCLE_CRON", "every five minutes"),
        ("HEALTH_CHECK_CRON", "61 * * * *"),
        ("RETENTION_CRON", "0 3 * * * 5"),  # six fields: croniter reads seconds, Dagster does not
        ("RETENTION_CRON", "0 3 30 2 *"),  # never fires
        ("SIDECAR_URL", "sidecar:8002"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert variable in str(excinfo.value)


def test_rejected_token_value_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_TOKEN", "s3cr3t-token-value")
    monkeypatch.setenv("PORT", "bad")
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert "s3cr3t-token-value" not in str(excinfo.value)


def test_token_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_TOKEN", "s3cr3t-token-value")
    settings = load_settings()
    assert settings.token == "s3cr3t-token-value"
    assert "s3cr3t-token-value" not in repr(settings)


def test_the_sidecar_url_sent_to_the_orchestrator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9100")
    assert load_settings().advertised_sidecar_url == "http://127.0.0.1:9100"
    # A wildcard bind address is not reachable: the host name stands in for it.
    monkeypatch.setenv("HOST", "0.0.0.0")
    assert load_settings().advertised_sidecar_url == f"http://{socket.gethostname()}:9100"
    monkeypatch.setenv("SIDECAR_URL", "https://perf-agent.example.internal:8443/")
    assert load_settings().advertised_sidecar_url == "https://perf-agent.example.internal:8443"
