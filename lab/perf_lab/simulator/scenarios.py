"""Named fleets that each show one bottleneck, plus a generated fleet for scale tests.

`expected_bottlenecks` is the ground truth the closed-loop evaluation scores detection against.
Loads are chosen from the model's own capacity arithmetic (docs/simulator.md), so a scenario
shows its bottleneck within a minute of simulated time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from perf_lab.simulator.fleet import ServerSpec
from perf_lab.simulator.model import Workload
from perf_pipelines.targets import Target

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"
QWEN_7B = "Qwen/Qwen2.5-7B-Instruct"
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"


def healthy() -> list[ServerSpec]:
    return [
        ServerSpec(
            "vllm-llama8b-healthy",
            "vllm",
            LLAMA_8B,
            "H100-SXM-80GB",
            settings={"max_num_seqs": 256, "gpu_memory_utilization": 0.9},
            workload=Workload(rate_rps=6, prompt_tokens_mean=600, output_tokens_mean=200),
            slo={"ttft_p95_ms": 1000, "itl_p95_ms": 60},
        )
    ]


def kv_pressure() -> list[ServerSpec]:
    return [
        ServerSpec(
            "vllm-llama70b-kv",
            "vllm",
            LLAMA_70B,
            "H100-SXM-80GB",
            gpu_count=4,
            settings={
                "tensor_parallel_size": 4,
                "gpu_memory_utilization": 0.56,
                "max_num_seqs": 256,
            },
            workload=Workload(
                rate_rps=3.5,
                prompt_tokens_mean=3000,
                output_tokens_mean=600,
                shared_prefix_ratio=0.1,
            ),
            slo={"ttft_p95_ms": 3000, "itl_p95_ms": 80},
            # Preempted requests wait to be recomputed: TTFT p95 ≈ 38 s against 3 s.
            expected_bottlenecks=("kv_cache_pressure", "preemption", "ttft_slo_breach"),
        )
    ]


def queue_saturation() -> list[ServerSpec]:
    return [
        ServerSpec(
            "vllm-llama8b-queue",
            "vllm",
            LLAMA_8B,
            "H100-SXM-80GB",
            settings={"max_num_seqs": 16, "gpu_memory_utilization": 0.9},
            workload=Workload(rate_rps=12, prompt_tokens_mean=500, output_tokens_mean=250),
            slo={"ttft_p95_ms": 2000, "itl_p95_ms": 60},
            # The queue grows without bound, and with it the time to first token.
            expected_bottlenecks=("queue_saturation", "ttft_slo_breach"),
        )
    ]


def underutilized() -> list[ServerSpec]:
    return [
        ServerSpec(
            "sglang-qwen7b-idle",
            "sglang",
            QWEN_7B,
            "A100-80GB",
            settings={"mem_fraction_static": 0.85, "max_running_requests": 256},
            workload=Workload(rate_rps=0.3, prompt_tokens_mean=500, output_tokens_mean=150),
            slo={"ttft_p95_ms": 1000, "itl_p95_ms": 50},
            expected_bottlenecks=("underutilization",),
        )
    ]


def ttft_breach() -> list[ServerSpec]:
    return [
        ServerSpec(
            "sglang-qwen7b-longprompt",
            "sglang",
            QWEN_7B,
            "L4",
            settings={
                "mem_fraction_static": 0.85,
                "chunked_prefill_size": 2048,
                "max_running_requests": 64,
            },
            workload=Workload(
                rate_rps=0.4,
                prompt_tokens_mean=7000,
                output_tokens_mean=120,
                shared_prefix_ratio=0.0,
            ),
            slo={"ttft_p95_ms": 800, "itl_p95_ms": 150},
            expected_bottlenecks=("ttft_slo_breach",),
        )
    ]


def itl_breach() -> list[ServerSpec]:
    return [
        ServerSpec(
            "vllm-llama70b-itl",
            "vllm",
            LLAMA_70B,
            "A100-80GB",
            gpu_count=4,
            settings={
                "tensor_parallel_size": 4,
                "max_num_seqs": 512,
                "gpu_memory_utilization": 0.92,
            },
            workload=Workload(rate_rps=9, prompt_tokens_mean=400, output_tokens_mean=300),
            slo={"ttft_p95_ms": 5000, "itl_p95_ms": 45},
            # 512 sequences make every decode step read ~120 GB of KV on top of the weights; the
            # slower steps also cap throughput below the offered 9 requests/s, so the batch fills
            # and a queue forms behind it.
            expected_bottlenecks=("itl_slo_breach", "queue_saturation", "ttft_slo_breach"),
        )
    ]


def mixed() -> list[ServerSpec]:
    return [
        *kv_pressure(),
        *queue_saturation(),
        ServerSpec(
            "sglang-qwen7b-a100",
            "sglang",
            QWEN_7B,
            "A100-80GB",
            settings={"mem_fraction_static": 0.85, "max_running_requests": 128},
            workload=Workload(
                rate_rps=3, prompt_tokens_mean=800, output_tokens_mean=200, shared_prefix_ratio=0.4
            ),
            slo={"ttft_p95_ms": 1000, "itl_p95_ms": 50},
        ),
        ServerSpec(
            "tgi-llama8b-a10g",
            "tgi",
            LLAMA_8B,
            "A10G",
            settings={"max_concurrent_requests": 64, "max_batch_prefill_tokens": 4096},
            workload=Workload(
                rate_rps=1.0, prompt_tokens_mean=1200, output_tokens_mean=300, max_new_tokens=1024
            ),
            # An A10G reads 16 GB of FP16 weights per decode step (≈ 35 ms) and prefill chunks
            # ride in the same steps: 120 ms is a realistic inter-token SLO for it.
            slo={"ttft_p95_ms": 3000, "itl_p95_ms": 120},
        ),
        ServerSpec(
            "llamacpp-llama8b-l4",
            "llamacpp",
            LLAMA_8B,
            "L4",
            settings={"ctx_size": 32768, "parallel": 4, "model_quant": "q4_k_m"},
            workload=Workload(rate_rps=0.8, prompt_tokens_mean=700, output_tokens_mean=250),
            slo={"itl_p95_ms": 60},
            expected_bottlenecks=("queue_saturation",),
        ),
        *underutilized(),
    ]


def scale(servers: int = 1000) -> list[ServerSpec]:
    """A large fleet of modestly loaded servers of every engine, for benchmarks."""
    templates: list[tuple[str, str, str, dict[str, Any]]] = [
        ("vllm", LLAMA_8B, "H100-SXM-80GB", {"max_num_seqs": 256}),
        ("sglang", QWEN_7B, "A100-80GB", {"max_running_requests": 128}),
        ("tgi", LLAMA_8B, "A10G", {"max_concurrent_requests": 128}),
        ("llamacpp", LLAMA_8B, "L4", {"parallel": 4, "model_quant": "q4_k_m"}),
    ]
    specs = []
    for index in range(servers):
        engine, model, gpu, settings = templates[index % len(templates)]
        specs.append(
            ServerSpec(
                f"{engine}-{index:05d}",
                engine,
                model,
                gpu,
                settings=dict(settings),
                workload=Workload(
                    rate_rps=0.5 + (index % 7) * 0.3, prompt_tokens_mean=600, output_tokens_mean=150
                ),
                slo={"ttft_p95_ms": 2000, "itl_p95_ms": 80},
            )
        )
    return specs


SCENARIOS: dict[str, Callable[[], list[ServerSpec]]] = {
    "healthy": healthy,
    "kv_pressure": kv_pressure,
    "queue_saturation": queue_saturation,
    "underutilized": underutilized,
    "ttft_breach": ttft_breach,
    "itl_breach": itl_breach,
    "mixed": mixed,
    "scale": scale,
}


def load_fleet_file(path: Path) -> list[ServerSpec]:
    """A YAML fleet: `servers: [{name, engine, model, gpu, gpu_count, settings, workload, slo}]`."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("servers"), list):
        raise ValueError(f"{path}: expected a mapping with a 'servers' list")
    specs = []
    for entry in data["servers"]:
        entry = dict(entry)
        workload = Workload(**entry.pop("workload", {}))
        expected = tuple(entry.pop("expected_bottlenecks", ()))
        specs.append(ServerSpec(**entry, workload=workload, expected_bottlenecks=expected))
    return specs


def targets_for(
    specs: list[ServerSpec], base_url: str, gpu_names: dict[str, str] | None = None
) -> dict[str, Any]:
    """A targets file (DESIGN.md format) pointing at the simulated servers. `gpu_names` gives the
    GPU name a server's entry claims where it differs from the profile simulated (a GPU the
    agent's table does not know). The engine version goes in when the targets file has a field
    for it."""
    version_field = next(
        (f for f in ("version", "engine_version") if f in Target.model_fields), None
    )
    targets = []
    for spec in specs:
        config = {key: value for key, value in spec.settings.items() if value is not None}
        entry: dict[str, Any] = {
            "name": spec.name,
            "url": f"{base_url}/{spec.name}/metrics",
            "engine": spec.engine,
            "model": spec.model,
            "hardware": {
                "gpu": (gpu_names or {}).get(spec.name, spec.gpu),
                "count": spec.gpu_count,
            },
            "config": config,
        }
        if spec.slo:
            entry["slo"] = dict(spec.slo)
        if version_field is not None and spec.version:
            entry[version_field] = spec.version
        targets.append(entry)
    return {"targets": targets}
