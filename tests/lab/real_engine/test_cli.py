"""`perf-pipelines llama-server` is listed and its help loads no heavy library (as every
command's, tests/cli/test_help.py); it needs no build."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = """
import json, sys
from perf_pipelines.cli import main
try:
    main(sys.argv[1:], prog_name="perf-pipelines")
except SystemExit:
    pass
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})), file=sys.stderr)
"""
_HEAVY = {"dagster", "fastapi", "httpx", "numpy", "optuna", "pandas", "sqlalchemy", "uvicorn"}


@pytest.mark.parametrize("command", [[], ["build"], ["start"], ["capture"]])
def test_help_lists_the_commands_and_loads_nothing_heavy(command: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, "llama-server", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: perf-pipelines llama-server" in done.stdout, done.stdout
    loaded = set(json.loads(done.stderr.strip().splitlines()[-1]))
    assert not loaded & _HEAVY, sorted(loaded & _HEAVY)
    if not command:
        for name in ("build", "start", "capture"):
            assert f"  {name} " in done.stdout, done.stdout
