"""The native topology, started once and shared by the end-to-end and browser tests."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator

import pytest

from tests.support.topology import NativeTopology, native_topology


def _postgres_admin_url() -> str:
    url = os.environ.get("PERF_TEST_POSTGRES_URL")
    if url:
        return url
    if os.environ.get("PERF_REQUIRE_POSTGRES") == "1":
        pytest.fail("PERF_REQUIRE_POSTGRES=1 but PERF_TEST_POSTGRES_URL is not set")
    pytest.skip("PostgreSQL not available: set PERF_TEST_POSTGRES_URL (scripts/start_postgres.sh)")


@pytest.fixture(scope="package")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NativeTopology]:
    """PostgreSQL (two fresh databases), Redis, the mixed fleet, the user-code gRPC server, the
    webserver, the daemon, the sidecar and the test orchestrator. Started once for the tests of
    this package (tests/deploy/__init__.py makes it one) and stopped after its last test, so the
    rest of the suite does not run beside a deployment that starts cycles every minute."""
    admin_url = _postgres_admin_url()
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    # A SIGTERM to pytest (a CI time-out) would end it without running finalizers and leave
    # every service of the topology running: turn it into an exit that unwinds the fixture.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with native_topology(tmp_path_factory.mktemp("topology"), admin_url) as running:
            yield running
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)
