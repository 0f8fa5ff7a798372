"""The README's path for real servers, run as a user would: the CLI and `dagster job execute`.

Loopback servers answer with each engine's fixture exposition (and one target is down); the
job runs in a subprocess exactly as documented, on SQLite and on PostgreSQL.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from perf_pipelines.storage.schema import metric_snapshots
from tests.support.http_servers import Route, closed_port, serve

EXPOSITIONS = Path(__file__).parent / "fixtures" / "expositions"
BIN = Path(sys.executable).parent


def _routes() -> dict[str, Route]:
    return {
        f"/{name}/metrics": Route(body=(EXPOSITIONS / f"{fixture}.txt").read_bytes())
        for name, fixture in (
            ("vllm", "vllm_v1_0_33"),
            ("sglang", "sglang_0_5"),
            ("tgi", "tgi_3_3"),
            ("llamacpp", "llamacpp_current"),
        )
    }


def _env(tmp_path: Path, database_url: str, targets: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "PERF_"))}
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    env.update(
        DAGSTER_HOME=str(dagster_home),
        PERF_HOME=str(tmp_path / "perf_home"),
        DATABASE_URL=database_url,
        PERF_TARGETS=str(targets),
        SCRAPE_SAMPLES="2",
        SCRAPE_INTERVAL_S="0.2",
        SCRAPE_TIMEOUT_S="2",
    )
    return env


@pytest.mark.slow
def test_dagster_job_execute_stores_all_four_engines(tmp_path: Path, database_url: str) -> None:
    with serve(_routes()) as server:
        targets = tmp_path / "targets.yaml"
        lines = ["targets:"]
        for name in ("vllm", "sglang", "tgi", "llamacpp"):
            model = ", model: bigscience/tgi-model" if name == "tgi" else ""
            lines.append(f"  - {{name: {name}-a, url: '{server.base_url}/{name}/metrics'{model}}}")
        lines.append(f"  - {{name: down-b, url: 'http://127.0.0.1:{closed_port()}/metrics'}}")
        targets.write_text("\n".join(lines) + "\n")
        env = _env(tmp_path, database_url, targets)

        validated = subprocess.run(
            [BIN / "perf-pipelines", "validate-targets"], env=env, capture_output=True, text=True
        )
        assert validated.returncode == 0, validated.stderr
        assert "5 target(s) OK" in validated.stdout
        upgraded = subprocess.run(
            [BIN / "perf-pipelines", "db", "upgrade"], env=env, capture_output=True, text=True
        )
        assert upgraded.returncode == 0, upgraded.stderr

        run = subprocess.run(
            [
                BIN / "dagster",
                "job",
                "execute",
                "-m",
                "perf_pipelines.definitions",
                "-j",
                "optimization_cycle",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    engine = create_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(select(metric_snapshots)).all()
    engine.dispose()
    by_target = {}
    for row in rows:
        by_target.setdefault(row.target, []).append(row)
    assert {t: len(r) for t, r in by_target.items()} == {
        "vllm-a": 2,
        "sglang-a": 2,
        "tgi-a": 2,
        "llamacpp-a": 2,
        "down-b": 2,
    }
    assert {r.engine for r in by_target["vllm-a"]} == {"vllm"}
    assert by_target["vllm-a"][0].requests_running == 78
    assert by_target["sglang-a"][0].kv_cache_usage == pytest.approx(0.95)
    tgi = by_target["tgi-a"][0]
    assert (
        tgi.engine == "tgi" and tgi.model == "bigscience/tgi-model" and tgi.kv_cache_usage is None
    )
    assert by_target["llamacpp-a"][0].requests_waiting == 6
    assert all(not r.up and r.error.startswith("connection failed") for r in by_target["down-b"])


def test_bad_configuration_stops_the_cli_with_the_variable_named(tmp_path: Path) -> None:
    env = {**os.environ, "SCRAPE_TIMEOUT_S": "soon", "PERF_HOME": str(tmp_path)}
    result = subprocess.run(
        [BIN / "perf-pipelines", "db", "current"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 3, result.stderr  # ExitCode.CONFIGURATION
    assert "SCRAPE_TIMEOUT_S" in result.stderr


def test_scrape_command_prints_what_it_read(tmp_path: Path) -> None:
    with serve(_routes()) as server:
        targets = tmp_path / "targets.yaml"
        targets.write_text(f"targets:\n  - {{name: v, url: '{server.base_url}/vllm/metrics'}}\n")
        result = subprocess.run(
            [BIN / "perf-pipelines", "scrape", str(targets)],
            env={**os.environ, "PERF_HOME": str(tmp_path)},
            capture_output=True,
            text=True,
        )
    assert result.returncode == 0, result.stderr
    assert "running=78 waiting=12 kv=0.93" in result.stdout
