"""One name for the code location everywhere it is named: workspace.yaml (`dagster dev -w`),
deploy/workspace.yaml (the compose deployment's UI and daemon), `[tool.dg]` (`dg` commands), the
README and the demo script, which start the UI from workspace.yaml (with `-m` Dagster names the
location after the module instead)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
NAME = "perf_pipelines"


def _locations(path: Path) -> list[str]:
    config = yaml.safe_load(path.read_text())
    return [next(iter(entry.values()))["location_name"] for entry in config["load_from"]]


def test_every_configuration_names_the_location_alike() -> None:
    assert _locations(ROOT / "workspace.yaml") == [NAME]
    assert _locations(ROOT / "deploy" / "workspace.yaml") == [NAME]
    dg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dg"]["project"]
    assert dg["code_location_name"] == NAME
    assert dg["code_location_target_module"] == "perf_pipelines.definitions"


def test_the_ui_is_started_from_the_workspace_file() -> None:
    for doc in ("README.md", "docs/prometheus.md", "scripts/demo.sh"):
        text = (ROOT / doc).read_text()
        assert "dagster dev -m" not in text, f"{doc} starts the UI with -m"
    assert "dagster dev -w workspace.yaml" in (ROOT / "scripts" / "demo.sh").read_text()


def test_the_workspace_loads_under_that_name(tmp_path: Path) -> None:
    # What the UI lists: Dagster's own loader reading the workspace file, as `dagster dev -w`.
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env={**os.environ, "DAGSTER_HOME": str(tmp_path), "PERF_HOME": str(tmp_path / "perf")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"Validation successful for code location {NAME}." in output, output
