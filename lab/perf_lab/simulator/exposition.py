"""Render a simulated server's state in its engine's own metric names, types, labels and buckets
(shared/reference/engine-metrics.md): vLLM 0.33 (or 0.8.5 names), SGLang 0.5, TGI 3.x and
llama.cpp's llama-server, each in the text format that engine serves."""

from __future__ import annotations

import math
from collections.abc import Sequence

from perf_lab.simulator.model import Buckets, Histogram, ServerModel

VLLM_BUCKETS = Buckets(
    ttft=(
        0.001,
        0.005,
        0.01,
        0.02,
        0.04,
        0.06,
        0.08,
        0.1,
        0.25,
        0.5,
        0.75,
        1.0,
        2.5,
        5.0,
        7.5,
        10.0,
        20.0,
        40.0,
        80.0,
        160.0,
        640.0,
        2560.0,
    ),
    itl=(
        0.01,
        0.025,
        0.05,
        0.075,
        0.1,
        0.15,
        0.2,
        0.3,
        0.4,
        0.5,
        0.75,
        1.0,
        2.5,
        5.0,
        7.5,
        10.0,
        20.0,
        40.0,
        80.0,
    ),
    e2e=(
        0.3,
        0.5,
        0.8,
        1.0,
        1.5,
        2.0,
        2.5,
        5.0,
        10.0,
        15.0,
        20.0,
        30.0,
        40.0,
        50.0,
        60.0,
        120.0,
        240.0,
        480.0,
        960.0,
        1920.0,
        7680.0,
    ),
    queue=(
        0.3,
        0.5,
        0.8,
        1.0,
        1.5,
        2.0,
        2.5,
        5.0,
        10.0,
        15.0,
        20.0,
        30.0,
        40.0,
        50.0,
        60.0,
        120.0,
        240.0,
        480.0,
        960.0,
        1920.0,
        7680.0,
    ),
    step=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0),
)
SGLANG_BUCKETS = Buckets(
    ttft=(0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400),
    itl=(
        0.002,
        0.004,
        0.006,
        0.008,
        0.010,
        0.015,
        0.020,
        0.025,
        0.030,
        0.035,
        0.040,
        0.060,
        0.080,
        0.100,
        0.200,
        0.400,
        0.600,
        0.800,
        1.0,
        2.0,
        4.0,
        6.0,
        8.0,
    ),
    e2e=(
        0.1,
        0.2,
        0.4,
        0.6,
        0.8,
        1,
        2,
        4,
        6,
        8,
        10,
        20,
        40,
        60,
        80,
        100,
        200,
        400,
        600,
        1200,
        1800,
        2400,
    ),
    queue=(
        0.0,
        0.001,
        0.005,
        0.01,
        0.05,
        0.1,
        0.2,
        0.5,
        1,
        2,
        3,
        4,
        5,
        10,
        15,
        20,
        30,
        40,
        50,
        60,
        70,
        80,
        90,
        100,
        200,
        300,
        400,
        500,
        600,
        700,
        800,
        900,
        1000,
        1200,
        1400,
        1600,
        1800,
        2000,
        2500,
        3000,
    ),
    step=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0),
)
_TGI_DURATION = tuple(0.0001 * 1.5**k for k in range(1, 36))
TGI_BUCKETS = Buckets(_TGI_DURATION, _TGI_DURATION, _TGI_DURATION, _TGI_DURATION, _TGI_DURATION)
LLAMACPP_BUCKETS = SGLANG_BUCKETS  # llama.cpp exports no histograms; the model still needs some

BUCKETS = {
    "vllm": VLLM_BUCKETS,
    "sglang": SGLANG_BUCKETS,
    "tgi": TGI_BUCKETS,
    "llamacpp": LLAMACPP_BUCKETS,
}


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    escaped = (
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in pairs
    )
    return "{" + ",".join(escaped) + "}"


