"""The simulator next to published measurements, engine by engine (docs/simulator.md, "Validation").

Each figure below is a number someone else measured on a real engine and published, with the
conditions it was measured under (GPU, model, precision, prompt and output lengths, concurrency,
engine flags). `simulate` rebuilds those conditions in the simulator and returns the same quantity.
Deterministic (fixed seeds, virtual time) and quick: about ten seconds for the whole table.

    python bench/validate_simulator.py            # markdown table: published, simulated, error
    python bench/validate_simulator.py --json     # the same rows as JSON

Kinds of figure and how each is simulated:

- decode rate (tok/s of one stream, or of B streams): the steady-state engine step for that batch
  and context (`ServerModel.step_time`), as llama-bench's tg128 or a per-token decode figure;
- prefill rate (tok/s): one prompt-only step;
- serving throughput (output tok/s or req/s): the full model (admission, prefill, decode,
  preemption) under a load that keeps `concurrency` requests in flight, measured over a steady
  window after a warm-up. A closed-loop client at concurrency C and a server capped at C with an
  endless queue have the same steady-state throughput;
- KV capacity (tokens): what the server model computes from memory, weights and the KV dtype.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from perf_lab.simulator.exposition import BUCKETS
from perf_lab.simulator.model import ServerModel, Workload
from perf_lab.simulator.settings import to_knobs, validate_settings
from perf_pipelines.hardware import (
    Gpu,
    ModelProfile,
    WeightFormat,
    gpu_by_name,
    model_by_name,
)

LLAMA_31_8B = "meta-llama/Llama-3.1-8B-Instruct"
LLAMA_31_70B = "meta-llama/Llama-3.1-70B-Instruct"
QWEN_25_7B = "Qwen/Qwen2.5-7B-Instruct"
# Models the hardware table does not hold, from their config.json (Llama 1/2 7B: 32 layers,
# 32 KV heads of 128, no GQA).
LLAMA_7B = ModelProfile("llama-7b", 6.74, 6.74, 32, 32, 128, 4096)
# GGUF Q4_0 is not among the simulator's weight formats: llama-2-7b.Q4_0.gguf is 3,825,807,040
# bytes for 6.74e9 parameters (TheBloke/Llama-2-7B-GGUF), 0.568 bytes per parameter.
Q4_0 = WeightFormat(3_825_807_040 / 6.74e9, "fp16")

WARMUP_S = 40.0
WINDOW_S = 80.0
TICK_S = 0.25


@dataclass(frozen=True)
class Figure:
    key: str
    engine: str
    metric: str
    published: float
    source: str
    conditions: str
    simulate: Callable[[], float]


def server(
    engine: str,
    model: str | ModelProfile,
    gpu: str | Gpu,
    gpus: int = 1,
    workload: Workload | None = None,
    weight_format: WeightFormat | None = None,
    **settings: Any,
) -> ServerModel:
    knobs = to_knobs(engine, validate_settings(engine, settings), gpus)
    built = ServerModel(
        gpu_by_name(gpu) if isinstance(gpu, str) else gpu,
        gpus,
        model_by_name(model) if isinstance(model, str) else model,
        knobs,
        BUCKETS[engine],
        workload or Workload(),
        0.0,
        seed=7,
    )
    if weight_format is not None:
        built.weight_format = weight_format
    return built


def fixed_lengths(prompt: float, output: float, rate: float, sigma: float = 0.0) -> Workload:
    """Offered load with (nearly) fixed lengths and no shared prefix, as benchmark clients send."""
    return Workload(
        rate_rps=rate,
        prompt_tokens_mean=prompt,
        output_tokens_mean=output,
        length_sigma=sigma,
        shared_prefix_ratio=0.0,
        max_new_tokens=max(int(output * 8), 1),
        client_timeout_s=1e9,
    )


def serving_throughput(model: ServerModel, per: str = "token") -> float:
    """Output tokens (or finished requests) per second over a steady window."""
    model.advance(WARMUP_S, TICK_S)
    tokens, finished = model.counters.generation_tokens, model.counters.finished
    model.advance(WARMUP_S + WINDOW_S, TICK_S)
    if per == "request":
        return (model.counters.finished - finished) / WINDOW_S
    return (model.counters.generation_tokens - tokens) / WINDOW_S


def decode_rate(model: ServerModel, batch: int, context_per_request: float) -> float:
    """Tokens per second of `batch` streams, each holding `context_per_request` KV tokens."""
    return batch / model.step_time(batch, 0, batch * context_per_request)


def prefill_rate(model: ServerModel, tokens: int) -> float:
    return tokens / model.step_time(0, tokens, 0)


# -- the figures ----------------------------------------------------------------------------------

_MUSGRAVE = 'johnmusgrave.com, "vLLM throughput-latency sweep on NVIDIA A100" (vLLM 0.23 class)'
_SGL_VS_VLLM = (
    "sgl-project/sglang benchmark/benchmark_vllm_060/README.md (SGLang team, Sep 2024; "
    "SGLang 0.3.0 vs vLLM 0.6.0 --num-scheduler-steps 10)"
)
_INFERENCE_BENCH = (
    "github.com/ree2raz/inference-bench results/summary.csv at 6219100 (2026-05-10; "
    "Modal, CUDA 12.4)"
)
_VLLM_CI = "vLLM performance benchmark, buildkite.com/vllm/performance-benchmark/builds/9515"
_TGI_V3 = (
    "huggingface.co/docs/text-generation-inference/conceptual/chunking "
    '("TGI v3 overview", Dec 2024)'
)
_TGI_381 = "vllm-project/vllm issue #381, TGI maintainer O. Dehaene, 2023-07-07"
_LLAMACPP_15013 = (
    'ggml-org/llama.cpp discussion #15013 "Performance of llama.cpp on Nvidia CUDA" '
    "scoreboard (2025-08-01)"
)
# ShareGPT as sampled by sglang.bench_serving for Llama-3 (about 220 prompt tokens a request;
# output per request from the published figures: 4281.51 / 22.03 = 194).
SHAREGPT_PROMPT = 220.0
SHAREGPT_SIGMA = 0.9


def _vllm_figures() -> list[Figure]:
    return [
        Figure(
            "vllm-a100-40-8b-c1",
            "vllm",
            "decode tok/s",
            75.0,
            _MUSGRAVE,
            "A100-40GB, Llama-3.1-8B BF16, 1024 in / 128 out, concurrency 1",
            lambda: decode_rate(server("vllm", LLAMA_31_8B, "A100-40GB"), 1, 1024 + 64),
        ),
        Figure(
            "vllm-a100-40-8b-c8",
            "vllm",
            "decode tok/s",
            495.0,
            _MUSGRAVE + ": 6.6x the single-request rate at concurrency 8",
            "A100-40GB, Llama-3.1-8B BF16, 1024 in / 128 out, concurrency 8",
            lambda: decode_rate(server("vllm", LLAMA_31_8B, "A100-40GB"), 8, 1024 + 64),
        ),
        Figure(
            "vllm-a100-80-8b-offline",
            "vllm",
            "output tok/s",
            4132.37,
            _SGL_VS_VLLM,
            "A100-80GB, Llama-3.1-8B BF16, ShareGPT 5000 prompts all at once, defaults "
            "(gpu_memory_utilization 0.9, max_num_seqs 256)",
            lambda: serving_throughput(
                server(
                    "vllm",
                    LLAMA_31_8B,
                    "A100-80GB",
                    workload=fixed_lengths(SHAREGPT_PROMPT, 194.0, 60.0, SHAREGPT_SIGMA),
                )
            ),
        ),
        Figure(
            "vllm-h100x4-70b-offline",
            "vllm",
            "output tok/s",
            3700.64,
            _SGL_VS_VLLM,
            "4×H100-80GB TP4, Llama-3.1-70B BF16, ShareGPT 5000 prompts all at once, defaults",
            lambda: serving_throughput(
                server(
                    "vllm",
                    LLAMA_31_70B,
                    "H100",
                    4,
                    workload=fixed_lengths(SHAREGPT_PROMPT, 194.0, 60.0, SHAREGPT_SIGMA),
                    tensor_parallel_size=4,
                )
            ),
        ),
        Figure(
            "vllm-l4-qwen7b-c1",
            "vllm",
            "output tok/s",
            17.11,
            _INFERENCE_BENCH,
            "L4, Qwen2.5-7B FP16, vLLM 0.8.5, ~200 in / 128 out, concurrency 1",
            lambda: serving_throughput(
                server(
                    "vllm",
                    QWEN_25_7B,
                    "L4",
                    workload=fixed_lengths(200, 128, 2.0),
                    max_num_seqs=1,
                )
            ),
        ),
        Figure(
            "vllm-l4-qwen7b-c64",
            "vllm",
            "output tok/s",
            831.76,
            _INFERENCE_BENCH,
            "L4, Qwen2.5-7B FP16, vLLM 0.8.5, ~200 in / 128 out, concurrency 64",
            lambda: serving_throughput(
                server(
                    "vllm",
                    QWEN_25_7B,
                    "L4",
                    workload=fixed_lengths(200, 128, 20.0),
                    max_num_seqs=64,
                )
            ),
        ),
        Figure(
            "vllm-h200-8b-latency-b8",
            "vllm",
            "batch latency ms",
            833.42,
            _VLLM_CI + " (latency test)",
            "H200, Llama-3.1-8B BF16, batch 8, 32 in / 128 out, mean end-to-end latency",
            _vllm_h200_latency_ms,
        ),
    ]


def _vllm_h200_latency_ms() -> float:
    model = server("vllm", LLAMA_31_8B, "H200")
    prefill = model.step_time(0, 8 * 32, 0)
    decode = sum(model.step_time(8, 0, 8 * (32 + step)) for step in range(127))
    return (prefill + decode) * 1000


def _sglang_figures() -> list[Figure]:
    return [
        Figure(
            "sglang-a100-80-8b-offline",
            "sglang",
            "output tok/s",
            4281.51,
            _SGL_VS_VLLM,
            "A100-80GB, Llama-3.1-8B BF16, ShareGPT 5000 prompts all at once, "
            "--disable-radix-cache (mem_fraction_static 0.88)",
            lambda: serving_throughput(
                server(
                    "sglang",
                    LLAMA_31_8B,
                    "A100-80GB",
                    workload=fixed_lengths(SHAREGPT_PROMPT, 194.0, 60.0, SHAREGPT_SIGMA),
                    mem_fraction_static=0.88,
                    disable_radix_cache=True,
                    max_running_requests=4096,
                )
            ),
        ),
        Figure(
            "sglang-h100x4-70b-offline",
            "sglang",
            "output tok/s",
            3856.01,
            _SGL_VS_VLLM,
            "4×H100-80GB TP4, Llama-3.1-70B BF16, ShareGPT 5000 prompts all at once, "
            "--mem-frac 0.88 --disable-radix-cache",
            lambda: serving_throughput(
                server(
                    "sglang",
                    LLAMA_31_70B,
                    "H100",
                    4,
                    workload=fixed_lengths(SHAREGPT_PROMPT, 194.0, 60.0, SHAREGPT_SIGMA),
                    tp_size=4,
                    mem_fraction_static=0.88,
                    disable_radix_cache=True,
                    max_running_requests=4096,
                )
            ),
        ),
        Figure(
            "sglang-l4-qwen7b-c1",
            "sglang",
            "output tok/s",
            17.12,
            _INFERENCE_BENCH,
            "L4, Qwen2.5-7B FP16, SGLang 0.4.6 --disable-cuda-graph, ~200 in / 128 out, "
            "concurrency 1",
            lambda: serving_throughput(
                server(
                    "sglang",
                    QWEN_25_7B,
                    "L4",
                    workload=fixed_lengths(200, 128, 2.0),
                    max_running_requests=1,
                )
            ),
        ),
        Figure(
            "sglang-l4-qwen7b-c64",
            "sglang",
            "output tok/s",
            913.9,
            _INFERENCE_BENCH,
            "L4, Qwen2.5-7B FP16, SGLang 0.4.6 --disable-cuda-graph, ~200 in / 128 out, "
            "concurrency 64",
            lambda: serving_throughput(
                server(
                    "sglang",
                    QWEN_25_7B,
                    "L4",
                    workload=fixed_lengths(200, 128, 20.0),
                    max_running_requests=64,
                )
            ),
        ),
    ]


def _tgi_figures() -> list[Figure]:
    return [
        Figure(
            "tgi-l4-8b-kv",
            "tgi",
            "KV tokens",
            30_000.0,
            _TGI_V3 + ': "a single L4 (24GB) can handle 30k tokens on llama 3.1-8B"',
            "L4, Llama-3.1-8B BF16, TGI 3.0 defaults (max_batch_total_tokens inferred)",
            lambda: server("tgi", LLAMA_31_8B, "L4").kv_capacity_tokens,
        ),
        Figure(
            "tgi-a10-7b-kv",
            "tgi",
            "KV tokens",
            17_664.0,
            _TGI_381 + ": --max-batch-total-tokens 17664 for Llama-7B on one A10",
            "A10 (24 GB, the table's A10G), Llama-7B FP16, TGI 0.9.1",
            lambda: server("tgi", LLAMA_7B, "A10").kv_capacity_tokens,
        ),
        Figure(
            "tgi-a10-7b-sharegpt",
            "tgi",
            "req/s",
            112 / 60,
            _TGI_381 + ': "a throughput of 112 req/min with tgi"',
            "A10, Llama-7B FP16, TGI 0.9.1, vLLM's ShareGPT benchmark (161 in / 338 out mean, "
            "vLLM paper), max_batch_prefill_tokens 2048; the simulator cannot fit the "
            "17664 KV tokens of the published run, so it runs with the capacity it infers",
            lambda: serving_throughput(
                server(
                    "tgi",
                    LLAMA_7B,
                    "A10",
                    workload=fixed_lengths(161.0, 338.0, 6.0, SHAREGPT_SIGMA),
                    max_batch_prefill_tokens=2048,
                    max_concurrent_requests=100_000,
                ),
                per="request",
            ),
        ),
    ]


def _llamacpp_figures() -> list[Figure]:
    def qwen_l4(parallel: int, rate: float) -> float:
        return serving_throughput(
            server(
                "llamacpp",
                QWEN_25_7B,
                "L4",
                workload=fixed_lengths(200, 128, rate),
                model_quant="q4_k_m",
                parallel=parallel,
                ctx_size=16384,
            )
        )

    def llama2_h100() -> ServerModel:
        return server("llamacpp", LLAMA_7B, "H100", weight_format=Q4_0, ctx_size=4096)

    return [
        Figure(
            "llamacpp-l4-qwen7b-c1",
            "llamacpp",
            "output tok/s",
            47.37,
            _INFERENCE_BENCH,
            "L4, Qwen2.5-7B Q4_K_M GGUF, llama-server b5540 -np 4 -c 16384, ~200 in / 128 out, "
            "concurrency 1",
            lambda: qwen_l4(1, 2.0),
        ),
        Figure(
            "llamacpp-l4-qwen7b-c4",
            "llamacpp",
            "output tok/s",
            131.74,
            _INFERENCE_BENCH,
            "same server, concurrency 4 (all four slots busy)",
            lambda: qwen_l4(4, 6.0),
        ),
        Figure(
            "llamacpp-h100-7b-tg128",
            "llamacpp",
            "decode tok/s",
            267.81,
            _LLAMACPP_15013,
            "H100 80GB, Llama-2-7B Q4_0, llama-bench tg128 (one stream, no flash attention)",
            lambda: decode_rate(llama2_h100(), 1, 64),
        ),
        Figure(
            "llamacpp-h100-7b-pp512",
            "llamacpp",
            "prefill tok/s",
            9918.34,
            _LLAMACPP_15013,
            "H100 80GB, Llama-2-7B Q4_0, llama-bench pp512",
            lambda: prefill_rate(llama2_h100(), 512),
        ),
    ]


def figures() -> list[Figure]:
    return _vllm_figures() + _sglang_figures() + _tgi_figures() + _llamacpp_figures()


def relative_error(simulated: float, published: float) -> float:
    return simulated / published - 1


def log_error(simulated: float, published: float) -> float:
    """|ln(simulated / published)|: symmetric in over- and under-estimates."""
    return abs(math.log(simulated / published))


def results() -> list[dict[str, Any]]:
    rows = []
    for figure in figures():
        simulated = float(figure.simulate())
        rows.append(
            {
                "key": figure.key,
                "engine": figure.engine,
                "metric": figure.metric,
                "published": figure.published,
                "simulated": simulated,
                "error": relative_error(simulated, figure.published),
                "source": figure.source,
                "conditions": figure.conditions,
            }
        )
    return rows


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def main(argv: list[str]) -> None:
    rows = results()
    if "--json" in argv:
        print(json.dumps(rows, indent=1))
        return
    print("| engine | figure | conditions | published | simulated | error | source |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['engine']} | {row['metric']} | {row['conditions']} "
            f"| {_number(row['published'])} | {_number(row['simulated'])} "
            f"| {row['error']:+.0%} | {row['source']} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
