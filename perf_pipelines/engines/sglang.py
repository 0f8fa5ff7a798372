"""SGLang (0.4.6 and 0.5.x) to canonical snapshots.

SGLang labels scheduler series with `tp_rank`/`pp_rank`/`dp_rank` and request series with
`is_streaming`. Values are summed over data-parallel ranks and streaming modes, but only one
tensor- and pipeline-parallel rank is read: those ranks see the same requests, so summing them
would double count. Gauges with a `pid` label (no multiprocess mode) are per-process
leftovers and are skipped.
"""

from __future__ import annotations

from perf_pipelines.engines.canonical import CanonicalSnapshot, Histogram
from perf_pipelines.engines.series import (
    Families,
    histogram_by_model,
    mean_by_model,
    model_names,
    sum_by_model,
)

MODEL_LABEL = "model_name"
RUNNING = "sglang:num_running_reqs"
WAITING = "sglang:num_queue_reqs"
KV_USAGE = "sglang:token_usage"
RETRACTIONS = "sglang:num_retracted_requests_total"
PROMPT_TOKENS = "sglang:prompt_tokens_total"
GENERATION_TOKENS = "sglang:generation_tokens_total"
CACHED_TOKENS = "sglang:cached_tokens_total"
FINISHED = "sglang:num_requests_total"
ABORTED = "sglang:num_aborted_requests_total"
TTFT = "sglang:time_to_first_token_seconds"
ITL = "sglang:inter_token_latency_seconds"
E2E = "sglang:e2e_request_latency_seconds"
QUEUE = "sglang:queue_time_seconds"
# Static configuration exported as plain gauges.
STATIC_SETTINGS = {
    "sglang:max_total_num_tokens": "max_total_num_tokens",
    "sglang:page_size": "page_size",
    "sglang:context_len": "context_len",
    "sglang:kv_cache_memory_usage_gb": "kv_cache_memory_usage_gb",
    "sglang:weight_memory_usage_gb": "weight_memory_usage_gb",
}

WANTED = frozenset(
    {
        RUNNING,
        WAITING,
        KV_USAGE,
        RETRACTIONS,
        PROMPT_TOKENS,
        GENERATION_TOKENS,
        CACHED_TOKENS,
        FINISHED,
        ABORTED,
        TTFT,
        ITL,
        E2E,
        QUEUE,
        *STATIC_SETTINGS,
    }
)


def _one_replica_rank(labels: dict[str, str]) -> bool:
    return (
        "pid" not in labels
        and labels.get("tp_rank", "0") == "0"
        and labels.get("pp_rank", "0") == "0"
        and labels.get("moe_ep_rank", "0") == "0"
    )


def to_canonical(families: Families) -> list[CanonicalSnapshot]:
    models = model_names(
        families, (RUNNING, WAITING, KV_USAGE, PROMPT_TOKENS, GENERATION_TOKENS), MODEL_LABEL
    )
    where = _one_replica_rank

    def summed(name: str) -> dict[str | None, float]:
        return sum_by_model(families.get(name), MODEL_LABEL, where)

    def histogram(name: str) -> dict[str | None, Histogram]:
        return histogram_by_model(families.get(name), MODEL_LABEL, where)

    running, waiting = summed(RUNNING), summed(WAITING)
    usage = mean_by_model(families.get(KV_USAGE), MODEL_LABEL, where)
    retractions = summed(RETRACTIONS)
    prompt, generation, cached = (
        summed(PROMPT_TOKENS),
        summed(GENERATION_TOKENS),
        summed(CACHED_TOKENS),
    )
    finished, aborted = summed(FINISHED), summed(ABORTED)
    ttft, itl, e2e, queue = histogram(TTFT), histogram(ITL), histogram(E2E), histogram(QUEUE)
    # Every DP rank reports the same configuration, so settings are read, not added up; the KV
    # capacity is the exception: each DP rank has a pool of its own.
    static = {
        setting: mean_by_model(families.get(name), MODEL_LABEL, where)
        for name, setting in STATIC_SETTINGS.items()
    }
    capacity = summed("sglang:max_total_num_tokens")

    snapshots = []
    for model in sorted(models, key=lambda m: m or ""):
        settings: dict[str, object] = {}
        for setting, values in static.items():
            if model in values:
                value = values[model]
                settings[setting] = int(value) if value.is_integer() else value
        hits = cached.get(model)
        snapshots.append(
            CanonicalSnapshot(
                model=model,
                requests_running=running.get(model),
                requests_waiting=waiting.get(model),
                kv_cache_usage=usage.get(model),
                kv_cache_capacity_tokens=capacity.get(model),
                prompt_tokens_total=prompt.get(model),
                generation_tokens_total=generation.get(model),
                preemptions_total=retractions.get(model),
                requests_finished_total=finished.get(model),
                requests_failed_total=aborted.get(model),
                # SGLang's hit rate is cached/prompt tokens: every prompt token is a lookup.
                prefix_cache_queries_total=prompt.get(model) if hits is not None else None,
                prefix_cache_hits_total=hits,
                ttft_seconds=ttft.get(model),
                itl_seconds=itl.get(model),
                e2e_seconds=e2e.get(model),
                queue_seconds=queue.get(model),
                settings=settings,
            )
        )
    return snapshots
