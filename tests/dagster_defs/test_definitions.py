import os

from dagster import DefaultScheduleStatus, DefaultSensorStatus, Definitions, EnvVar

from perf_pipelines.definitions import build_resources, defs
from perf_pipelines.settings import load_settings


def test_definitions_load_with_the_design_names() -> None:
    Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    assert repository.has_job("optimization_cycle")
    assert repository.has_job("health_check")
    assert repository.has_job("retention")
    assert {s.name for s in repository.schedule_defs} >= {
        "optimization_cycle_schedule",
        "health_check_schedule",
        "retention_schedule",
    }
    assert {s.name for s in repository.sensor_defs} >= {"orchestrator_heartbeat"}
    asset_keys = {key.to_user_string() for key in repository.asset_graph.get_all_asset_keys()}
    assert {"metric_snapshots", "agent_health"} <= asset_keys


def test_health_and_heartbeat_run_by_default() -> None:
    sensor = defs.resolve_sensor_def("orchestrator_heartbeat")
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    assert sensor.targets == []  # side effects only: it starts no runs
    assert sensor.minimum_interval_seconds is not None
    schedule = defs.resolve_schedule_def("health_check_schedule")
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    assert schedule.execution_timezone == "UTC"


def test_optimization_cycle_covers_the_four_assets() -> None:
    job = defs.resolve_job_def("optimization_cycle")
    assert {key.to_user_string() for key in job.asset_layer.executable_asset_keys} == {
        "metric_snapshots",
        "bottleneck_reports",
        "tuning_recommendations",
        "recommendation_outcomes",
    }


def test_secrets_reach_the_resources_only_as_env_vars(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A secret from `.env` (here: an override, the same path) is an EnvVar too, exported into the
    process environment so that it resolves; one from the environment keeps its value."""
    monkeypatch.delenv("ORCHESTRATOR_TOKEN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    url = "postgresql+psycopg://perf:db-s3cret@127.0.0.1:5432/perf"
    resources = build_resources(load_settings(orchestrator_token="s3cret", database_url=url))
    assert resources["agent"].orchestrator_token == EnvVar("ORCHESTRATOR_TOKEN")  # type: ignore[attr-defined]
    assert resources["database"].url == EnvVar("DATABASE_URL")  # type: ignore[attr-defined]
    assert os.environ["ORCHESTRATOR_TOKEN"] == "s3cret" and os.environ["DATABASE_URL"] == url
    monkeypatch.setenv("ORCHESTRATOR_TOKEN", "from-env")
    assert build_resources(load_settings())["agent"].orchestrator_token == EnvVar(  # type: ignore[attr-defined]
        "ORCHESTRATOR_TOKEN"
    )
    assert os.environ["ORCHESTRATOR_TOKEN"] == "from-env"
