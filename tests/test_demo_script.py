"""The README's first command, as a newcomer runs it: `scripts/demo.sh` on the embedded default
(SQLite, simulated mixed fleet, one optimization_cycle), stopped before the UI starts."""

import os
import socket
import sqlite3
import subprocess
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
