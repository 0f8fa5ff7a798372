"""Engine adapters: each engine's metric names, across versions, to `CanonicalSnapshot`s."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from perf_pipelines.collection.exposition import ExpositionError, MetricFamily, parse_exposition
from perf_pipelines.engines import llamacpp, sglang, tgi, vllm
from perf_pipelines.engines.canonical import CanonicalSnapshot, Engine

_ADAPTERS: dict[Engine, Callable[[Mapping[str, MetricFamily]], list[CanonicalSnapshot]]] = {
    Engine.VLLM: vllm.to_canonical,
    Engine.SGLANG: sglang.to_canonical,
    Engine.TGI: tgi.to_canonical,
    Engine.LLAMACPP: llamacpp.to_canonical,
}
_WANTED: dict[Engine, frozenset[str]] = {
    Engine.VLLM: vllm.WANTED,
    Engine.SGLANG: sglang.WANTED,
    Engine.TGI: tgi.WANTED,
    Engine.LLAMACPP: llamacpp.WANTED,
}
_ALL_WANTED = frozenset().union(*_WANTED.values())
_PREFIXES: dict[Engine, str] = {
    Engine.VLLM: "vllm:",
    Engine.SGLANG: "sglang:",
    Engine.TGI: "tgi_",
    Engine.LLAMACPP: "llamacpp:",
}
_DISPLAY = {
    Engine.VLLM: "vLLM",
    Engine.SGLANG: "SGLang",
    Engine.TGI: "TGI",
    Engine.LLAMACPP: "llama.cpp",
}


def wanted_families(engine: Engine | None) -> frozenset[str]:
    """Family keys an adapter reads; for None (auto-detection) those of every adapter."""
    return _ALL_WANTED if engine is None else _WANTED[engine]


def detect_engine(family_names: Iterable[str]) -> Engine | None:
    """The engine whose metric prefix most family names carry; None when there is none."""
    counts = dict.fromkeys(_PREFIXES, 0)
    for name in family_names:
        for engine, prefix in _PREFIXES.items():
            if name.startswith(prefix):
                counts[engine] += 1
                break
    best = max(counts, key=lambda engine: counts[engine])
    return best if counts[best] else None


def to_canonical(engine: Engine, families: Mapping[str, MetricFamily]) -> list[CanonicalSnapshot]:
    return _ADAPTERS[engine](families)


def snapshots_from_text(
    text: str, engine: Engine | None, *, max_series: int = 200_000
) -> tuple[Engine, list[CanonicalSnapshot]]:
    """Parse a scrape body and map it; raises `ExpositionError` when no engine metric is in it."""
    families = parse_exposition(text, keep=wanted_families(engine), max_series=max_series)
    detected = detect_engine(families)
    if detected is None:
        expected = _DISPLAY[engine] if engine else "vLLM/SGLang/TGI/llama.cpp"
        # Only on failure: look for another engine's metrics to say what the server really is.
        other = detect_engine(parse_exposition(text, keep=_ALL_WANTED)) if engine else None
        found = f" (found {_DISPLAY[other]} metrics)" if other else ""
        raise ExpositionError(
            f"no {expected} metrics found{found}: is metrics export enabled on the server?"
        )
    return detected, to_canonical(detected, families)
