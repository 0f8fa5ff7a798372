"""The simulator refuses what the real engines refuse: its accepted values agree with the
product's engine truth table (perf_pipelines/engines/truth_table.yaml), which another reading
of the same engine sources produced. Both sides cite the file and tag they were read from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from perf_lab.simulator.generator import VERSIONS
from perf_lab.simulator.settings import SCHEMAS

pytest.importorskip(
    "perf_pipelines.engines.truth", reason="the engine truth table has no loader yet"
)
import perf_pipelines.engines

TABLE = Path(perf_pipelines.engines.__file__).parent / "truth_table.yaml"
# Simulator settings that are no engine flag: llama.cpp's model file (its GGUF quantization).
NOT_FLAGS = {("llamacpp", "model_quant")}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in str(text).lstrip("vb").split(".") if part.isdigit())


def _accepted(entry: dict[str, Any], version: str) -> bool:
    since, until = entry.get("since"), entry.get("until")
    v = _version(version)
    return (since is None or _version(since) <= v) and (until is None or v < _version(until))


def _disagreements() -> list[str]:
    table = yaml.safe_load(TABLE.read_text(encoding="utf-8"))["engines"]
    problems = []
    for engine, schema in SCHEMAS.items():
        parameters = table.get(engine, {}).get("parameters", {})
        for name, spec in schema.items():
            if spec.choices is None or (engine, name) in NOT_FLAGS:
                continue
            values = parameters.get(name, {}).get("values")
            if values is None:
                problems.append(f"{engine} {name}: not in the truth table")
                continue
            for choice in spec.choices:
                if choice is None:
                    continue
                for version in VERSIONS[engine]:
                    entry = values.get(choice)
                    if entry is None or not _accepted(entry, version):
                        problems.append(
                            f"{engine} {version} {name}={choice}: the simulator accepts it, "
                            "the truth table does not"
                        )
    return problems


def test_every_value_the_simulator_accepts_is_in_the_truth_table() -> None:
    problems = _disagreements()
    assert not problems, "\n".join(problems)
