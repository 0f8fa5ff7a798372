"""llama.cpp `llama-server` (with --metrics) to a canonical snapshot.

No labels, one model per process, no latency histograms. Current builds count only the prompt
tokens they processed in `prompt_tokens_total` and the reused ones in
`prompt_tokens_cached_total`; the canonical prompt total is their sum. The KV gauges were
removed in mid-2025: on newer builds `kv_cache_usage` is None.

The server does not export its slots or their context in /metrics; its `GET /props` says both
(`total_slots`, and `default_generation_settings.n_ctx`: the context of one slot, whether the
KV cache is split per slot or unified). `settings_from_props` reads them as current settings.
"""

from __future__ import annotations

from typing import Any

from perf_pipelines.engines.canonical import CanonicalSnapshot
from perf_pipelines.engines.series import Families, single_value
from perf_pipelines.logs import redact_and_clip

PROCESSING = "llamacpp:requests_processing"
DEFERRED = "llamacpp:requests_deferred"
PROMPT_TOKENS = "llamacpp:prompt_tokens_total"
PROMPT_CACHED = "llamacpp:prompt_tokens_cached_total"
PREDICTED = "llamacpp:tokens_predicted_total"
KV_USAGE = "llamacpp:kv_cache_usage_ratio"
EXTRA = {
    "llamacpp:n_busy_slots_per_decode": "busy_slots_per_decode",
    "llamacpp:n_decode_total": "decode_calls_total",
    "llamacpp:prompt_seconds_total": "prompt_seconds_total",
    "llamacpp:tokens_predicted_seconds_total": "predicted_seconds_total",
    "llamacpp:kv_cache_tokens": "kv_cache_tokens",
    "llamacpp:n_tokens_max": "tokens_max",
}

# A slot count or a context length past these is not a reading of a real server (a build's
# --parallel is an int; contexts stop at a few million tokens): refused, not stored.
MAX_SLOTS = 1 << 16
MAX_CTX_PER_SLOT = 1 << 26

WANTED = frozenset(
    {PROCESSING, DEFERRED, PROMPT_TOKENS, PROMPT_CACHED, PREDICTED, KV_USAGE, *EXTRA}
)


def to_canonical(families: Families) -> list[CanonicalSnapshot]:
    processed = single_value(families.get(PROMPT_TOKENS))
    cached = single_value(families.get(PROMPT_CACHED))
    prompt = None if processed is None else processed + (cached or 0.0)
    extra = {
        key: value
        for name, key in EXTRA.items()
        if (value := single_value(families.get(name))) is not None
    }
    return [
        CanonicalSnapshot(
            model=None,
            requests_running=single_value(families.get(PROCESSING)),
            requests_waiting=single_value(families.get(DEFERRED)),
            kv_cache_usage=single_value(families.get(KV_USAGE)),
            prompt_tokens_total=prompt,
            generation_tokens_total=single_value(families.get(PREDICTED)),
            prefix_cache_queries_total=prompt if cached is not None else None,
            prefix_cache_hits_total=cached,
            extra=extra,
        )
    ]


def _count(value: Any, ceiling: int) -> int | None:
    """A positive integer no larger than `ceiling`; None for anything else (bools included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value != value or not 0 < value <= ceiling or int(value) != value:
        return None
    return int(value)


def settings_from_props(props: Any) -> tuple[dict[str, int], list[str]]:
    """The current settings a llama-server's `GET /props` body states, in engine-native names:
    `parallel` (its slots, `total_slots`) and `ctx_per_slot` (`default_generation_settings.n_ctx`),
    plus the reasons for any value that was present but not a usable count."""
    if not isinstance(props, dict):
        return {}, [f"/props is not a JSON object ({type(props).__name__})"]
    settings: dict[str, int] = {}
    problems: list[str] = []
    generation = props.get("default_generation_settings")
    fields = (
        ("parallel", "total_slots", props.get("total_slots"), MAX_SLOTS),
        (
            "ctx_per_slot",
            "default_generation_settings.n_ctx",
            generation.get("n_ctx") if isinstance(generation, dict) else None,
            MAX_CTX_PER_SLOT,
        ),
    )
    for name, source, value, ceiling in fields:
        if value is None:
            continue
        count = _count(value, ceiling)
        if count is None:
            shown = redact_and_clip(str(value), 40)
            problems.append(f"/props {source} {shown!r} is not a count in 1–{ceiling}")
        else:
            settings[name] = count
    return settings, problems
