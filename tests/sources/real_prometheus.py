"""A real Prometheus (/usr/bin/prometheus) with a scrape config written by the test and a TSDB
directory the test owns, so that it can be stopped and started again on the same data (what a
restart after a config change looks like).

`tests/support/prometheus.py` runs one job per target in a throw-away directory; the faults here
need label sets (two jobs, replica labels on one target) and a restart on the same TSDB.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.request import urlopen

import yaml

from tests.support.prometheus import PROMETHEUS_BIN, PrometheusServer, _free_port


def scrape_config(jobs: dict[str, list[tuple[str, dict[str, str]]]]) -> dict[str, Any]:
    """A 1 s scrape config: {job: [(host:port, target labels), ...]} of `/metrics` targets."""
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [
                    {"targets": [address], "labels": labels} for address, labels in entries
                ],
            }
            for job, entries in jobs.items()
        ],
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
