"""llama.cpp `llama-server` (with --metrics) to a canonical snapshot.

No labels, one model per process, no latency histograms. Current builds count only the prompt
tokens they processed in `prompt_tokens_total` and the reused ones in
`prompt_tokens_cached_total`; the canonical prompt total is their sum. The KV gauges were
removed in mid-2025: on newer builds `kv_cache_usage` is None.
"""

from __future__ import annotations

from perf_pipelines.engines.canonical import CanonicalSnapshot
from perf_pipelines.engines.series import Families, single_value

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
