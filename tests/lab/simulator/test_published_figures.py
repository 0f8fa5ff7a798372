"""The simulator stays as close to published measurements as it was when last validated.

Each figure comes from bench/validate_simulator.py (sources and conditions there and in
docs/simulator.md). Tolerance, per figure, on |ln(simulated / published)|: the error measured
after the last calibration, rounded up to a multiple of 0.05, plus 0.10. A model change that moves
any figure about ten per cent further from its published value fails here; one that brings it
closer passes (then tighten the bound and update the table in docs/simulator.md).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

_SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "validate_simulator.py"

TOLERANCE = {
    "vllm-a100-40-8b-c1": 0.20,
    "vllm-a100-40-8b-c8": 0.20,
    "vllm-a100-80-8b-offline": 0.25,
    "vllm-h100x4-70b-offline": 0.60,
    "vllm-l4-qwen7b-c1": 0.15,
    "vllm-l4-qwen7b-c64": 0.20,
    "vllm-h200-8b-latency-b8": 0.15,
    "sglang-a100-80-8b-offline": 0.30,
    "sglang-h100x4-70b-offline": 0.70,
    "sglang-l4-qwen7b-c1": 0.15,
    "sglang-l4-qwen7b-c64": 0.30,
    "tgi-l4-8b-kv": 0.45,
    "tgi-a10-7b-kv": 0.25,
    "tgi-a10-7b-sharegpt": 0.25,
    "llamacpp-l4-qwen7b-c1": 0.20,
    "llamacpp-l4-qwen7b-c4": 0.50,
    "llamacpp-h100-7b-tg128": 0.15,
    "llamacpp-h100-7b-pp512": 1.25,
}


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("validate_simulator", _SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def validation() -> ModuleType:
    return _load()


def test_every_engine_has_two_figures_from_two_sources(validation: ModuleType) -> None:
    figures = validation.figures()
    assert {figure.key for figure in figures} == set(TOLERANCE)
    for engine in ("vllm", "sglang", "tgi", "llamacpp"):
        own = [figure for figure in figures if figure.engine == engine]
        assert len(own) >= 2, engine
        publishers = {figure.source.split(" ")[0].rstrip(",:") for figure in own}
        assert len(publishers) >= 2, (engine, publishers)


@pytest.mark.parametrize("key", sorted(TOLERANCE))
def test_simulated_figure_stays_near_the_published_one(validation: ModuleType, key: str) -> None:
    (figure,) = [figure for figure in validation.figures() if figure.key == key]
    simulated = float(figure.simulate())
    error = abs(math.log(simulated / figure.published))
    assert error <= TOLERANCE[key], (
        f"{key}: simulated {simulated:.4g} vs published {figure.published:.4g} "
        f"({simulated / figure.published - 1:+.0%}); bound ±{TOLERANCE[key]:.2f} in log"
    )


def test_the_validation_is_deterministic(validation: ModuleType) -> None:
    (figure,) = [f for f in validation.figures() if f.key == "vllm-l4-qwen7b-c64"]
    assert figure.simulate() == figure.simulate()
