"""Run a real llama-server on loopback with `--metrics`, and wait until it is ready.

Readiness is polled on /health (200 once the model is loaded and warmed up) with a deadline,
never a fixed sleep; a server that exits before it is ready ends in one line that names the
reason llama-server logged (a model that does not load, a port in use, a crash).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess  # nosec B404
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any

HOST = "127.0.0.1"
# Loading a 253 MB model and warming up takes ~2 s on an idle core; a loaded 2-core machine
# was seen to take ten times that.
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0
_POLL_S = 0.1
_HTTP_TIMEOUT_S = 5.0
_MAX_JSON_BYTES = 1024 * 1024


class ServerError(Exception):
    """llama-server did not become ready; the message is one line saying why."""


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def server_command(
    binary: Path,
    model: Path,
    port: int,
    *,
    parallel: int | None = None,
    ctx_size: int | None = None,
    threads: int | None = None,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """llama-server's command line: loopback only, /metrics on, no web UI."""
    command = [str(binary), "--model", str(model), "--host", HOST, "--port", str(port)]
    command += ["--metrics", "--no-webui"]
    if parallel is not None:
        command += ["--parallel", str(parallel)]
    if ctx_size is not None:
        command += ["--ctx-size", str(ctx_size)]
    if threads is not None:
        command += ["--threads", str(threads)]
    return [*command, *extra]


def _get(url: str, timeout_s: float = _HTTP_TIMEOUT_S) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Accept-Encoding": "identity"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310  # nosec B310
            return int(response.status), response.read(_MAX_JSON_BYTES + 1)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(_MAX_JSON_BYTES + 1)


def _last_lines(log: IO[bytes], count: int = 40) -> list[str]:
    log.flush()
    log.seek(0)
    text = log.read().decode("utf-8", "replace")
    return [line.strip() for line in text.splitlines() if line.strip()][-count:]


def _reason(lines: list[str]) -> str:
    """What llama-server said went wrong: its last error line, else its last line."""
    for line in reversed(lines):
        lowered = line.lower()
        if "error" in lowered or "failed" in lowered or "unable" in lowered:
            return line[:300]
    return lines[-1][:300] if lines else "no output"


class LlamaServer:
    """A llama-server process on a loopback port, ready on entry, stopped on exit."""

    def __init__(
        self,
        binary: Path,
        model: Path,
        *,
        port: int | None = None,
        parallel: int | None = None,
        ctx_size: int | None = None,
        threads: int | None = None,
        extra: tuple[str, ...] = (),
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        self.binary, self.model = binary, model
        self.port = port or free_port()
        self.command = server_command(
            binary,
            model,
            self.port,
            parallel=parallel,
            ctx_size=ctx_size,
            threads=threads,
            extra=extra,
        )
        self.ready_timeout_s = ready_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.base_url}/metrics"

    def start(self) -> None:
        if not os.access(self.binary, os.X_OK):
            raise ServerError(
                f"no llama-server at {self.binary}: run `perf-pipelines llama-server build`"
            )
        if not self.model.is_file():
            raise ServerError(f"no model at {self.model}: run `perf-pipelines llama-server build`")
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        # a command list (no shell): the cached binary and our own flags
        self.process = subprocess.Popen(  # nosec B603
            self.command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.process is not None and self._log is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                reason = _reason(_last_lines(self._log))
                self.stop()
                raise ServerError(
                    f"llama-server exited ({code}) before it was ready: {reason} "
                    f"(model {self.model}; rebuild with `perf-pipelines llama-server build`)"
                )
            try:
                status, _ = _get(f"{self.base_url}/health", timeout_s=1.0)
            except (OSError, urllib.error.URLError):
                status = 0
            if status == 200:
                return
            time.sleep(_POLL_S)
        lines = _last_lines(self._log)
        self.stop()
        raise ServerError(
            f"llama-server not ready after {self.ready_timeout_s:g} s: {_reason(lines)}"
        )

    def get_json(self, path: str) -> Any:
        status, body = _get(f"{self.base_url}{path}")
        if status != 200:
            raise ServerError(f"GET {path}: HTTP {status}: {body[:200]!r}")
        if len(body) > _MAX_JSON_BYTES:
            raise ServerError(f"GET {path}: body over {_MAX_JSON_BYTES} bytes")
        return json.loads(body)

    def props(self) -> dict[str, Any]:
        props = self.get_json("/props")
        if not isinstance(props, dict):
            raise ServerError(f"/props is not an object: {str(props)[:100]}")
        return props

    def complete(self, prompt: str, n_predict: int, timeout_s: float = 120.0) -> dict[str, Any]:
        """One real completion (POST /completion): exactly `n_predict` tokens (EOS ignored,
        greedy), so that the tokens a load generates are known to the token."""
        payload = {
            "prompt": prompt,
            "n_predict": n_predict,
            "ignore_eos": True,
            "temperature": 0.0,
            "cache_prompt": False,
        }
        request = urllib.request.Request(  # noqa: S310 - the loopback server started here
            f"{self.base_url}/completion",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310  # nosec B310
                result = json.loads(response.read(_MAX_JSON_BYTES + 1))
        except urllib.error.HTTPError as exc:
            raise ServerError(f"POST /completion: HTTP {exc.code}: {exc.read(200)!r}") from None
        if not isinstance(result, dict):
            raise ServerError(f"POST /completion answered {str(result)[:100]}")
        return result

    def load(self, prompts: list[str], n_predict: int, concurrency: int) -> list[dict[str, Any]]:
        """Send every prompt, `concurrency` at a time; the completions' answers, in order."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(lambda prompt: self.complete(prompt, n_predict), prompts))

    def log_lines(self, count: int = 40) -> list[str]:
        return _last_lines(self._log, count) if self._log else []

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LlamaServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
