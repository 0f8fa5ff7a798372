"""vLLM (V1 engine, and the older V0/deprecated names) to canonical snapshots.

Names are looked up new-first: e.g. `kv_cache_usage_perc` then `gpu_cache_usage_perc`
(renamed in 0.9, the old one gone in 0.12). Every engine series carries `model_name` and, in V1,
`engine` (the data-parallel rank): values are summed over `engine`, one snapshot per model.
"""

from __future__ import annotations

from perf_pipelines.engines.canonical import CanonicalSnapshot
from perf_pipelines.engines.series import (
    Families,
    first_present,
    histogram_by_model,
    info_labels,
    mean_by_model,
    model_names,
    single_value,
    sum_by_model,
    typed_setting,
)

MODEL_LABEL = "model_name"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
PREEMPTIONS = "vllm:num_preemptions_total"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
REQUEST_SUCCESS = "vllm:request_success_total"
ADMISSION_REJECTIONS = "vllm:admission_rejections_total"
PREFIX_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")
PREFIX_HITS = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")
TTFT = "vllm:time_to_first_token_seconds"
ITL = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")
E2E = "vllm:e2e_request_latency_seconds"
QUEUE = "vllm:request_queue_time_seconds"
CACHE_CONFIG = "vllm:cache_config_info"
PROCESS_START = "process_start_time_seconds"
FAILED_REASONS = frozenset({"abort", "error"})

WANTED = frozenset(
    {
        RUNNING,
        WAITING,
        *KV_USAGE,
        PREEMPTIONS,
        PROMPT_TOKENS,
        GENERATION_TOKENS,
        REQUEST_SUCCESS,
        ADMISSION_REJECTIONS,
        *PREFIX_QUERIES,
        *PREFIX_HITS,
        TTFT,
        *ITL,
        E2E,
        QUEUE,
        CACHE_CONFIG,
        PROCESS_START,
    }
)


def _settings(families: Families) -> tuple[dict[str, object], float | None]:
    """Current cache settings from `cache_config_info`, and the KV pool size in tokens.

    With several DP engines each has its own pool: capacity is their sum.
    """
    settings: dict[str, object] = {}
    capacity = 0.0
    found_capacity = False
    for labels in info_labels(families.get(CACHE_CONFIG)):
        values = {
            k: typed_setting(v) for k, v in labels.items() if k not in ("engine", MODEL_LABEL)
        }
        if not settings:
            settings = values
        tokens = values.get("kv_cache_size_tokens")
        blocks, block_size = values.get("num_gpu_blocks"), values.get("block_size")
        if isinstance(tokens, int | float):
            capacity += tokens
            found_capacity = True
        elif isinstance(blocks, int | float) and isinstance(block_size, int | float):
            capacity += blocks * block_size
            found_capacity = True
    return settings, capacity if found_capacity else None


def to_canonical(families: Families) -> list[CanonicalSnapshot]:
    models = model_names(
        families, (RUNNING, WAITING, *KV_USAGE, PROMPT_TOKENS, GENERATION_TOKENS), MODEL_LABEL
    )
    settings, capacity = _settings(families)
    running = sum_by_model(families.get(RUNNING), MODEL_LABEL)
    waiting = sum_by_model(families.get(WAITING), MODEL_LABEL)
    kv_usage = mean_by_model(first_present(families, *KV_USAGE), MODEL_LABEL)
    preemptions = sum_by_model(families.get(PREEMPTIONS), MODEL_LABEL)
    prompt = sum_by_model(families.get(PROMPT_TOKENS), MODEL_LABEL)
    generation = sum_by_model(families.get(GENERATION_TOKENS), MODEL_LABEL)
    finished = sum_by_model(families.get(REQUEST_SUCCESS), MODEL_LABEL)
    failed = sum_by_model(
        families.get(REQUEST_SUCCESS),
        MODEL_LABEL,
        lambda labels: labels.get("finished_reason") in FAILED_REASONS,
    )
    rejected = sum_by_model(families.get(ADMISSION_REJECTIONS), MODEL_LABEL)
    queries = sum_by_model(first_present(families, *PREFIX_QUERIES), MODEL_LABEL)
    hits = sum_by_model(first_present(families, *PREFIX_HITS), MODEL_LABEL)
    ttft = histogram_by_model(families.get(TTFT), MODEL_LABEL)
    itl = histogram_by_model(first_present(families, *ITL), MODEL_LABEL)
    e2e = histogram_by_model(families.get(E2E), MODEL_LABEL)
    queue = histogram_by_model(families.get(QUEUE), MODEL_LABEL)
    start = single_value(families.get(PROCESS_START))

    snapshots = []
    for model in sorted(models, key=lambda m: m or ""):
        failures = failed.get(model)
        if model in rejected:
            failures = (failures or 0.0) + rejected[model]
        snapshots.append(
            CanonicalSnapshot(
                model=model,
                requests_running=running.get(model),
                requests_waiting=waiting.get(model),
                kv_cache_usage=kv_usage.get(model),
                kv_cache_capacity_tokens=capacity,
                prompt_tokens_total=prompt.get(model),
                generation_tokens_total=generation.get(model),
                preemptions_total=preemptions.get(model),
                requests_finished_total=finished.get(model),
                requests_failed_total=failures if model in finished or failures else None,
                prefix_cache_queries_total=queries.get(model),
                prefix_cache_hits_total=hits.get(model),
                ttft_seconds=ttft.get(model),
                itl_seconds=itl.get(model),
                e2e_seconds=e2e.get(model),
                queue_seconds=queue.get(model),
                process_start_time=start,
                settings=dict(settings),
            )
        )
    return snapshots
