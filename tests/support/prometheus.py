"""A real Prometheus server (/usr/bin/prometheus) for tests, scraping loopback targets.

`run_prometheus(jobs)` writes a prometheus.yml with one job per entry (job name → scrape URL),
a 1 s scrape interval and a TSDB under a temporary directory, starts the server on a free
loopback port, waits for `/-/ready` and stops it (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlencode, urlsplit
from urllib.request import urlopen

import yaml

PROMETHEUS_BIN = "/usr/bin/prometheus"


def prometheus_available() -> bool:
    return shutil.which(PROMETHEUS_BIN) is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrometheusServer:
    url: str
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def api(self, path: str, **params: str) -> dict:
        query = f"?{urlencode(params)}" if params else ""
        with urlopen(f"{self.url}{path}{query}", timeout=5) as response:
            return json.loads(response.read())

    def scrapes_of(self, job: str) -> int:
        """How many samples of `up` Prometheus holds for the job over the last 5 minutes."""
        data = self.api("/api/v1/query", query=f'count_over_time(up{{job="{job}"}}[5m])')
        result = data["data"]["result"]
        return int(float(result[0]["value"][1])) if result else 0

    def wait_for_scrapes(self, jobs: list[str], count: int, timeout_s: float = 30.0) -> None:
        """Block until every job has at least `count` scrapes stored."""
        deadline = time.monotonic() + timeout_s
        while True:
            missing = [job for job in jobs if self.scrapes_of(job) < count]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"Prometheus has fewer than {count} scrapes of {missing}")
            time.sleep(0.2)


def _config(jobs: Mapping[str, str], interval: str) -> dict:
    scrape_configs = []
    for job, scrape_url in jobs.items():
        parts = urlsplit(scrape_url)
        scrape_configs.append(
            {
                "job_name": job,
                "scheme": parts.scheme,
                "metrics_path": parts.path or "/metrics",
                "static_configs": [{"targets": [parts.netloc]}],
            }
        )
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "scrape_configs": scrape_configs,
    }


@contextmanager
def prometheus_on(
    config: dict[str, Any], workdir: Path, *, port: int | None = None, timeout_s: float = 30.0
) -> Iterator[PrometheusServer]:
    """Run Prometheus with `config` on `workdir/data` until the block ends (SIGTERM on exit).

    The TSDB is kept: entering again with the same `workdir` is a restart on the same data.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = port or _free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS_BIN,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", config_path, log_path, process)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with {process.returncode}: {log_path.read_text()[-2000:]}"
                )
            try:
                with urlopen(f"{server.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except (URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready after {timeout_s}s")
            time.sleep(0.05)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@contextmanager
def run_prometheus(
    jobs: Mapping[str, str], *, interval: str = "1s", start_timeout_s: float = 20.0
) -> Iterator[PrometheusServer]:
    """Run Prometheus scraping `jobs` ({job name: scrape URL}) until the block ends."""
    workdir = Path(tempfile.mkdtemp(prefix="perf-prometheus-"))
    try:
        with prometheus_on(_config(jobs, interval), workdir, timeout_s=start_timeout_s) as server:
            yield server
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
