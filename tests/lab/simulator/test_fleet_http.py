"""The fleet over real HTTP on loopback: expositions, restarts and the control API."""

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from perf_lab.simulator.fleet import RESTART_SECONDS, Fleet
from perf_lab.simulator.http import run_fleet_in_thread
from perf_lab.simulator.scenarios import SCENARIOS, mixed
from perf_pipelines.engines import snapshots_from_text
from perf_pipelines.engines.canonical import Engine
from perf_pipelines.engines.exposition import parse_exposition

ENGINES = {"vllm", "sglang", "tgi", "llamacpp"}


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    simulated = Fleet(mixed(), virtual=True, seed=11)
    simulated.advance(180)
    return simulated


@pytest.fixture(scope="module")
def base_url(fleet: Fleet) -> Iterator[str]:
    with run_fleet_in_thread(fleet) as url:
        yield url


def test_mixed_fleet_covers_every_engine(fleet: Fleet) -> None:
    assert {s.spec.engine for s in fleet.servers.values()} == ENGINES
    assert len({s.spec.gpu for s in fleet.servers.values()}) >= 4


@pytest.mark.parametrize("name", [s.name for s in mixed()])
def test_exposition_parses_and_maps_like_the_internal_state(
    fleet: Fleet, base_url: str, name: str
) -> None:
    response = httpx.get(f"{base_url}/{name}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    families = list(text_string_to_metric_families(text))  # prometheus_client accepts it
    assert families
    assert parse_exposition(text)
    server = fleet.server(name)
    engine, (snap,) = snapshots_from_text(text, Engine(server.spec.engine))
    model = server.model
    assert model is not None
    assert snap.requests_running == len(model.running)
    assert snap.requests_waiting == len(model.waiting)
    if engine in (Engine.VLLM, Engine.SGLANG):
        assert snap.kv_cache_usage == pytest.approx(model.kv_usage(), abs=0.006)
        assert snap.kv_cache_capacity_tokens == pytest.approx(model.kv_capacity_tokens, rel=0.001)
        assert snap.model == server.spec.model
    assert snap.generation_tokens_total == model.counters.generation_tokens


@pytest.mark.parametrize(
    ("scenario", "check"),
    [
        ("kv_pressure", "kv"),
        ("queue_saturation", "queue"),
        ("underutilized", "idle"),
        ("itl_breach", "itl"),
        ("ttft_breach", "ttft"),
    ],
)
def test_scenarios_show_their_bottleneck_in_real_metric_names(scenario: str, check: str) -> None:
    fleet = Fleet(SCENARIOS[scenario](), virtual=True, seed=5)
    (server,) = fleet.servers.values()
    fleet.advance(120)
    first = snapshots_from_text(fleet.exposition(server.spec.name), None)[1][0]
    fleet.advance(120)
    _, (last,) = snapshots_from_text(fleet.exposition(server.spec.name), None)
    slo = server.spec.slo
    if check == "kv":
        assert last.kv_cache_usage is not None and last.kv_cache_usage >= 0.75
        assert (last.preemptions_total or 0) > (first.preemptions_total or 0)
    elif check == "queue":
        limit = server.settings["max_num_seqs"]
        assert last.requests_running == limit and (last.requests_waiting or 0) > limit
    elif check == "idle":
        assert (last.requests_running or 0) <= 3 and last.requests_waiting == 0
    else:
        histogram = last.itl_seconds if check == "itl" else last.ttft_seconds
        assert histogram is not None and histogram.sum is not None
        mean_ms = histogram.sum / histogram.count * 1000
        assert mean_ms > slo[f"{check}_p95_ms"]


def test_settings_change_restarts_the_server(base_url: str, fleet: Fleet) -> None:
    name = "vllm-llama8b-queue"
    before = snapshots_from_text(httpx.get(f"{base_url}/{name}/metrics").text, None)[1][0]
    response = httpx.put(f"{base_url}/control/servers/{name}/settings", json={"max_num_seqs": 48})
    assert response.status_code == 200, response.text
    assert response.json()["settings"]["max_num_seqs"] == 48
    assert response.json()["restarts"] == 1
    unavailable = httpx.get(f"{base_url}/{name}/metrics")
    assert unavailable.status_code == 503 and "restarting" in unavailable.text
    fleet.advance(RESTART_SECONDS + 30)
    after = snapshots_from_text(httpx.get(f"{base_url}/{name}/metrics").text, None)[1][0]
    assert after.process_start_time is not None and before.process_start_time is not None
    assert after.process_start_time > before.process_start_time
    assert (after.generation_tokens_total or 0) < (before.generation_tokens_total or 0)  # reset
    # the new cap is in force: more requests run at once than the old cap of 16 allowed
    assert 16 < (after.requests_running or 0) <= 48


def test_workload_change_applies(base_url: str, fleet: Fleet) -> None:
    name = "sglang-qwen7b-idle"
    response = httpx.put(f"{base_url}/control/servers/{name}/workload", json={"rate_rps": 4.0})
    assert response.status_code == 200
    assert fleet.server(name).spec.workload.rate_rps == 4.0


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        (
            "PUT",
            "/control/servers/vllm-llama8b-queue/settings",
            {"max_num_seq": 4},
            422,
            "unknown vllm setting",
        ),
        (
            "PUT",
            "/control/servers/vllm-llama8b-queue/settings",
            {"gpu_memory_utilization": 2},
            422,
            "within",
        ),
        ("PUT", "/control/servers/nope/settings", {"max_num_seqs": 4}, 404, "unknown server"),
        ("PUT", "/control/servers/vllm-llama8b-queue/settings", [1, 2], 422, "JSON object"),
        (
            "PUT",
            "/control/servers/vllm-llama8b-queue/workload",
            {"rate": 1},
            422,
            "unknown workload",
        ),
        ("PUT", "/control/servers/vllm-llama8b-queue/workload", {"rate_rps": -1}, 422, "rate_rps"),
        ("GET", "/nope/metrics", None, 404, "unknown server"),
        ("DELETE", "/control/servers/vllm-llama8b-queue/settings", None, 405, "unsupported"),
    ],
)
def test_control_api_rejects_bad_requests(
    base_url: str, method: str, path: str, body: object, status: int, message: str
) -> None:
    response = httpx.request(method, base_url + path, json=body)
    assert response.status_code == status
    assert message in response.text


def test_invalid_json_is_rejected(base_url: str) -> None:
    response = httpx.put(
        f"{base_url}/control/servers/vllm-llama8b-queue/settings", content=b"{not json"
    )
    assert response.status_code == 422 and "not valid JSON" in response.text


def test_server_that_cannot_start_answers_503(base_url: str) -> None:
    response = httpx.put(
        f"{base_url}/control/servers/vllm-llama70b-kv/settings",
        json={"tensor_parallel_size": 1},
    )
    assert response.status_code == 200
    assert "out of memory" in response.json()["startup_error"]
