"""Exact canonical values from each engine's fixture (values set in make_expositions.py)."""

from pathlib import Path

import pytest

from perf_pipelines.engines import detect_engine, snapshots_from_text
from perf_pipelines.engines.canonical import Engine
from perf_pipelines.engines.exposition import ExpositionError

EXPOSITIONS = Path(__file__).parent.parent / "fixtures" / "expositions"
MODEL_70B = "meta-llama/Llama-3.1-70B-Instruct"


def _load(name: str, engine: Engine | None = None):
    return snapshots_from_text((EXPOSITIONS / name).read_text(), engine)


def test_vllm_v1_sums_data_parallel_engines() -> None:
    engine, (snap,) = _load("vllm_v1_0_33.txt", Engine.VLLM)
    assert engine is Engine.VLLM
    assert snap.model == MODEL_70B
    assert snap.requests_running == 78
    assert snap.requests_waiting == 12
    assert snap.kv_cache_usage == pytest.approx(0.93)
    assert snap.preemptions_total == 42
    assert snap.prompt_tokens_total == 2_200_000
    assert snap.generation_tokens_total == 780_000
    assert snap.requests_finished_total == 1946
    assert snap.requests_failed_total == 10  # abort 5 + error 1 + 4 admission rejections
    assert snap.prefix_cache_queries_total == 1_700_000
    assert snap.prefix_cache_hits_total == 450_000
    assert snap.kv_cache_capacity_tokens == 640_000  # kv_cache_size_tokens of both engines
    assert snap.process_start_time == 1.764e9
    assert snap.ttft_seconds is not None and snap.ttft_seconds.count == 413
    assert snap.ttft_seconds.bounds[0] == 0.001 and snap.ttft_seconds.bounds[-1] == 2560.0
    assert snap.itl_seconds is not None and snap.itl_seconds.count == 1213
    assert snap.e2e_seconds is not None and snap.queue_seconds is not None
    assert snap.settings["gpu_memory_utilization"] == 0.9
    assert snap.settings["block_size"] == 16
    assert snap.settings["enable_prefix_caching"] is True
    assert snap.settings["num_cpu_blocks"] is None
    assert snap.settings["cache_dtype"] == "auto"
    assert "engine" not in snap.settings


def test_vllm_old_names_are_mapped() -> None:
    _, (snap,) = _load("vllm_0_8_5_old_names.txt")
    assert snap.kv_cache_usage == pytest.approx(0.93)  # vllm:gpu_cache_usage_perc
    assert snap.prefix_cache_hits_total == 450_000  # vllm:gpu_prefix_cache_hits_total
    assert snap.itl_seconds is not None and snap.itl_seconds.count == 1213  # time_per_output_token
    assert snap.kv_cache_capacity_tokens == 640_000  # num_gpu_blocks × block_size
    assert snap.requests_failed_total == 6  # no admission-rejection counter before 0.33


def test_vllm_prefers_new_names_when_both_are_exported() -> None:
    text = (
        "# TYPE vllm:gpu_cache_usage_perc gauge\n"
        'vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.1\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.7\n'
    )
    _, (snap,) = snapshots_from_text(text, None)
    assert snap.kv_cache_usage == 0.7
    _, (both,) = _load("vllm_0_10_2_both_names.txt")
    assert both.kv_cache_usage == pytest.approx(0.93)


def test_vllm_several_models_give_one_row_each() -> None:
    _, snaps = _load("vllm_multi_model.txt")
    by_model = {s.model: s for s in snaps}
    assert set(by_model) == {MODEL_70B, "meta-llama/Llama-3.1-8B-Instruct"}
    small = by_model["meta-llama/Llama-3.1-8B-Instruct"]
    assert small.requests_running == 10
    assert small.kv_cache_usage == pytest.approx(0.42)
    assert small.prompt_tokens_total == 1_100_000
    assert by_model[MODEL_70B].requests_running == 78


def test_vllm_openmetrics_gives_the_same_snapshot() -> None:
    _, (text_snap,) = _load("vllm_v1_0_33.txt")
    _, (om_snap,) = _load("vllm_openmetrics.txt")
    assert om_snap == text_snap


