"""PROMETHEUS_* settings and how they reach the `scraper` resource."""

from __future__ import annotations

import os

import pytest
from dagster import EnvVar

from perf_pipelines.cli.prometheus import _config
from perf_pipelines.definitions import build_resources
from perf_pipelines.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env from the working tree
    for name in (
        "PROMETHEUS_URL",
        "PROMETHEUS_TOKEN",
        "PROMETHEUS_USERNAME",
        "PROMETHEUS_PASSWORD",
        "PROMETHEUS_BACKFILL_MINUTES",
        "PROMETHEUS_CYCLE_TIMEOUT_S",
        "PROMETHEUS_DEDUP_LABELS",
    ):
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.prometheus_url is None
    assert settings.prometheus_backfill_minutes == 60
    assert settings.prometheus_backfill_step_s == 15
    assert settings.prometheus_query_timeout_s == 10
    scraper = build_resources(settings)["scraper"]
    assert scraper.prometheus_url is None and scraper.prometheus_token is None
    config = scraper.prometheus_config()
    assert config.cycle_timeout_s == 60
    assert config.dedup_labels == (
        "job",
        "replica",
        "prometheus_replica",
        "prometheus",
        "__replica__",
    )


def test_cycle_deadline_and_dedup_labels_reach_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_URL", "http://prom:9090")
    monkeypatch.setenv("PROMETHEUS_CYCLE_TIMEOUT_S", "12.5")
    monkeypatch.setenv("PROMETHEUS_DEDUP_LABELS", "job, cluster_replica")
    settings = load_settings()
    # the asset's resource and the `perf-pipelines prometheus` commands alike
    for config in (build_resources(settings)["scraper"].prometheus_config(), _config(settings)):
        assert config.cycle_timeout_s == 12.5
        assert config.dedup_labels == ("job", "cluster_replica")


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"PROMETHEUS_URL": "ftp://prom:9090"}, "PROMETHEUS_URL must be an http(s) URL"),
        ({"PROMETHEUS_URL": "http://u:p@prom:9090"}, "must not carry credentials"),
        (
            {"PROMETHEUS_TOKEN": "abcd1234", "PROMETHEUS_USERNAME": "agent"},
            "set PROMETHEUS_TOKEN or PROMETHEUS_USERNAME/PROMETHEUS_PASSWORD, not both",
        ),
        ({"PROMETHEUS_PASSWORD": "pw-123456"}, "PROMETHEUS_PASSWORD needs PROMETHEUS_USERNAME"),
        ({"PROMETHEUS_BACKFILL_MINUTES": "-5"}, "PROMETHEUS_BACKFILL_MINUTES"),
        ({"PROMETHEUS_BACKFILL_STEP_S": "0"}, "PROMETHEUS_BACKFILL_STEP_S"),
        ({"PROMETHEUS_CYCLE_TIMEOUT_S": "0"}, "PROMETHEUS_CYCLE_TIMEOUT_S"),
        ({"PROMETHEUS_DEDUP_LABELS": "job,{bad}"}, "PROMETHEUS_DEDUP_LABELS"),
    ],
)
def test_bad_values_fail_at_start_up_without_echoing_secrets(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], message: str
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert message in str(raised.value)
    for secret in ("abcd1234", "pw-123456"):
        assert secret not in str(raised.value)


def test_settings_reach_the_scraper_resource_with_secrets_as_env_vars(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROMETHEUS_URL", "https://prometheus.internal:9090/")
    monkeypatch.setenv("PROMETHEUS_TOKEN", "tok-123456")
    monkeypatch.setenv("PROMETHEUS_BACKFILL_MINUTES", "30")
    settings = load_settings()
    assert "tok-123456" not in repr(settings)
    resources = build_resources(settings)
    scraper = resources["scraper"]
    assert scraper.prometheus_url == "https://prometheus.internal:9090"
    assert scraper.prometheus_backfill_minutes == 30
    # The resource holds a reference to the variable, not the token, so the UI never shows it.
    assert isinstance(scraper.prometheus_token, EnvVar)
    assert "tok-123456" not in repr(scraper)
    config = scraper.prometheus_config()
    assert config.url == "https://prometheus.internal:9090"
    assert "tok-123456" not in repr(config)


def test_a_secret_from_dotenv_is_an_env_var_too(tmp_path, monkeypatch) -> None:
    # EnvVar resolves from the process environment only, so the code location exports what
    # `.env` gave (tests/conftest.py restores the environment afterwards).
    (tmp_path / ".env").write_text(
        "PROMETHEUS_URL=http://prom:9090\nPROMETHEUS_USERNAME=agent\nPROMETHEUS_PASSWORD=pw-654321\n"
    )
    scraper = build_resources(load_settings())["scraper"]
    assert isinstance(scraper.prometheus_password, EnvVar)
    assert os.environ["PROMETHEUS_PASSWORD"] == "pw-654321"
    assert "pw-654321" not in repr(scraper)
    assert scraper.prometheus_username == "agent"
