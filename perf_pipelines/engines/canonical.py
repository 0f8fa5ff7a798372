"""The engine-independent form of one scrape of one model on one inference server.

Every engine adapter produces these; storage writes one `metric_snapshots` row per instance.
A value the engine does not export stays ``None`` (stored as SQL NULL), never 0, so that
analysis can tell "not measured" from "measured zero".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any


class Engine(StrEnum):
    VLLM = "vllm"
    SGLANG = "sglang"
    TGI = "tgi"
    LLAMACPP = "llamacpp"


@dataclass(frozen=True, slots=True)
class Histogram:
    """A cumulative Prometheus histogram, as scraped.

    ``bounds`` are the finite upper bounds in ascending order; ``cumulative`` has one more entry
    than ``bounds``: the last one is the ``+Inf`` bucket (equal to ``count``).
    """

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    sum: float | None
    count: float

    def __post_init__(self) -> None:
        if len(self.cumulative) != len(self.bounds) + 1:
            raise ValueError(
                f"histogram needs len(bounds)+1 cumulative counts, got {len(self.bounds)} bounds "
                f"and {len(self.cumulative)} counts"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "bounds": list(self.bounds),
            "cumulative": list(self.cumulative),
            "sum": _finite_or_none(self.sum),
            "count": self.count,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Histogram:
        return cls(
            bounds=tuple(float(b) for b in data["bounds"]),
            cumulative=tuple(float(c) for c in data["cumulative"]),
            sum=None if data.get("sum") is None else float(data["sum"]),
            count=float(data["count"]),
        )


def _finite_or_none(value: float | None) -> float | None:
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return value


HISTOGRAM_FIELDS = ("ttft_seconds", "itl_seconds", "e2e_seconds", "queue_seconds")


@dataclass(slots=True)
class CanonicalSnapshot:
    """What one model on one server reported in one scrape, in canonical names and units.

    Gauges are instantaneous; ``*_total`` fields are monotonically increasing counters that
    restart at 0 when the server restarts (``process_start_time`` helps to tell).
    """

    model: str | None = None
    # gauges
    requests_running: float | None = None
    requests_waiting: float | None = None
    kv_cache_usage: float | None = None  # fraction 0..1 of the KV pool in use
    kv_cache_capacity_tokens: float | None = None  # size of the KV pool in tokens
    # counters
    prompt_tokens_total: float | None = None  # prompt tokens received, cached ones included
    generation_tokens_total: float | None = None
    preemptions_total: float | None = None  # vLLM preemptions, SGLang retractions
    requests_finished_total: float | None = None  # finished for any reason
    requests_failed_total: float | None = None  # aborted, errored, rejected
    prefix_cache_queries_total: float | None = None  # tokens looked up in the prefix cache
    prefix_cache_hits_total: float | None = None  # tokens found there
    # latency histograms (seconds)
    ttft_seconds: Histogram | None = None
    itl_seconds: Histogram | None = None
    e2e_seconds: Histogram | None = None
    queue_seconds: Histogram | None = None
    # Unix time the server process started, where the engine says (reset detection)
    process_start_time: float | None = None
    # current settings read from info metrics or static gauges, in engine-native names
    settings: dict[str, Any] = field(default_factory=dict)
    # engine-specific figures that have no canonical column (e.g. TGI's KV reservation ratio)
    extra: dict[str, float] = field(default_factory=dict)
    # values refused because they are outside their domain (see DOMAINS), each with the reason;
    # the refused values are None. Stored in the row's `error` column (the row stays up).
    rejected: list[str] = field(default_factory=list)


CANONICAL_VALUE_FIELDS: tuple[str, ...] = tuple(
    f.name
    for f in fields(CanonicalSnapshot)
    if f.name not in {"model", "settings", "extra", "rejected", *HISTOGRAM_FIELDS}
)

# What each value may be. Counts of requests and tokens, counters and the KV pool's size cannot
# be negative; the KV use is a fraction of the pool; a process started at a Unix time that has
# passed. `extra` holds counts, seconds and ratios only: none may be negative either.
NON_NEGATIVE = "non-negative"
FRACTION = "fraction"
PAST_TIME = "past time"
DOMAINS: dict[str, str] = {
    **dict.fromkeys(CANONICAL_VALUE_FIELDS, NON_NEGATIVE),
    "kv_cache_usage": FRACTION,
    "process_start_time": PAST_TIME,
}
