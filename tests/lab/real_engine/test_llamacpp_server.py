"""A real llama.cpp llama-server scraped by the real collector: detection, settings from the
server itself, counters under real load, and a restart inside a window."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perf_lab.real_engine.llamacpp import Installed
from perf_lab.real_engine.server import LlamaServer, ServerError, free_port
from perf_pipelines.analysis.promql import counter_increase
from perf_pipelines.analysis.window import window_stats
from perf_pipelines.collection.collector import ScrapeLimits, ScrapeResult, collect
from perf_pipelines.collection.rounds import rows_from_rounds
from perf_pipelines.engines import snapshots_from_text
from perf_pipelines.engines.canonical import CanonicalSnapshot, Engine
from perf_pipelines.targets import Target, load_targets
from tests.support.windows import snapshot_frame

pytestmark = pytest.mark.real_engine

LIMITS = ScrapeLimits(timeout_s=10.0, concurrency=4)
PROMPT = "Write one sentence about the sea."


def _scrape(server: LlamaServer, engine: str = "auto") -> ScrapeResult:
    target = Target(name="real-llamacpp", url=server.metrics_url, engine=engine)  # type: ignore[arg-type]
    (results,) = asyncio.run(collect([target], LIMITS))
    (result,) = results
    assert result.up, f"scrape of the real server failed: {result.error}"
    return result


def _own_metrics(server: LlamaServer) -> CanonicalSnapshot:
    """The server's /metrics, read directly and mapped with the engine named."""
    import urllib.request

    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    _, (snapshot,) = snapshots_from_text(text, Engine.LLAMACPP)
    return snapshot


def _only(result: ScrapeResult) -> CanonicalSnapshot:
    (snapshot,) = result.snapshots
    return snapshot


def _scrape_after(server: LlamaServer, generated: float, deadline_s: float = 60.0) -> ScrapeResult:
    """A scrape once the server has counted `generated` tokens in all and is idle: it counts a
    request when its slot is released, just after the answer is sent."""
    deadline = time.monotonic() + deadline_s
    while True:
        result = _scrape(server)
        snapshot = _only(result)
        settled = snapshot.generation_tokens_total == generated and snapshot.requests_running == 0
        if settled or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def _after(server: LlamaServer, generated: float) -> CanonicalSnapshot:
    return _only(_scrape_after(server, generated))


def test_auto_target_is_detected_as_llamacpp(server: LlamaServer) -> None:
    result = _scrape(server, engine="auto")
    assert result.engine is Engine.LLAMACPP
    snapshot = _only(result)
    assert snapshot.rejected == [], snapshot.rejected


def test_snapshot_matches_the_servers_own_metrics_slots_and_props(server: LlamaServer) -> None:
    snapshot = _only(_scrape(server))
    own = _own_metrics(server)  # idle server: nothing moves between the two reads
    for name in (
        "requests_running",
        "requests_waiting",
        "prompt_tokens_total",
        "generation_tokens_total",
        "prefix_cache_hits_total",
    ):
        assert getattr(snapshot, name) == getattr(own, name), name
    assert snapshot.extra == own.extra
    props = server.props()
    slots = server.get_json("/slots")
    # Current values from the server itself; no targets-file entry says them.
    assert snapshot.settings == {
        "parallel": props["total_slots"],
        "ctx_per_slot": props["default_generation_settings"]["n_ctx"],
    }
    assert props["total_slots"] == len(slots) == 2, (props["total_slots"], len(slots))
    assert {slot["n_ctx"] for slot in slots} == {snapshot.settings["ctx_per_slot"]}
    # --ctx-size 2048 over --parallel 2, each slot with its own half of the KV cache
    assert snapshot.settings["ctx_per_slot"] == 1024


def test_token_and_decode_counters_grow_under_real_load(server: LlamaServer) -> None:
    before = _only(_scrape(server))
    answers = server.load([f"{PROMPT} ({i})" for i in range(4)], n_predict=12, concurrency=4)
    predicted = sum(answer["tokens_predicted"] for answer in answers)
    after = _after(server, (before.generation_tokens_total or 0) + predicted)
    evaluated = sum(answer["tokens_evaluated"] for answer in answers)
    assert predicted == 4 * 12, answers
    assert after.generation_tokens_total - before.generation_tokens_total == predicted
    # prompt total = processed + reused from cache: every prompt token the server was sent
    assert after.prompt_tokens_total - before.prompt_tokens_total == evaluated
    decodes = after.extra["decode_calls_total"] - before.extra["decode_calls_total"]
    # one llama_decode() per generated token at most, fewer when slots are batched together;
    # at least the longest request's generation steps
    assert 12 <= decodes <= predicted + 4, decodes
    assert after.extra["predicted_seconds_total"] > before.extra["predicted_seconds_total"]
    assert after.requests_running == 0 and after.requests_waiting == 0