def test_sglang_0_5_reads_one_tp_pp_rank_and_sums_dp() -> None:
    engine, (snap,) = _load("sglang_0_5.txt")
    assert engine is Engine.SGLANG
    assert snap.model == "Qwen/Qwen2.5-7B-Instruct"
    assert snap.requests_running == 40
    assert snap.requests_waiting == 12
    assert snap.kv_cache_usage == pytest.approx(0.95)
    assert snap.preemptions_total == 36  # the pp_rank=1 copy and the pid gauge are left out
    assert snap.prompt_tokens_total == 750_000
    assert snap.generation_tokens_total == 250_000
    assert snap.prefix_cache_hits_total == 200_000
    assert snap.prefix_cache_queries_total == 750_000
    assert snap.requests_finished_total == 880
    assert snap.requests_failed_total == 3
    assert snap.kv_cache_capacity_tokens == 370_000
    assert snap.settings == {
        "max_total_num_tokens": 185_000,
        "page_size": 1,
        "context_len": 32768,
    }
    assert snap.ttft_seconds is not None and snap.ttft_seconds.count == 320
    assert snap.ttft_seconds.bounds[0] == 0.1
    assert snap.queue_seconds is not None and snap.queue_seconds.bounds[0] == 0.0


def test_sglang_0_4_6_lacks_retractions() -> None:
    _, (snap,) = _load("sglang_0_4_6.txt")
    assert snap.requests_running == 21
    assert snap.kv_cache_usage == pytest.approx(0.97)
    assert snap.preemptions_total is None
    assert snap.requests_failed_total is None
    assert snap.queue_seconds is None
    assert snap.prefix_cache_hits_total == 180_000


def test_tgi_has_proxies_and_nulls() -> None:
    engine, (snap,) = _load("tgi_3_3.txt")
    assert engine is Engine.TGI
    assert snap.model is None
    assert snap.requests_running == 31
    assert snap.requests_waiting == 14
    assert snap.kv_cache_capacity_tokens == 162_000
    assert snap.extra["kv_reservation_ratio"] == pytest.approx(151_000 / 162_000)
    assert snap.requests_finished_total == 5198 + 80
    assert snap.requests_failed_total == 80
    assert snap.itl_seconds is not None and snap.itl_seconds.count == 500  # decode passes only
    assert snap.e2e_seconds is not None and snap.e2e_seconds.count == 300
    assert snap.prompt_tokens_total == sum(float(200 + (i * 53) % 3500) for i in range(300))
    for missing in (
        "kv_cache_usage",
        "ttft_seconds",
        "preemptions_total",
        "prefix_cache_hits_total",
    ):
        assert getattr(snap, missing) is None, missing


def test_llamacpp_current_build() -> None:
    engine, (snap,) = _load("llamacpp_current.txt")
    assert engine is Engine.LLAMACPP
    assert snap.requests_running == 4
    assert snap.requests_waiting == 6
    assert snap.prompt_tokens_total == 48213 + 20011
    assert snap.prefix_cache_hits_total == 20011
    assert snap.prefix_cache_queries_total == 48213 + 20011
    assert snap.generation_tokens_total == 151877
    assert snap.kv_cache_usage is None
    assert snap.ttft_seconds is None
    assert snap.extra["busy_slots_per_decode"] == 3.81


def test_llamacpp_early_2025_build_with_nan() -> None:
    _, (snap,) = _load("llamacpp_early_2025.txt")
    assert snap.kv_cache_usage == 0.87
    assert snap.prompt_tokens_total == 48213
    assert snap.prefix_cache_hits_total is None
    assert "busy_slots_per_decode" not in snap.extra  # printed as nan


@pytest.mark.parametrize(
    ("name", "engine"),
    [
        ("vllm_v1_0_33.txt", Engine.VLLM),
        ("vllm_0_8_5_old_names.txt", Engine.VLLM),
        ("vllm_openmetrics.txt", Engine.VLLM),
        ("sglang_0_5.txt", Engine.SGLANG),
        ("sglang_0_4_6.txt", Engine.SGLANG),
        ("tgi_3_3.txt", Engine.TGI),
        ("llamacpp_current.txt", Engine.LLAMACPP),
        ("llamacpp_early_2025.txt", Engine.LLAMACPP),
    ],
)
def test_auto_detection(name: str, engine: Engine) -> None:
    detected, snaps = _load(name)
    assert detected is engine
    assert snaps


def test_detect_engine_from_names() -> None:
    assert detect_engine(["process_cpu_seconds_total", "vllm:num_requests_running"]) is Engine.VLLM
    assert detect_engine(["http_requests_total"]) is None


def test_wrong_engine_hint_is_a_clear_error() -> None:
    text = (EXPOSITIONS / "tgi_3_3.txt").read_text()
    with pytest.raises(ExpositionError, match=r"no vLLM metrics found \(found TGI metrics\)"):
        snapshots_from_text(text, Engine.VLLM)


def test_page_without_engine_metrics_is_an_error() -> None:
    text = "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 3.0\n"
    with pytest.raises(ExpositionError, match=r"no vLLM/SGLang/TGI/llama\.cpp metrics found"):
        snapshots_from_text(text, None)
