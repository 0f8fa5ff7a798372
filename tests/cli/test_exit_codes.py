"""Every error of the CLI is one line on stderr naming what is wrong and how to fix it, with the
exit code the README's "Exit codes" table gives; never a traceback, never a password."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from perf_pipelines.cli.common import ExitCode
from tests.support.http_servers import closed_port

CLI = Path(sys.executable).parent / "perf-pipelines"
PASSWORD = "s3cret-pw-in-url-9876"
_OURS = ("DATABASE_URL", "PERF_TARGETS", "PROMETHEUS_URL", "ORCHESTRATOR_TOKEN")


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in _OURS}
    return subprocess.run(
        [str(CLI), *args],
        env={**base, "PERF_HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args", [["db", "upgrade"], ["db", "current"], ["db", "downgrade", "base"]], ids=" ".join
)
def test_an_unreachable_database_is_one_line_without_the_password(
    tmp_path: Path, args: list[str]
) -> None:
    url = f"postgresql+psycopg://perf:{PASSWORD}@127.0.0.1:{closed_port()}/perf"
    done = _run(tmp_path, *args, DATABASE_URL=url)
    line = _one_error_line(done)
    assert done.returncode == ExitCode.UNREACHABLE, (done.returncode, line)
    assert "unreachable" in line and "DATABASE_URL" in line, line
    assert PASSWORD not in done.stderr + done.stdout


@pytest.mark.parametrize("content", ["", "targets: []\n"], ids=["empty-file", "empty-list"])
@pytest.mark.parametrize("command", ["validate-targets", "scrape"])
def test_a_targets_file_without_targets_is_refused(
    tmp_path: Path, content: str, command: str
) -> None:
    targets = tmp_path / "targets.yaml"
    targets.write_text(content)
    done = _run(tmp_path, command, str(targets))
    line = _one_error_line(done)
    assert done.returncode == ExitCode.CONFIGURATION, (done.returncode, line)
    assert str(targets) in line and "no targets" in line, line


def test_a_bad_targets_file_is_a_configuration_error(tmp_path: Path) -> None:
    targets = tmp_path / "targets.yaml"
    targets.write_text("targets:\n  - name: a\n    url: ftp://example.org/metrics\n")
    done = _run(tmp_path, "validate-targets", str(targets))
    line = _one_error_line(done)
    assert done.returncode == ExitCode.CONFIGURATION, (done.returncode, line)
    assert "url" in line, line


def test_a_bad_setting_is_a_configuration_error(tmp_path: Path) -> None:
    done = _run(tmp_path, "db", "current", SCRAPE_TIMEOUT_S="soon")
    line = _one_error_line(done)
    assert done.returncode == ExitCode.CONFIGURATION, (done.returncode, line)
    assert "SCRAPE_TIMEOUT_S" in line, line


def test_all_targets_down_exits_with_its_own_code(tmp_path: Path) -> None:
    targets = tmp_path / "targets.yaml"
    targets.write_text(
        "targets:\n"
        f"  - {{name: a, url: 'http://127.0.0.1:{closed_port()}/metrics', engine: vllm}}\n"
        f"  - {{name: b, url: 'http://127.0.0.1:{closed_port()}/metrics', engine: tgi}}\n"
    )
    done = _run(tmp_path, "scrape", str(targets), SCRAPE_TIMEOUT_S="2")
    line = _one_error_line(done)
    assert done.returncode == ExitCode.ALL_TARGETS_DOWN, (done.returncode, line)
    assert "all 2 target(s) down" in line, line
    assert done.stdout.count("DOWN") == 2, done.stdout


def test_a_wrong_command_line_is_a_usage_error(tmp_path: Path) -> None:
    done = _run(tmp_path, "scrape", "--no-such-option")
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "No such option" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_prometheus_without_its_url_is_a_configuration_error(tmp_path: Path) -> None:
    done = _run(tmp_path, "prometheus", "discover")
    line = _one_error_line(done)
    assert done.returncode == ExitCode.CONFIGURATION, (done.returncode, line)
    assert "PROMETHEUS_URL" in line, line
