"""The sidecar's request limits, probed with raw sockets against a real `perf-pipelines sidecar`
process on loopback: header size and count, body size, and clients that send their request
slowly (slowloris). Each abuse is refused quickly with bounded memory, and a normal client
keeps getting answers meanwhile.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.sidecar.support import free_port

ROOT = Path(__file__).resolve().parents[2]
HEADER_TIMEOUT_S = 2.0  # SIDECAR_HEADER_TIMEOUT_S for this server (default 10 s)
BODY_TIMEOUT_S = 2.0  # SIDECAR_BODY_TIMEOUT_S (default 30 s)
MIB = 1024 * 1024


@dataclass
class SidecarProcess:
    url: str
    port: int
    process: subprocess.Popen[bytes]

    def peak_rss_bytes(self) -> int:
        """VmHWM: the process's resident-memory high-water mark."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024


@pytest.fixture(scope="module")
def sidecar_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    home = tmp_path_factory.mktemp("sidecar")
    port = free_port()
    env = {
        **os.environ,
        "PERF_HOME": str(home),
        "DATABASE_URL": f"sqlite:///{home / 'perf.db'}",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "ORCHESTRATOR_URL": "",
        "ORCHESTRATOR_TOKEN": "",
        "REDIS_URL": "",
        "LOG_LEVEL": "WARNING",
        "SIDECAR_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "SIDECAR_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    }
    for unset in ("ORCHESTRATOR_URL", "ORCHESTRATOR_TOKEN", "REDIS_URL"):
        env.pop(unset)
    log = (home / "sidecar.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", "from perf_pipelines.cli import main; main()", "sidecar"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"sidecar did not start: {(home / 'sidecar.log').read_text()[-2000:]}")
        time.sleep(0.1)
    try:
        yield SidecarProcess(url, port, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


def _read_answer(sock: socket.socket, limit: int = 65536) -> bytes:
    """What the server sends until it closes the connection (or `limit` bytes)."""
    data = b""
    try:
        while len(data) < limit:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def _status(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer[9:12])


def _healthy(url: str) -> None:
    response = httpx.get(f"{url}/api/v1/health", timeout=5)
    assert response.status_code == 200, response.text


def test_a_16_mb_header_is_refused_quickly_with_bounded_memory(
    sidecar_process: SidecarProcess,
) -> None:
    size = 16 * MIB
    rss_before = sidecar_process.rss_bytes()
    peak_before = sidecar_process.peak_rss_bytes()
    sock = _connect(sidecar_process.port)
    started = time.monotonic()
    sent = 0
    with sock:
        sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        chunk = b"a" * 65536
        try:
            while sent < size:
                sent += sock.send(chunk)
            sock.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server hung up: what it should do
        answer = _read_answer(sock)
    elapsed = time.monotonic() - started
    peak_growth = sidecar_process.peak_rss_bytes() - max(peak_before, rss_before)
    status = _status(answer)
    assert status in (None, 400, 431), (
        f"a 16 MiB header was answered {status} after {sent} bytes in {elapsed:.2f} s: "
        f"{answer[:200]!r}"
    )
    assert elapsed < 5, f"refusing the header took {elapsed:.2f} s ({sent} bytes sent)"
    assert peak_growth < 4 * MIB, (
        f"the server's peak RSS grew by {peak_growth / MIB:.1f} MiB for a refused header "
        f"({sent / MIB:.1f} MiB sent before it hung up)"
    )
    _healthy(sidecar_process.url)


def test_a_thousand_headers_are_refused(sidecar_process: SidecarProcess) -> None:
    headers = b"".join(b"X-H%d: 1\r\n" % i for i in range(1000))  # ~9 KB: under the byte cap
    with _connect(sidecar_process.port) as sock:
        sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n")
        answer = _read_answer(sock)
    assert _status(answer) == 431, answer[:300]
    _healthy(sidecar_process.url)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_2_mb_body_is_refused_without_reading_it(
    sidecar_process: SidecarProcess, framing: str
) -> None:
    size = 2 * MIB
    path = "/api/v1/recommendations/rec-none/status"
    if framing == "content-length":
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {size}\r\n\r\n"
    else:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        head += "Transfer-Encoding: chunked\r\n\r\n"
    sent = 0
    with _connect(sidecar_process.port) as sock:
        sock.sendall(head.encode())
        piece = b"a" * 65536
        framed = piece if framing == "content-length" else b"10000\r\n" + piece + b"\r\n"
        try:
            while sent < size:
                sock.sendall(framed)
                sent += len(piece)
                sock.settimeout(0.05)
                try:
                    early = sock.recv(65536, socket.MSG_PEEK)
                except TimeoutError:
                    early = b""
                sock.settimeout(10)
                if early:
                    break  # the server answered before the body was complete
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _read_answer(sock)
    assert _status(answer) == 413, answer[:300]
    assert sent < size, f"the whole {size}-byte body was sent before the server answered"
    assert b"connection: close" in answer.lower(), answer[:300]
    _healthy(sidecar_process.url)


def test_a_client_dripping_its_headers_is_cut_off_while_others_are_served(
    sidecar_process: SidecarProcess,
) -> None:
    closed_after: list[float] = []
    stop = threading.Event()

    def drip() -> None:
        with _connect(sidecar_process.port) as sock:
            started = time.monotonic()
            request = b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: a\r\n" * 200
            try:
                for byte in request:
                    if stop.is_set():
                        return
                    sock.sendall(bytes([byte]))
                    sock.settimeout(0.1)
                    try:
                        if sock.recv(4096) == b"":
                            break
                    except TimeoutError:
                        continue
                    else:
                        break  # the server answered (408): it is done with us
            except (BrokenPipeError, ConnectionResetError):
                pass
            closed_after.append(time.monotonic() - started)

    idle = _connect(sidecar_process.port)  # connects and sends nothing at all
    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        # A normal client is served while the slow ones hold their connections.
        served = 0
        deadline = time.monotonic() + HEADER_TIMEOUT_S + 8
        while dripper.is_alive() and time.monotonic() < deadline:
            _healthy(sidecar_process.url)
            served += 1
            dripper.join(timeout=0.2)
        assert not dripper.is_alive(), (
            f"a client dripping headers was still connected after "
            f"{HEADER_TIMEOUT_S + 8:.0f} s (header timeout {HEADER_TIMEOUT_S} s)"
        )
        assert served >= 3, served
        assert closed_after and closed_after[0] < HEADER_TIMEOUT_S + 3, closed_after
        idle.settimeout(HEADER_TIMEOUT_S + 3)
        try:
            leftover = idle.recv(4096)
            while leftover and (more := idle.recv(4096)):
                leftover += more
        except ConnectionResetError:
            leftover = b""
        assert _status(leftover) in (None, 408), leftover[:200]
    finally:
        stop.set()
        idle.close()


def test_a_body_that_arrives_too_slowly_is_refused(sidecar_process: SidecarProcess) -> None:
    path = "/api/v1/recommendations/rec-none/status"
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += "Content-Length: 100\r\n\r\n"
    with _connect(sidecar_process.port) as sock:
        sock.sendall(head.encode() + b'{"status": ')  # 11 of the 100 bytes, then nothing
        started = time.monotonic()
        sock.settimeout(BODY_TIMEOUT_S + 8)
        answer = _read_answer(sock)
        waited = time.monotonic() - started
    assert _status(answer) == 408, answer[:300]
    assert waited < BODY_TIMEOUT_S + 3, f"answered after {waited:.1f} s"
    _healthy(sidecar_process.url)
