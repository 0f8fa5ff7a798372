"""The README's first command, as a newcomer runs it: `scripts/demo.sh` on the embedded default
(SQLite, simulated mixed fleet, one optimization_cycle), stopped before the UI starts."""

import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import HTTPServer, SimpleHTTPRequestHandler
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_demo_finds_the_mixed_fleets_bottlenecks_in_one_run(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "PERF_"))}
    env.pop("DATABASE_URL", None)
    env.update(PERF_HOME=str(tmp_path), DEMO_NO_UI="1", FLEET_PORT=str(_free_port()))
    done = subprocess.run(
        ["./scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "RUN_SUCCESS" in done.stdout + done.stderr
    with sqlite3.connect(tmp_path / "perf_pipelines.db") as db:
        kinds = dict(
            db.execute("SELECT target, group_concat(kind) FROM bottleneck_reports GROUP BY target")
        )
        flags = dict(db.execute("SELECT target, engine_flag FROM open_recommendations"))
        snapshots = db.execute("SELECT count(*) FROM metric_snapshots WHERE up").fetchone()[0]
    assert snapshots == 6 * 8  # six servers, eight samples, all up
    # One default run (8 samples 5 s apart: 35 s, more than the 30 s a condition must hold to be
    # sustained) is enough to see each server's named bottleneck.
    assert "kv_cache_pressure" in kinds["vllm-llama70b-kv"]
    assert "queue_saturation" in kinds["vllm-llama8b-queue"]
    assert "underutilization" in kinds["sglang-qwen7b-idle"]
    assert flags["vllm-llama70b-kv"] == "--gpu-memory-utilization"
    assert flags["vllm-llama8b-queue"] == "--max-num-seqs"
    assert (tmp_path / "dagster" / ".nux" / "nux.yaml").exists()  # no welcome pop-up in the UI


def _demo_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "PERF_"))}
    env.pop("DATABASE_URL", None)
    env.update(PERF_HOME=str(tmp_path), FLEET_PORT=str(_free_port()), UI_PORT=str(_free_port()))
    env.update(extra)
    return env


def _processes_of(home: Path) -> list[int]:
    """Processes whose environment names this demo's PERF_HOME: the demo and all it started."""
    mark = f"PERF_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if mark in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue  # gone, or not ours
    return found


@contextmanager
def _listening_elsewhere() -> Iterator[int]:
    """A port another program serves HTTP on."""
    server = HTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("variable", ["FLEET_PORT", "UI_PORT"])
def test_a_taken_port_is_one_line_naming_it(tmp_path: Path, variable: str) -> None:
    with _listening_elsewhere() as port:
        env = _demo_env(tmp_path, **{variable: str(port)})
        done = subprocess.run(
            ["./scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        still_served = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).status
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 3, (done.returncode, done.stderr[-2000:])
    assert len(errors) == 1 and str(port) in errors[0] and variable in errors[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert still_served == 200  # the other program was left alone
    assert not (tmp_path / "targets.yaml").exists()  # nothing points at the other program
    assert not _processes_of(tmp_path)


@pytest.mark.slow
def test_ctrl_c_stops_the_demo_and_every_child_with_one_line(tmp_path: Path) -> None:
    env = _demo_env(tmp_path)
    ui = f"http://127.0.0.1:{env['UI_PORT']}/server_info"
    # Its own process group, as a shell gives a foreground job: Ctrl-C is SIGINT to the group.
    demo = subprocess.Popen(
        ["./scripts/demo.sh"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 540
        while not _answers(ui):
            assert demo.poll() is None, demo.communicate()
            assert time.monotonic() < deadline, "the Dagster UI never came up"
            time.sleep(0.5)
        children = _processes_of(tmp_path)
        assert len(children) >= 3, children  # the demo, the simulator, dagster dev and its own
        os.killpg(demo.pid, signal.SIGINT)
        stopped_at = time.monotonic()
        out, err = demo.communicate(timeout=60)
        while _processes_of(tmp_path) and time.monotonic() - stopped_at < 30:
            time.sleep(0.1)
        took = time.monotonic() - stopped_at
        left = _processes_of(tmp_path)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
        for pid in _processes_of(tmp_path):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after Ctrl-C: {left}"
    assert took <= 10, f"stopping took {took:.1f} s"
    assert demo.returncode == 130, demo.returncode
    assert "Traceback" not in out + err, err[-3000:]
    # Children flush what they buffered as they stop, so the line need not be the last one.
    assert err.splitlines().count("demo stopped") == 1, err[-2000:]
    # A second run on the same home and ports starts cleanly.
    again = subprocess.run(
        ["./scripts/demo.sh"],
        cwd=ROOT,
        env={**env, "DEMO_NO_UI": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]


def _answers(url: str) -> bool:
    try:
        return bool(urllib.request.urlopen(url, timeout=5).status == 200)
    except OSError:
        return False
