"""Simulated decode speed next to published measurements (docs/simulator.md, "Validation").

Fixed-length requests at a fixed concurrency, as `vllm bench serve --max-concurrency C
--random-input-len 1024 --random-output-len 128 --ignore-eos` does; prints output tokens/s.
"""

from __future__ import annotations

from perf_lab.simulator.exposition import VLLM_BUCKETS
from perf_lab.simulator.model import ServerModel, Workload
from perf_lab.simulator.settings import to_knobs, validate_settings

from perf_pipelines.hardware import gpu_by_name, model_by_name

# (GPU, concurrency, published output tokens/s, source)
PUBLISHED = [
    ("A100-40GB", 1, 75.0, "johnmusgrave.com vLLM sweep, Llama-3.1-8B BF16, 1024 in/128 out"),
    ("A100-40GB", 8, 495.0, "same sweep: '6.6x gain up to concurrency 8' over 75 tok/s"),
]


def decode_tokens_per_second(gpu: str, concurrency: int) -> float:
    knobs = to_knobs("vllm", validate_settings("vllm", {"max_num_seqs": concurrency}), 1)
    server = ServerModel(
        gpu_by_name(gpu),
        1,
        model_by_name("meta-llama/Llama-3.1-8B-Instruct"),
        knobs,
        VLLM_BUCKETS,
        Workload(),
        0.0,
        1,
    )
    # Steady state of C requests mid-generation: 1024 prompt + ~64 generated tokens each.
    step = server.step_time(concurrency, 0, concurrency * (1024 + 64))
    return concurrency / step


def main() -> None:
    print("| GPU | concurrency | simulated tok/s | published tok/s | ratio | source |")
    print("|---|---|---|---|---|---|")
    for gpu, concurrency, published, source in PUBLISHED:
        simulated = decode_tokens_per_second(gpu, concurrency)
        print(
            f"| {gpu} | {concurrency} | {simulated:.0f} | {published:.0f} "
            f"| {simulated / published:.2f} | {source} |"
        )


if __name__ == "__main__":
    main()
