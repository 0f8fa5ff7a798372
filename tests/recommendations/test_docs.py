"""docs/detection.md states every numeric threshold of detection and every bound of the rules,
with the value the code uses: change one without the other and this fails."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import perf_pipelines.analysis.detection as detection
import perf_pipelines.recommendations.ladders as ladders
import perf_pipelines.recommendations.rules as rules
import perf_pipelines.recommendations.sizing as sizing

DOCS = Path(__file__).parents[2] / "docs"
DOC = DOCS / "detection.md"
RULES_DOC = DOCS / "recommendations.md"


def _numeric_constants(module: object) -> dict[str, float]:
    """Upper-case module-level names assigned a number literal in the module's own source."""
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))  # type: ignore[attr-defined]
    found = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id.isupper()
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, int | float)
            and not isinstance(node.value.value, bool)
        ):
            found[node.targets[0].id] = float(node.value.value)
    return found


DETECTION_CONSTANTS = _numeric_constants(detection)
RULE_CONSTANTS = {
    **_numeric_constants(rules),
    **_numeric_constants(ladders),
    **_numeric_constants(sizing),
}
CONSTANTS = {**DETECTION_CONSTANTS, **RULE_CONSTANTS}


def test_the_code_has_the_thresholds_this_test_expects() -> None:
    assert {"MIN_UP_SAMPLES", "KV_PRESSURE_USAGE", "SLO_CRITICAL_FACTOR"} <= set(CONSTANTS)
    assert {"MAX_MEMORY_FRACTION", "MAX_BATCH_FACTOR"} <= set(CONSTANTS)


@pytest.mark.parametrize(("name", "value"), sorted(CONSTANTS.items()))
def test_every_threshold_is_documented_with_its_value(name: str, value: float) -> None:
    doc = RULES_DOC if name in RULE_CONSTANTS else DOC
    text = doc.read_text(encoding="utf-8")
    stated = [
        float(number)
        for number in re.findall(rf"`{name}`\s*(?:\||=)\s*\**([0-9]+(?:\.[0-9]+)?)", text)
    ]
    assert stated, f"{name} is not stated as `{name}` | value or `{name}` = value in {doc.name}"
    assert all(number == pytest.approx(value) for number in stated), (name, value, stated)
