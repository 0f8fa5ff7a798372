from dagster import Definitions

from perf_pipelines.definitions import defs


def test_definitions_load_with_the_design_names() -> None:
    Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    assert repository.has_job("optimization_cycle")
    assert {s.name for s in repository.schedule_defs} >= {"optimization_cycle_schedule"}
    asset_keys = {key.to_user_string() for key in repository.asset_graph.get_all_asset_keys()}
    assert "metric_snapshots" in asset_keys
