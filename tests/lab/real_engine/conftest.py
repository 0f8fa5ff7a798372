"""The real llama-server for the `real_engine` tests: the cached build, or a skip that says how
to get it (`make test-real` builds it, ~15 minutes on 2 idle cores)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from perf_lab.real_engine.llamacpp import Installed, cache_root, installed
from perf_lab.real_engine.server import LlamaServer


@pytest.fixture(scope="session")
def llama() -> Installed:
    done = installed()
    if done is None:
        if os.environ.get("PERF_REQUIRE_REAL_ENGINE") == "1":  # `make test-real` built it
            pytest.fail(f"PERF_REQUIRE_REAL_ENGINE=1 but no llama-server build in {cache_root()}")
        pytest.skip(
            f"no llama-server build in {cache_root()}: `make test-real` builds it "
            "(or `perf-pipelines llama-server build`)"
        )
    return done


@pytest.fixture(scope="module")
def server(llama: Installed) -> Iterator[LlamaServer]:
    """One real server for a module's tests: 2 slots of 1,024 tokens each (unified KV cache)."""
    with LlamaServer(llama.binary, llama.model, parallel=2, ctx_size=2048, threads=2) as running:
        yield running
