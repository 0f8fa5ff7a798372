"""`perf-pipelines sidecar` as a real process: start-up time, memory, latency, logs."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import insert

from perf_pipelines.cli.sidecar import is_loopback
from perf_pipelines.storage.db import create_db_engine, ensure_schema
from perf_pipelines.storage.schema import tuning_recommendations
from tests.sidecar.support import free_port, recommendation

CLI = Path(sys.executable).parent / "perf-pipelines"
TOKEN = "cli-secret-token-5678"
_OURS = ("DATABASE_URL", "ORCHESTRATOR_TOKEN", "ORCHESTRATOR_URL", "REDIS_URL", "PERF_TARGETS")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class _Running:
    def __init__(self, tmp_path: Path, *args: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_url = f"sqlite:///{tmp_path / 'perf.db'}"
        environment = {k: v for k, v in os.environ.items() if k not in _OURS}
        environment.update(
            DATABASE_URL=self.database_url,
            PERF_HOME=str(tmp_path),
            LOG_LEVEL="INFO",
            AGENT_ID="cli-agent",
            **env,
        )
        self.stderr_path = tmp_path / "sidecar.log"
        self._stderr = self.stderr_path.open("wb")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [str(CLI), "sidecar", "--port", str(self.port), *args],
            cwd=tmp_path,  # no stray .env
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )

    def wait_healthy(self, client: httpx.Client, timeout_s: float = 15.0) -> float:
        """Seconds from spawn to the first 200 of /api/v1/health."""
        while True:
            try:
                if client.get(f"{self.url}/api/v1/health").status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                raise AssertionError(f"sidecar exited: {self.stderr_path.read_text()[-3000:]}")
            if time.perf_counter() - self.started > timeout_s:
                raise AssertionError("sidecar did not answer /api/v1/health")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM, and check that the server shut down gracefully."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._stderr.close()
        # uvicorn re-raises the captured SIGTERM after its graceful shutdown
        assert self.process.returncode in (0, -signal.SIGTERM), self.process.returncode
        assert any(r["message"] == "Application shutdown complete." for r in self.log_records())

    def log_records(self) -> list[dict]:
        lines = self.stderr_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.mark.slow
def test_sidecar_process_starts_fast_and_warns_on_open_bind(tmp_path: Path) -> None:
    running = _Running(tmp_path, "--host", "0.0.0.0")
    try:
        with httpx.Client(timeout=5) as client:
            startup_s = running.wait_healthy(client)
            rss_start_mib = _rss_kib(running.process.pid) / 1024
            latencies = []
            for _ in range(200):
                started = time.perf_counter()
                assert client.get(f"{running.url}/api/v1/health").status_code == 200
                latencies.append(1000 * (time.perf_counter() - started))
            deadline = time.monotonic() + 10
            while True:  # the schema is migrated in the background at start-up
                detailed = client.get(f"{running.url}/api/v1/health/detailed").json()
                if detailed["components"]["database"]["status"] == "ok":
                    break
                assert time.monotonic() < deadline, detailed
                time.sleep(0.05)
            assert client.get(f"{running.url}/metrics").status_code == 200
            assert client.get(f"{running.url}/api/v1/recommendations").json()["count"] == 0
            rss_served_mib = _rss_kib(running.process.pid) / 1024
    finally:
        running.stop()
    latencies.sort()
    p50, p95 = statistics.median(latencies), latencies[int(0.95 * len(latencies))]
    print(  # shown with -s: the figures the README quotes
        f"\nsidecar: start {startup_s:.2f} s, RSS {rss_start_mib:.0f} MiB after start, "
        f"{rss_served_mib:.0f} MiB after every route; /api/v1/health p50 {p50:.2f} ms, "
        f"p95 {p95:.2f} ms"
    )
    assert startup_s < 10
    assert p50 < 50
    assert rss_served_mib < 200
    warnings = [r for r in running.log_records() if r["level"] == "WARNING"]
    assert any("SECURITY" in r["message"] and "0.0.0.0" in r["message"] for r in warnings)


@pytest.mark.slow
def test_sidecar_process_never_logs_the_token(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'perf.db'}"
    engine = create_db_engine(database_url)
    ensure_schema(engine)
    with engine.begin() as connection:
        connection.execute(
            insert(tuning_recommendations), [recommendation("rec-c", at=datetime.now(UTC))]
        )
    engine.dispose()
    running = _Running(tmp_path, ORCHESTRATOR_TOKEN=TOKEN)
    path = f"{running.url}/api/v1/recommendations/rec-c/status"
    note = f"copied the header by mistake: Bearer {TOKEN}"
    try:
        with httpx.Client(timeout=5) as client:
            running.wait_healthy(client)
            wrong = client.post(path, json={"status": "applied"}, headers={"Authorization": "x"})
            assert wrong.status_code == 401
            answer = client.post(
                path,
                json={"status": "applied", "note": note},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert (answer.status_code, answer.json()["status"]) == (200, "applied")
    finally:
        running.stop()
    text = running.stderr_path.read_text()
    assert TOKEN not in text
    records = running.log_records()
    assert not any(r["level"] == "WARNING" and "SECURITY" in r["message"] for r in records)
    applied = [r for r in records if r.get("recommendation_id") == "rec-c"]
    assert applied and "***" in applied[0]["note"]
    requests = [r for r in records if r.get("http_path") == "/api/v1/recommendations/rec-c/status"]
    assert [r["http_status"] for r in requests] == [401, 200]
    assert all("authorization" not in json.dumps(r).lower() for r in requests)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.7", False),
        ("sidecar.internal", False),
    ],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_sidecar_on_a_current_database_loads_neither_alembic_nor_httpx(tmp_path: Path) -> None:
    # Alembic (~10 MiB) is only needed for a pending migration, httpx (~5 MiB) only by the
    # orchestrator client; the sidecar's memory figure in docs/benchmarks.md depends on both.
    url = f"sqlite:///{tmp_path / 'perf.db'}"
    ensure_schema(create_db_engine(url))
    probe = (
        "import sys\n"
        "from perf_pipelines.settings import load_settings\n"
        "from perf_pipelines.sidecar.app import create_app\n"
        "from perf_pipelines.cli.sidecar import _migrate_in_background\n"
        "from perf_pipelines.storage.db import create_db_engine\n"
        "settings = load_settings()\n"
        "create_app(settings)\n"
        "_migrate_in_background(create_db_engine(settings.resolved_database_url)).join(10)\n"
        "print(sorted(m for m in ('alembic', 'httpx') if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in _OURS} | {"DATABASE_URL": url}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