def test_window_knows_slots_and_context_without_a_targets_file_entry(
    server: LlamaServer,
) -> None:
    rounds = [[_scrape(server)]]
    answers = server.load([f"{PROMPT} <{i}>" for i in range(2)], n_predict=10, concurrency=2)
    generated = sum(answer["tokens_predicted"] for answer in answers)
    _after(server, (_only(rounds[0][0]).generation_tokens_total or 0) + generated)
    rounds.append([_scrape(server)])
    frame = snapshot_frame(rows_from_rounds("real-run", rounds))
    times = frame["collected_at"]
    (stats,) = window_stats(frame, {}, times.min(), times.max())
    assert stats.engine == "llamacpp"
    assert stats.slots == 2 and stats.ctx_per_slot_tokens == 1024, stats.settings
    assert stats.batch_limit == 2 and stats.batch_limit_source == "parallel from server settings"
    assert stats.increases["generation_tokens"] == generated


def test_a_restart_mid_window_is_a_counter_reset(llama: Installed) -> None:
    rounds: list[list[ScrapeResult]] = []
    generated = 0
    port = None
    target = None
    for lifetime in range(2):
        with LlamaServer(
            llama.binary, llama.model, port=port, parallel=2, ctx_size=2048, threads=2
        ) as server:
            port = server.port  # the same target restarted, as an operator would
            target = Target(name="real-llamacpp", url=server.metrics_url, engine="auto")
            rounds.append([_scrape(server)])
            answers = server.load([f"{PROMPT} [{lifetime}]"] * 2, n_predict=8, concurrency=2)
            served = sum(answer["tokens_predicted"] for answer in answers)
            generated += served
            rounds.append([_scrape_after(server, served)])
        if lifetime == 0:  # scraped while it is down: a failed sample inside the window
            assert target is not None
            rounds.append(asyncio.run(collect([target], LIMITS))[0])
    samples = [_only(r[0]).generation_tokens_total if r[0].up else None for r in rounds]
    # up 0 → 16, down, then the new process from 0 → 16
    assert samples == [0, 16, None, 0, 16], samples
    # PromQL's increase(): the drop is a restart, the new value counts from 0
    assert counter_increase(samples) == generated == 32, samples
    frame = snapshot_frame(rows_from_rounds("restart-run", rounds))
    times = frame["collected_at"]
    (stats,) = window_stats(frame, {}, times.min(), times.max())
    assert (stats.samples, stats.up_samples) == (5, 4)
    assert stats.increases["generation_tokens"] == 32, stats.increases
    assert stats.errors and "connection failed" in stats.errors[0], stats.errors


def test_server_that_is_gone_is_a_recorded_failure(llama: Installed) -> None:
    with LlamaServer(llama.binary, llama.model, parallel=1, ctx_size=512, threads=2) as server:
        url = server.metrics_url
    started = time.monotonic()
    target = Target(name="stopped", url=url, engine="auto")
    (results,) = asyncio.run(collect([target], LIMITS))
    assert not results[0].up
    assert "connection failed" in (results[0].error or ""), results[0].error
    assert time.monotonic() - started < LIMITS.timeout_s


def test_a_model_that_does_not_load_is_one_line(llama: Installed, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)  # a GGUF magic and nothing a loader can use
    with pytest.raises(ServerError) as caught:
        LlamaServer(llama.binary, broken, parallel=1, ctx_size=512).start()
    message = str(caught.value)
    assert message.startswith("llama-server exited ("), message
    assert "\n" not in message and str(broken) in message, message


def test_start_serves_on_loopback_and_sigterm_stops_the_server_too(
    llama: Installed, tmp_path: Path
) -> None:
    port = free_port()
    targets = tmp_path / "targets.yaml"
    command = [sys.executable, "-c", "from perf_pipelines.cli import main; main()"]
    command += ["llama-server", "start", "--port", str(port), "--parallel", "3"]
    command += ["--write-targets", str(targets)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()  # the line comes once /health answers, or never
        assert f"ready at http://127.0.0.1:{port}/metrics (3 slots" in ready, ready
        result = _scrape_url(load_targets(targets))
        assert result.engine is Engine.LLAMACPP and _only(result).settings["parallel"] == 3
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "stopping llama-server" in stderr
    with pytest.raises(OSError):  # nothing listens on the port any more
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def _scrape_url(targets: list[Target]) -> ScrapeResult:
    (results,) = asyncio.run(collect(targets, LIMITS))
    (result,) = results
    assert result.up, result.error
    return result
