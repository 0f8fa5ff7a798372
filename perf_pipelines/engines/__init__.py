"""Engine adapters: each engine's metric names, across versions, to `CanonicalSnapshot`s."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping

from perf_pipelines.engines import llamacpp, sglang, tgi, vllm
from perf_pipelines.engines.canonical import (
    CANONICAL_VALUE_FIELDS,
    HISTOGRAM_FIELDS,
    CanonicalSnapshot,
    Engine,
)
from perf_pipelines.engines.exposition import ExpositionError, MetricFamily, parse_exposition

MAX_MODEL_LENGTH = 512  # metric_snapshots.model is String(512)

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
    return [_storable(snapshot) for snapshot in _ADAPTERS[engine](families)]


def _is_finite_number(value: object) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _bounded_model(model: str) -> str:
    """A model label the `model` column can hold: no NUL, at most MAX_MODEL_LENGTH characters
    (a longer one keeps its start and a digest of the whole, so distinct models stay distinct)."""
    model = model.replace("\x00", "\ufffd")
    if len(model) <= MAX_MODEL_LENGTH:
        return model
    digest = hashlib.sha256(model.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{model[: MAX_MODEL_LENGTH - 17]}~{digest}"


def _storable(snapshot: CanonicalSnapshot) -> CanonicalSnapshot:
    """What a server sent, reduced to values both databases store: a NaN or ±Inf reading is
    "not measured" (None), a histogram with a non-finite count is left out, and JSON columns
    get finite numbers only (PostgreSQL rejects NaN/Infinity in JSON, and one refused row
    would fail the whole run's insert)."""
    for name in CANONICAL_VALUE_FIELDS:
        if not _is_finite_number(getattr(snapshot, name)):
            setattr(snapshot, name, None)
    for name in HISTOGRAM_FIELDS:
        histogram = getattr(snapshot, name)
        if histogram is not None and not all(
            map(math.isfinite, (*histogram.cumulative, histogram.count))
        ):
            setattr(snapshot, name, None)
    snapshot.extra = {k: v for k, v in snapshot.extra.items() if _is_finite_number(v)}
    snapshot.settings = {k: v for k, v in snapshot.settings.items() if _is_finite_number(v)}
    if snapshot.model is not None:
        snapshot.model = _bounded_model(snapshot.model)
    return snapshot


def snapshots_from_text(
    text: str, engine: Engine | None, *, max_series: int = 200_000
) -> tuple[Engine, list[CanonicalSnapshot]]:
    """Parse a scrape body and map it; raises `ExpositionError` when no engine metric is in it."""
    families = parse_exposition(text, keep=wanted_families(engine), max_series=max_series)
    detected = detect_engine(families)
    if detected is None:
        expected = _DISPLAY[engine] if engine else "vLLM/SGLang/TGI/llama.cpp"
        # Only on failure: look for another engine's metrics to say what the server really is.
        other = (
            detect_engine(parse_exposition(text, keep=_ALL_WANTED, max_series=max_series))
            if engine
            else None
        )
        found = f" (found {_DISPLAY[other]} metrics)" if other else ""
        raise ExpositionError(
            f"no {expected} metrics found{found}: is metrics export enabled on the server?"
        )
    return detected, to_canonical(detected, families)
