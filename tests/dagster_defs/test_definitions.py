from dagster import DefaultScheduleStatus, DefaultSensorStatus, Definitions

from perf_pipelines.definitions import defs


def test_definitions_load_with_the_design_names() -> None:
    Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    assert repository.has_job("optimization_cycle")
    assert repository.has_job("health_check")
    assert {s.name for s in repository.schedule_defs} >= {
        "optimization_cycle_schedule",
        "health_check_schedule",
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