class _Writer:
    """Text format 0.0.4 the way prometheus_client prints it (HELP, TYPE, samples)."""

    def __init__(self, help_lines: bool = True) -> None:
        self.lines: list[str] = []
        self.help_lines = help_lines

    def _head(self, name: str, kind: str, doc: str) -> None:
        if self.help_lines:
            self.lines.append(f"# HELP {name} {doc}")
        self.lines.append(f"# TYPE {name} {kind}")

    def gauge(
        self, name: str, doc: str, series: Sequence[tuple[Sequence[tuple[str, str]], float]]
    ) -> None:
        self._head(name, "gauge", doc)
        self.lines.extend(f"{name}{_labels(labels)} {_number(value)}" for labels, value in series)

    def counter(
        self, name: str, doc: str, series: Sequence[tuple[Sequence[tuple[str, str]], float]]
    ) -> None:
        self._head(name, "counter", doc)
        self.lines.extend(f"{name}{_labels(labels)} {_number(value)}" for labels, value in series)

    def histogram(
        self, name: str, doc: str, labels: Sequence[tuple[str, str]], hist: Histogram
    ) -> None:
        self._head(name, "histogram", doc)
        cumulative = hist.cumulative()
        for bound, count in zip(hist.bounds, cumulative[:-1], strict=True):
            self.lines.append(
                f"{name}_bucket{_labels([*labels, ('le', _number(bound))])} {_number(count)}"
            )
        self.lines.append(
            f"{name}_bucket{_labels([*labels, ('le', '+Inf')])} {_number(cumulative[-1])}"
        )
        self.lines.append(f"{name}_count{_labels(labels)} {_number(hist.count)}")
        self.lines.append(f"{name}_sum{_labels(labels)} {_number(hist.sum)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _process_metrics(w: _Writer, server: ServerModel, cpu_seconds: float) -> None:
    w.gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", [((), 9.1e10)])
    w.gauge(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        [((), 3.4e9 + server.weight_bytes * 0.02)],
    )
    w.gauge(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        [((), server.start_time)],
    )
    w.counter(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        [((), cpu_seconds)],
    )
    w.gauge("process_open_fds", "Number of open file descriptors.", [((), 187.0)])


def render_vllm(
    server: ServerModel, model_name: str, settings: dict[str, object], version: str = "0.33"
) -> str:
    c = server.counters
    old = version == "0.8.5"
    base = [("engine", "0"), ("model_name", model_name)]
    w = _Writer()
    _process_metrics(w, server, c.busy_seconds * 0.3 + 5.0)
    w.counter(
        "http_requests_total",
        "Total number of requests by method, status and handler.",
        [
            (
                (("handler", "/v1/chat/completions"), ("method", "POST"), ("status", "2xx")),
                c.finished,
            )
        ],
    )
    w.gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        [(base, len(server.running))],
    )
    w.gauge(
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        [(base, len(server.waiting))],
    )
    usage_name = "vllm:gpu_cache_usage_perc" if old else "vllm:kv_cache_usage_perc"
    w.gauge(usage_name, "KV-cache usage. 1 means 100 percent usage.", [(base, server.kv_usage())])
    prefix = "vllm:gpu_prefix_cache" if old else "vllm:prefix_cache"
    w.counter(
        f"{prefix}_queries_total",
        "Prefix cache queries, in terms of number of queried tokens.",
        [(base, c.prompt_tokens)],
    )
    w.counter(
        f"{prefix}_hits_total",
        "Prefix cache hits, in terms of number of cached tokens.",
        [(base, c.cached_prompt_tokens)],
    )
    w.counter(
        "vllm:num_preemptions_total",
        "Cumulative number of preemption from the engine.",
        [(base, c.preemptions)],
    )
    w.counter(
        "vllm:prompt_tokens_total", "Number of prefill tokens processed.", [(base, c.prompt_tokens)]
    )
    w.counter(
        "vllm:generation_tokens_total",
        "Number of generation tokens processed.",
        [(base, c.generation_tokens)],
    )
    w.counter(
        "vllm:request_success_total",
        "Count of successfully processed requests.",
        [
            ([*base, ("finished_reason", "stop")], c.finished - c.finished_length),
            ([*base, ("finished_reason", "length")], c.finished_length),
            ([*base, ("finished_reason", "abort")], c.aborted),
        ],
    )
    w.histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        base,
        server.ttft,
    )
    itl_name = "vllm:time_per_output_token_seconds" if old else "vllm:inter_token_latency_seconds"
    w.histogram(itl_name, "Histogram of inter-token latency in seconds.", base, server.itl)
    w.histogram(
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        base,
        server.e2e,
    )
    w.histogram(
        "vllm:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        base,
        server.queue,
    )
    cache = {
        "block_size": "16",
        "cache_dtype": str(settings.get("kv_cache_dtype", "auto")),
        "enable_prefix_caching": str(settings.get("enable_prefix_caching", True)),
        "gpu_memory_utilization": str(settings.get("gpu_memory_utilization", 0.9)),
        "num_gpu_blocks": str(int(server.kv_capacity_tokens // 16)),
    }
    if not old:
        cache["kv_cache_size_tokens"] = str(int(server.kv_capacity_tokens))
    w.gauge(
        "vllm:cache_config_info",
        "Information of the LLMEngine CacheConfig",
        [([*sorted(cache.items()), ("engine", "0")], 1.0)],
    )
    return w.text()


def render_sglang(server: ServerModel, model_name: str, settings: dict[str, object]) -> str:
    c = server.counters
    sched = [
        ("engine_type", "unified"),
        ("model_name", model_name),
        ("moe_ep_rank", "0"),
        ("pp_rank", "0"),
        ("tp_rank", "0"),
    ]
    req = [("engine_type", "unified"), ("is_streaming", "true"), ("model_name", model_name)]
    w = _Writer()
    w.gauge(
        "sglang:num_running_reqs", "The number of running requests.", [(sched, len(server.running))]
    )
    w.gauge(
        "sglang:num_queue_reqs",
        "The number of requests in the waiting queue.",
        [(sched, len(server.waiting))],
    )
    w.gauge(
        "sglang:num_used_tokens", "The number of used tokens.", [(sched, server.kv_used_tokens())]
    )
    w.gauge("sglang:token_usage", "The token usage.", [(sched, round(server.kv_usage(), 2))])
    w.gauge(
        "sglang:max_total_num_tokens",
        "Maximum total number of tokens in the KV pool.",
        [(sched, server.kv_capacity_tokens)],
    )
    w.gauge("sglang:page_size", "The page size of the KV cache.", [(sched, 1.0)])
    w.gauge(
        "sglang:context_len",
        "The context length of the model.",
        [(sched, float(server.model.max_context))],
    )
    w.gauge(
        "sglang:gen_throughput",
        "The generation throughput (token/s).",
        [(sched, len(server.running) / max(server.last_step_s, 1e-9))],
    )
    w.counter(
        "sglang:num_retracted_requests_total",
        "Number of retracted requests.",
        [(sched, c.preemptions)],
    )
    w.counter(
        "sglang:prompt_tokens_total",
        "Number of prefill tokens processed.",
        [(req, c.prompt_tokens)],
    )
    w.counter(
        "sglang:generation_tokens_total",
        "Number of generation tokens processed.",
        [(req, c.generation_tokens)],
    )
    w.counter(
        "sglang:cached_tokens_total",
        "Number of cached prompt tokens.",
        [([*req, ("cache_source", "device")], c.cached_prompt_tokens)],
    )
    w.counter("sglang:num_requests_total", "Number of requests processed.", [(req, c.finished)])
    w.counter(
        "sglang:num_aborted_requests_total", "Number of requests aborted.", [(req, c.aborted)]
    )
    w.histogram(
        "sglang:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        req,
        server.ttft,
    )
    w.histogram(
        "sglang:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        req,
        server.itl,
    )
    w.histogram(
        "sglang:e2e_request_latency_seconds",
        "Histogram of End-to-end request latency in seconds",
        req,
        server.e2e,
    )
    w.histogram(
        "sglang:queue_time_seconds", "Histogram of queueing time in seconds.", sched, server.queue
    )
    return w.text()


def render_tgi(server: ServerModel) -> str:
    """metrics-exporter-prometheus: no HELP, counters without _total."""
    c = server.counters
    w = _Writer(help_lines=False)
    w.gauge("tgi_batch_current_max_tokens", "", [((), server.reserved_tokens())])
    w.gauge("tgi_batch_current_size", "", [((), len(server.running))])
    w.gauge("tgi_batch_max_total_tokens", "", [((), server.kv_capacity_tokens)])
    w.gauge("tgi_queue_size", "", [((), len(server.waiting))])
    w.counter(
        "tgi_request_count",
        "",
        [((), c.finished + c.rejected + c.aborted + len(server.running) + len(server.waiting))],
    )
    w.counter(
        "tgi_request_failure",
        "",
        [((("err", "overloaded"),), c.rejected), ((("err", "dropped"),), c.aborted)],
    )
    w.counter("tgi_request_success", "", [((), c.finished)])
    w.histogram("tgi_batch_forward_duration", "", [("method", "decode")], server.decode_step)
    w.histogram("tgi_request_duration", "", (), server.e2e)
    w.histogram("tgi_request_queue_duration", "", (), server.queue)
    tokens = Histogram(tuple(81.92 * i for i in range(1, 101)))
    tokens.counts[-1] = c.finished
    tokens.count, tokens.sum = c.finished, c.generation_tokens
    w.histogram("tgi_request_generated_tokens", "", (), tokens)
    inputs = Histogram(tuple(40.96 * i for i in range(1, 101)))
    inputs.counts[-1] = c.finished
    inputs.count, inputs.sum = c.finished, c.prompt_tokens
    w.histogram("tgi_request_input_length", "", (), inputs)
    return w.text()


def render_llamacpp(server: ServerModel) -> str:
    c = server.counters
    slots_busy = len(server.running)
    lines = []
    for name, kind, doc, value in (
        (
            "prompt_tokens_total",
            "counter",
            "Number of prompt tokens processed.",
            c.prompt_tokens - c.cached_prompt_tokens,
        ),
        (
            "prompt_tokens_cached_total",
            "counter",
            "Number of prompt tokens reused from cache.",
            c.cached_prompt_tokens,
        ),
        (
            "prompt_seconds_total",
            "counter",
            "Prompt process time",
            c.prefill_steps * server.last_step_s,
        ),
        (
            "tokens_predicted_total",
            "counter",
            "Number of generation tokens processed.",
            c.generation_tokens,
        ),
        (
            "tokens_predicted_seconds_total",
            "counter",
            "Predict process time",
            c.busy_seconds * max(slots_busy, 1),
        ),
        ("n_decode_total", "counter", "Total number of llama_decode() calls", c.decode_steps),
        (
            "n_busy_slots_per_decode",
            "gauge",
            "Average number of busy slots per llama_decode() call",
            float(slots_busy) if c.decode_steps else float("nan"),
        ),
        ("requests_processing", "gauge", "Number of requests processing.", float(slots_busy)),
        ("requests_deferred", "gauge", "Number of requests deferred.", float(len(server.waiting))),
    ):
        lines += [
            f"# HELP llamacpp:{name} {doc}",
            f"# TYPE llamacpp:{name} {kind}",
            f"llamacpp:{name} {_number(value)}",
        ]
    return "\n".join(lines) + "\n"


def render(
    engine: str,
    server: ServerModel,
    model_name: str,
    settings: dict[str, object],
    version: str | None,
) -> str:
    if engine == "vllm":
        return render_vllm(server, model_name, settings, version or "0.33")
    if engine == "sglang":
        return render_sglang(server, model_name, settings)
    if engine == "tgi":
        return render_tgi(server)
    return render_llamacpp(server)
