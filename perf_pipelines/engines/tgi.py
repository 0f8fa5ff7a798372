"""Hugging Face TGI (router v3) to a canonical snapshot.

TGI exports no KV-usage gauge, no TTFT histogram, no prefix-cache or preemption counters: those
stay None. Two proxies are kept instead: the KV *reservation* ratio
(`batch_current_max_tokens / batch_max_total_tokens`, an upper bound on use) in `extra`, and the
decode forward-pass duration as inter-token latency. Token totals come from the `_sum` of the
per-request length histograms. TGI has no model label: the targets file names the model.
"""

from __future__ import annotations

import math

from perf_pipelines.engines.canonical import CanonicalSnapshot
from perf_pipelines.engines.series import Families, histogram_by_model, single_value

QUEUE_SIZE = "tgi_queue_size"
BATCH_SIZE = "tgi_batch_current_size"
BATCH_MAX_TOKENS = "tgi_batch_current_max_tokens"
MAX_TOTAL_TOKENS = "tgi_batch_max_total_tokens"
SUCCESS = "tgi_request_success"
FAILURE = "tgi_request_failure"
DURATION = "tgi_request_duration"
QUEUE_DURATION = "tgi_request_queue_duration"
FORWARD_DURATION = "tgi_batch_forward_duration"
INPUT_LENGTH = "tgi_request_input_length"
GENERATED_TOKENS = "tgi_request_generated_tokens"

WANTED = frozenset(
    {
        QUEUE_SIZE,
        BATCH_SIZE,
        BATCH_MAX_TOKENS,
        MAX_TOTAL_TOKENS,
        SUCCESS,
        FAILURE,
        DURATION,
        QUEUE_DURATION,
        FORWARD_DURATION,
        INPUT_LENGTH,
        GENERATED_TOKENS,
    }
)


def _is_decode(labels: dict[str, str]) -> bool:
    return labels.get("method") == "decode"


def to_canonical(families: Families) -> list[CanonicalSnapshot]:
    capacity = single_value(families.get(MAX_TOTAL_TOKENS))
    reserved = single_value(families.get(BATCH_MAX_TOKENS))
    success = single_value(families.get(SUCCESS))
    failures = single_value(families.get(FAILURE))
    finished = None if success is None and failures is None else (success or 0) + (failures or 0)
    input_length = histogram_by_model(families.get(INPUT_LENGTH), None).get(None)
    generated = histogram_by_model(families.get(GENERATED_TOKENS), None).get(None)
    extra: dict[str, float] = {}
    if capacity and reserved is not None:
        extra["kv_reservation_ratio"] = reserved / capacity
    settings: dict[str, object] = {}
    if capacity is not None and math.isfinite(capacity):
        settings["max_batch_total_tokens"] = int(capacity)
    return [
        CanonicalSnapshot(
            model=None,
            requests_running=single_value(families.get(BATCH_SIZE)),
            requests_waiting=single_value(families.get(QUEUE_SIZE)),
            kv_cache_capacity_tokens=capacity,
            prompt_tokens_total=input_length.sum if input_length else None,
            generation_tokens_total=generated.sum if generated else None,
            requests_finished_total=finished,
            requests_failed_total=failures if finished is not None else None,
            itl_seconds=histogram_by_model(families.get(FORWARD_DURATION), None, _is_decode).get(
                None
            ),
            e2e_seconds=histogram_by_model(families.get(DURATION), None).get(None),
            queue_seconds=histogram_by_model(families.get(QUEUE_DURATION), None).get(None),
            settings=settings,
            extra=extra,
        )
    ]
