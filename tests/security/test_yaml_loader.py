"""The targets file is read with a safe YAML loader: the `# nosec B506` in targets.py rests on
this. (Hostile files as a whole are fuzzed in tests/fuzz/test_targets_fuzz.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from perf_pipelines import targets
from perf_pipelines.targets import TargetsError, load_targets


def test_the_loader_constructs_only_plain_data() -> None:
    loader = targets._YAML_LOADER
    assert issubclass(loader, yaml.constructor.SafeConstructor)
    assert not issubclass(loader, yaml.constructor.FullConstructor)


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system ['touch {marker}']",
        "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
        "!!python/name:os.system",
        "!!python/module:os",
    ],
)
def test_python_tags_are_refused_and_run_nothing(tmp_path: Path, tag: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "targets.yaml"
    path.write_text(f"targets: {tag.format(marker=marker)}\n")
    with pytest.raises(TargetsError, match="not valid YAML"):
        load_targets(path)
    assert not marker.exists()
