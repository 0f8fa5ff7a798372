"""Engine adapters: each engine's metric names, across versions, to `CanonicalSnapshot`s."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Mapping

from perf_pipelines.engines import llamacpp, sglang, tgi, vllm
from perf_pipelines.engines.canonical import (
    DOMAINS,
    FRACTION,
    HISTOGRAM_FIELDS,
    NON_NEGATIVE,
    PAST_TIME,
    CanonicalSnapshot,
    Engine,
    Histogram,
)
from perf_pipelines.engines.exposition import (
    ExpositionError,
    ExpositionLimitError,
    MetricFamily,
    parse_exposition,
)

MAX_MODEL_LENGTH = 512  # metric_snapshots.model is String(512)
# A process start time this far ahead of the agent's clock is still taken as clock skew; more is
# a time that has not come yet.
CLOCK_SKEW_S = 600.0

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
    now = time.time()
    return [_storable(snapshot, now) for snapshot in _ADAPTERS[engine](families)]


def _is_finite_number(value: object) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _shown(value: float) -> str:
    """A value as a reason quotes it: -2, 1.7, nan, 4102444800."""
    if math.isfinite(value) and float(value).is_integer() and abs(value) < 1e16:
        return str(int(value))
    return f"{value:.6g}"


def _out_of_domain(value: float, domain: str, now: float) -> str | None:
    """Why `value` cannot be a reading of its metric; None when it can."""
    if not math.isfinite(value):
        return "not finite"
    if value < 0:
        return "negative"
    if domain == FRACTION and value > 1:
        return "outside 0–1"
    if domain == PAST_TIME and value > now + CLOCK_SKEW_S:
        return "in the future"
    return None


def _histogram_fault(histogram: Histogram) -> str | None:
    counts = (*histogram.cumulative, histogram.count)
    if not all(map(math.isfinite, counts)):
        return "non-finite bucket count"
    if min(counts) < 0 or (histogram.sum is not None and histogram.sum < 0):
        return "negative count or sum"
    if any(b < a for a, b in zip(histogram.cumulative, histogram.cumulative[1:], strict=False)):
        return "bucket counts not cumulative"
    return None


def _bounded_model(model: str) -> str:
    """A model label the `model` column can hold: no NUL, at most MAX_MODEL_LENGTH characters
    (a longer one keeps its start and a digest of the whole, so distinct models stay distinct)."""
    model = model.replace("\x00", "\ufffd")
    if len(model) <= MAX_MODEL_LENGTH:
        return model
    digest = hashlib.sha256(model.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{model[: MAX_MODEL_LENGTH - 17]}~{digest}"


def _storable(snapshot: CanonicalSnapshot, now: float) -> CanonicalSnapshot:
    """What a server sent, reduced to values that can be readings of their metrics (DOMAINS):
    a NaN or ±Inf reading, a negative count or counter, a KV use outside 0–1, a start time in
    the future, or a histogram with such counts is "not measured" (None), and the reason is
    kept in `rejected`. JSON columns get finite numbers only (PostgreSQL rejects NaN/Infinity
    in JSON, and one refused row would fail the whole run's insert)."""
    rejected = snapshot.rejected
    for name, domain in DOMAINS.items():
        value = getattr(snapshot, name)
        if value is not None and (reason := _out_of_domain(value, domain, now)):
            rejected.append(f"{name} {_shown(value)} ({reason})")
            setattr(snapshot, name, None)
    for name in HISTOGRAM_FIELDS:
        histogram = getattr(snapshot, name)
        if histogram is not None and (fault := _histogram_fault(histogram)):
            rejected.append(f"{name} ({fault})")
            setattr(snapshot, name, None)
    extra = {}
    for key, value in snapshot.extra.items():
        if (reason := _out_of_domain(value, NON_NEGATIVE, now)) is None:
            extra[key] = value
        else:
            rejected.append(f"{key} {_shown(value)} ({reason})")
    snapshot.extra = extra
    snapshot.settings = {k: v for k, v in snapshot.settings.items() if _is_finite_number(v)}
    if snapshot.model is not None:
        snapshot.model = _bounded_model(snapshot.model)
    return snapshot


def snapshots_from_text(
    text: str,
    engine: Engine | None,
    *,
    max_series: int = 200_000,
    max_label_bytes: int | None = None,
    max_models: int | None = None,
    deadline: float | None = None,
) -> tuple[Engine, list[CanonicalSnapshot]]:
    """Parse a scrape body and map it; raises `ExpositionError` when no engine metric is in it,
    `ExpositionLimitError` past a cap (see `parse_exposition`; `max_models`: snapshots), and
    `TimeoutError` when the parse is still running at `deadline` (a `time.monotonic()` value)."""
    families = parse_exposition(
        text,
        keep=wanted_families(engine),
        max_series=max_series,
        max_label_bytes=max_label_bytes,
        deadline=deadline,
    )
    detected = detect_engine(families)
    if detected is None:
        expected = _DISPLAY[engine] if engine else "vLLM/SGLang/TGI/llama.cpp"
        # Only on failure: look for another engine's metrics to say what the server really is.
        other = (
            detect_engine(
                parse_exposition(
                    text,
                    keep=_ALL_WANTED,
                    max_series=max_series,
                    max_label_bytes=max_label_bytes,
                    deadline=deadline,
                )
            )
            if engine
            else None
        )
        found = f" (found {_DISPLAY[other]} metrics)" if other else ""
        raise ExpositionError(
            f"no {expected} metrics found{found}: is metrics export enabled on the server?"
        )
    snapshots = to_canonical(detected, families)
    if max_models is not None and len(snapshots) > max_models:
        raise ExpositionLimitError("models", f"more than {max_models} models")
    return detected, snapshots
