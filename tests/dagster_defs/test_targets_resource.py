"""The targets file is read once per run, however many of the cycle's assets ask for it, and
read afresh by the next run."""

from pathlib import Path

import pytest
from dagster import materialize

import perf_pipelines.dagster_defs.resources as resources_module
from perf_pipelines.dagster_defs.analysis import bottleneck_reports, tuning_recommendations
from perf_pipelines.dagster_defs.outcomes import recommendation_outcomes
from perf_pipelines.dagster_defs.resources import TargetsResource
from perf_pipelines.dagster_defs.snapshots import metric_snapshots
from perf_pipelines.targets import Target, TargetsError, load_targets
from tests.collection.test_collector import VLLM_BODY
from tests.support.cycle import cycle_resources
from tests.support.http_servers import Route, serve

FOUR_ASSETS = [
    metric_snapshots,
    bottleneck_reports,
    tuning_recommendations,
    recommendation_outcomes,
]


def _write_targets(path: Path, base_url: str, names: list[str]) -> None:
    path.write_text(
        "targets:\n"
        + "".join(f"  - {{name: {n}, url: '{base_url}/metrics', engine: vllm}}\n" for n in names)
    )


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The target names of every read of a targets file by the resource, in order."""
    seen: list[list[str]] = []

    def counting_load(path: Path) -> list[Target]:
        targets = load_targets(path)
        seen.append([t.name for t in targets])
        return targets

    monkeypatch.setattr(resources_module, "load_targets", counting_load)
    return seen


def test_one_run_of_the_cycle_reads_the_file_once_and_the_next_run_again(
    tmp_path: Path, sqlite_url: str, reads: list[list[str]]
) -> None:
    targets = tmp_path / "targets.yaml"
    with serve({"/metrics": Route(body=VLLM_BODY)}) as server:
        _write_targets(targets, server.base_url, ["vllm-a"])
        # One resources dict for both runs, as one Definitions object serves every run.
        resources = cycle_resources(sqlite_url, targets, samples=1, interval_s=0)
        first = materialize(FOUR_ASSETS, resources=resources)
        assert reads == [["vllm-a"]]  # four assets asked; the file was read once

        _write_targets(targets, server.base_url, ["vllm-a", "vllm-b"])
        second = materialize(FOUR_ASSETS, resources=resources)
    assert first.success and second.success
    assert reads == [["vllm-a"], ["vllm-a", "vllm-b"]]  # the changed file, read once
    (materialization,) = second.asset_materializations_for_node("metric_snapshots")
    assert materialization.metadata["targets_total"].value == 2


def test_the_loaded_list_is_the_callers_own(tmp_path: Path, reads: list[list[str]]) -> None:
    targets = tmp_path / "targets.yaml"
    _write_targets(targets, "http://127.0.0.1:9", ["vllm-a", "vllm-b"])
    resource = TargetsResource(path=str(targets))
    resource.load().clear()  # one asset changing its list ...
    assert [t.name for t in resource.load()] == ["vllm-a", "vllm-b"]  # ... changes no other's
    assert list(resource.by_name()) == ["vllm-a", "vllm-b"]
    assert len(reads) == 1


def test_an_unusable_file_is_not_remembered(tmp_path: Path, reads: list[list[str]]) -> None:
    targets = tmp_path / "targets.yaml"
    targets.write_text("targets: [")
    resource = TargetsResource(path=str(targets))
    for _ in range(2):  # every asset that asks reports the error, as before
        with pytest.raises(TargetsError):
            resource.load()
    _write_targets(targets, "http://127.0.0.1:9", ["vllm-a"])
    assert [t.name for t in resource.load()] == ["vllm-a"]
