"""`--help` loads no heavy library: listing and describing commands must stay fast on a busy
machine (issue #18: 4–10 s under load when every sub-command's modules were imported).

Time itself is measured in bench/, not here; what is tested is the cause of slowness, the
modules a `--help` imports, which is the same on any machine.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Each costs tens to hundreds of milliseconds to import, and none is needed to print help.
_HEAVY = (
    "dagster",
    "fastapi",
    "httpx",
    "numpy",
    "optuna",
    "pandas",
    "pydantic_settings",
    "sqlalchemy",
    "uvicorn",
)
# The simulator's scenario names are the choices of `fleet --scenario`; building them needs
# the simulator's model (numpy), and the main help lists `fleet` with its options' owner loaded.
_ALLOWED = {"fleet": {"numpy"}, "": {"numpy"}}

_PROBE = """
import json, sys
from perf_pipelines.cli import main
try:
    main(sys.argv[1:], prog_name="perf-pipelines")
except SystemExit:
    pass
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})), file=sys.stderr)
"""


def _modules_loaded_by(*args: str) -> tuple[set[str], str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    *_, last = done.stderr.strip().splitlines()
    return set(json.loads(last)), done.stdout


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["db"],
        ["db", "upgrade"],
        ["validate-targets"],
        ["scrape"],
        ["sidecar"],
        ["prometheus"],
        ["prometheus", "discover"],
        ["prometheus", "backfill"],
        ["evaluate"],
        ["fleet"],
        ["llama-server"],
        ["llama-server", "build"],
        ["llama-server", "start"],
        ["llama-server", "capture"],
    ],
    ids=lambda command: " ".join(command) or "main",
)
def test_help_loads_no_heavy_library(command: list[str]) -> None:
    loaded, shown = _modules_loaded_by(*command, "--help")
    assert "Usage:" in shown, shown
    allowed = _ALLOWED.get(command[0] if command else "", set())
    heavy = sorted(set(_HEAVY) & loaded - allowed)
    assert not heavy, f"`perf-pipelines {' '.join(command)} --help` imported {heavy}"


def test_main_help_lists_every_command() -> None:
    _, shown = _modules_loaded_by("--help")
    for name in ("db", "evaluate", "fleet", "prometheus", "scrape", "sidecar", "validate-targets"):
        assert f"  {name} " in shown, shown


def test_llama_server_help_lists_its_commands() -> None:
    _, shown = _modules_loaded_by("llama-server", "--help")
    for name in ("build", "start", "capture"):
        assert f"  {name} " in shown, shown
