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


def test_a_token_from_dotenv_reaches_the_resource(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """EnvVar only resolves from the process environment; a token set in `.env` must still work,
    and one in the environment stays out of the config shown in the UI."""
    monkeypatch.delenv("ORCHESTRATOR_TOKEN", raising=False)
    from_dotenv = build_resources(load_settings(orchestrator_token="s3cret"))["agent"]
    assert from_dotenv.orchestrator_token == "s3cret"  # type: ignore[attr-defined]
    monkeypatch.setenv("ORCHESTRATOR_TOKEN", "s3cret")
    from_env = build_resources(load_settings())["agent"]
    assert isinstance(from_env.orchestrator_token, EnvVar)  # type: ignore[attr-defined]
