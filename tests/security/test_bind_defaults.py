"""Servers bind loopback unless told otherwise, and an open sidecar without a token says so.

In process: the CLIs run under click's runner with uvicorn's `Server.run` replaced by a recorder,
so what is checked is the address each command would really bind and the log line it really
writes. tests/cli/test_sidecar.py::test_sidecar_process_starts_fast_and_warns_on_open_bind does
the same for a real sidecar process on 0.0.0.0 (slow); these cover the defaults, the token and
IPv6 cases, the simulator, and every bind site in the code.
"""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from click.testing import CliRunner

from perf_pipelines.cli import main
from perf_pipelines.settings import Settings
from perf_pipelines.targets import is_loopback_host

ROOT = Path(__file__).resolve().parents[2]
# The product and the lab: the lab's simulated fleet binds sockets too.
PACKAGES = (ROOT / "perf_pipelines", ROOT / "lab" / "perf_lab")


def _sources() -> list[Path]:
    return sorted(path for package in PACKAGES for path in package.rglob("*.py"))


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture
def bound(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[uvicorn.Config]]:
    """Records the uvicorn configs that would have been served; env and logging isolated."""
    configs: list[uvicorn.Config] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **k: configs.append(self.config))
    monkeypatch.chdir(tmp_path)  # no .env from the working tree
    for name in ("HOST", "PORT", "ORCHESTRATOR_TOKEN", "ORCHESTRATOR_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'perf.db'}")
    monkeypatch.setenv("PERF_HOME", str(tmp_path))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield configs
    root.handlers[:] = handlers
    root.setLevel(level)


def _json_logs(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_settings_default_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOST", raising=False)
    assert Settings(_env_file=None).host == "127.0.0.1"  # type: ignore[call-arg]


def test_sidecar_binds_loopback_by_default_and_does_not_warn(bound: list[uvicorn.Config]) -> None:
    result = CliRunner().invoke(main, ["sidecar", "--no-migrate"])
    assert result.exit_code == 0, result.output
    (config,) = bound
    assert config.host == "127.0.0.1"
    assert config.proxy_headers is False and config.server_header is False
    assert not any("SECURITY" in str(r["message"]) for r in _json_logs(result.output))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "sidecar.internal"])
def test_an_open_sidecar_without_a_token_warns_loudly(
    bound: list[uvicorn.Config], host: str
) -> None:
    result = CliRunner().invoke(main, ["sidecar", "--no-migrate", "--host", host])
    assert result.exit_code == 0, result.output
    assert bound[0].host == host
    (warning,) = [r for r in _json_logs(result.output) if "SECURITY" in str(r["message"])]
    assert warning["level"] == "WARNING"
    assert warning["security"] is True
    assert host in str(warning["message"]) and "ORCHESTRATOR_TOKEN" in str(warning["message"])


def test_host_from_the_environment_warns_too(
    bound: list[uvicorn.Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOST", "0.0.0.0")
    result = CliRunner().invoke(main, ["sidecar", "--no-migrate"])
    assert bound[0].host == "0.0.0.0"
    assert any("SECURITY" in str(r["message"]) for r in _json_logs(result.output))


@pytest.mark.parametrize("host", ["0.0.0.0", "::1", "127.0.0.1"])
def test_no_warning_with_a_token_or_on_loopback(
    bound: list[uvicorn.Config], monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    if not is_loopback_host(host):
        monkeypatch.setenv("ORCHESTRATOR_TOKEN", "a-long-enough-token-1234")
    result = CliRunner().invoke(main, ["sidecar", "--no-migrate", "--host", host])
    assert result.exit_code == 0, result.output
    assert not any("SECURITY" in str(r["message"]) for r in _json_logs(result.output))
    assert "a-long-enough-token-1234" not in result.output


def test_fleet_simulator_binds_loopback_by_default(bound: list[uvicorn.Config]) -> None:
    result = CliRunner().invoke(
        main, ["fleet", "--scenario", "mixed", "--warmup", "0", "--port", "0"]
    )
    assert result.exit_code == 0, result.output
    (config,) = bound
    assert config.host == "127.0.0.1"
    assert "no authentication" not in result.output


def test_fleet_simulator_on_an_open_address_warns(bound: list[uvicorn.Config]) -> None:
    result = CliRunner().invoke(
        main, ["fleet", "--scenario", "mixed", "--warmup", "0", "--host", "0.0.0.0", "--port", "0"]
    )
    assert result.exit_code == 0, result.output
    assert bound[0].host == "0.0.0.0"
    assert "control API has no authentication" in result.output


def _defaults_of_host_parameters(tree: ast.AST) -> list[tuple[int, object]]:
    """(line, default) of every `host` parameter default, `host=` keyword and --host option."""
    found: list[tuple[int, object]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args.args + node.args.kwonlyargs
            defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + list(
                node.args.defaults
            )
            defaults += list(node.args.kw_defaults)
            for arg, default in zip(args, defaults, strict=True):
                if arg.arg in ("host", "bind", "bind_host") and isinstance(default, ast.Constant):
                    found.append((node.lineno, default.value))
        elif isinstance(node, ast.Call):
            is_host_option = any(
                isinstance(a, ast.Constant) and a.value == "--host" for a in node.args
            )
            for keyword in node.keywords:
                if isinstance(keyword.value, ast.Constant) and (
                    keyword.arg == "host" or (is_host_option and keyword.arg == "default")
                ):
                    found.append((node.lineno, keyword.value.value))
    return found


def test_every_bind_default_in_the_code_is_loopback() -> None:
    """Replaces bandit's B104 (which also flags comparisons): each literal bind default or
    `host=` argument in perf_pipelines/ and the lab is loopback or None (= the HOST setting)."""
    checked = 0
    for path in _sources():
        for line, value in _defaults_of_host_parameters(ast.parse(path.read_text())):
            checked += 1
            where = f"{path.relative_to(ROOT)}:{line}"
            assert value is None or value in LOOPBACK, f"{where} binds {value!r} by default"
    assert checked >= 3  # the sidecar option, the simulator option, make_server's default


def test_wildcard_literals_appear_only_where_allowed() -> None:
    allowed = {
        # is_wildcard_address(): compares a host to tell clients a usable URL; binds nothing
        ("perf_pipelines/settings.py", "0.0.0.0"),
        ("perf_pipelines/settings.py", "::"),
    }
    seen = set()
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in ("0.0.0.0", "::"):
                key = (str(path.relative_to(ROOT)), node.value)
                assert key in allowed, f"{key[0]}:{node.lineno} has {node.value!r}"
                seen.add(key)
    assert seen <= allowed
