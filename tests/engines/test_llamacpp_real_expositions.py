"""Bodies a real llama.cpp llama-server served (tests/fixtures/expositions/llamacpp/b<build>/,
taken by `perf-pipelines llama-server capture`): the parser and the adapter read them as the
server meant them. Each number is checked against the body's own text, read independently."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from perf_pipelines.engines import llamacpp, snapshots_from_text
from perf_pipelines.engines.canonical import Engine
from perf_pipelines.engines.llamacpp import settings_from_props

REAL = Path(__file__).parent.parent / "fixtures" / "expositions" / "llamacpp"
BUILDS = sorted(p.name for p in REAL.glob("b*") if p.is_dir())


def _values(text: str) -> dict[str, float]:
    """`name value` lines of an unlabelled exposition, as a reader would take them."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split()
            values[name] = float(value)
    return values


def _json(build: str, name: str) -> Any:
    return json.loads((REAL / build / name).read_text())


def test_there_is_a_real_capture() -> None:
    assert BUILDS, f"no real llama.cpp capture in {REAL}"


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("body", ["idle.txt", "load.txt"])
def test_a_real_body_maps_to_its_own_numbers(build: str, body: str) -> None:
    text = (REAL / build / body).read_text()
    raw = _values(text)
    engine, (snapshot,) = snapshots_from_text(text, None)
    assert engine is Engine.LLAMACPP
    assert snapshot.model is None and snapshot.rejected == []
    assert snapshot.requests_running == raw["llamacpp:requests_processing"]
    assert snapshot.requests_waiting == raw["llamacpp:requests_deferred"]
    processed, cached = (
        raw["llamacpp:prompt_tokens_total"],
        raw["llamacpp:prompt_tokens_cached_total"],
    )
    assert snapshot.prompt_tokens_total == processed + cached
    assert snapshot.prefix_cache_hits_total == cached
    assert snapshot.generation_tokens_total == raw["llamacpp:tokens_predicted_total"]
    assert snapshot.extra["decode_calls_total"] == raw["llamacpp:n_decode_total"]
    # The KV gauges left llama.cpp in mid-2025: not exported, so None, never 0.
    assert snapshot.kv_cache_usage is None and snapshot.kv_cache_capacity_tokens is None


@pytest.mark.parametrize("build", BUILDS)
def test_the_adapter_reads_names_the_real_server_exports(build: str) -> None:
    exported = set(_values((REAL / build / "idle.txt").read_text()))
    read = set(llamacpp.WANTED)
    # the names the adapter keeps for older builds only
    older = {llamacpp.KV_USAGE, "llamacpp:kv_cache_tokens"}
    assert read - older <= exported, sorted(read - older - exported)


@pytest.mark.parametrize("build", BUILDS)
def test_idle_and_load_differ_as_a_real_load_does(build: str) -> None:
    idle = _values((REAL / build / "idle.txt").read_text())
    load = _values((REAL / build / "load.txt").read_text())
    slots = _json(build, "props.json")["total_slots"]
    assert idle["llamacpp:requests_processing"] == 0
    assert idle["llamacpp:tokens_predicted_total"] == 0
    assert load["llamacpp:requests_processing"] == slots
    assert load["llamacpp:requests_deferred"] >= 1  # three times as many requests as slots
    assert load["llamacpp:tokens_predicted_total"] > 0  # a first round already counted
    after = _values(_json(build, "capture.json")["after_load"])
    capture = _json(build, "capture.json")
    assert after["llamacpp:tokens_predicted_total"] == capture["tokens_predicted"]
    assert after["llamacpp:n_decode_total"] > load["llamacpp:n_decode_total"]


@pytest.mark.parametrize("build", BUILDS)
def test_real_props_and_slots_give_slots_and_context_per_slot(build: str) -> None:
    props = _json(build, "props.json")
    settings, problems = settings_from_props(props)
    assert problems == []
    assert settings == {
        "parallel": props["total_slots"],
        "ctx_per_slot": props["default_generation_settings"]["n_ctx"],
    }
    for name in ("slots_idle.json", "slots_load.json"):
        slots = _json(build, name)
        assert len(slots) == settings["parallel"], name
        assert {slot["n_ctx"] for slot in slots} == {settings["ctx_per_slot"]}, name
    assert all(slot["is_processing"] for slot in _json(build, "slots_load.json"))
    assert not any(slot["is_processing"] for slot in _json(build, "slots_idle.json"))
