"""Fixtures of the fault-injection tests: a database shared by one module's tests, and a private
PostgreSQL cluster that a test may stop and start (the shared one on :55432 is never touched)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


def _admin_url() -> str | None:
    url = os.environ.get("PERF_TEST_POSTGRES_URL")
    if not url and os.environ.get("PERF_REQUIRE_POSTGRES") == "1":
        pytest.fail("PERF_REQUIRE_POSTGRES=1 but PERF_TEST_POSTGRES_URL is not set")
    return url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One database per module and dialect (a fresh SQLite file, or a fresh PostgreSQL database
    on the shared test server, dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('reliability') / 'perf.db'}"
        return
    admin_url = _admin_url()
    if admin_url is None:
        pytest.skip("PostgreSQL not available: set PERF_TEST_POSTGRES_URL")
    name = f"perf_rel_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    for folder in reversed(found):
        if Path(folder, "initdb").exists():
            return Path(folder)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateCluster:
    """A throw-away PostgreSQL cluster owned by one test: initdb into a temporary folder, on a
    free loopback port, fsync off; `stop()`/`start()` are pg_ctl's. Run as the `postgres` OS
    user when the tests run as root (PostgreSQL refuses to run as root)."""

    def __init__(self, bin_dir: Path, data_dir: Path, os_user: str | None) -> None:
        self.bin_dir, self.data_dir, self.os_user = bin_dir, data_dir, os_user
        self.port = _free_port()
        self.admin_url = f"postgresql+psycopg://perf@127.0.0.1:{self.port}/postgres"
        self.url = f"postgresql+psycopg://perf@127.0.0.1:{self.port}/perf"

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin_dir / program), *args]
        if self.os_user:
            command = ["runuser", "-u", self.os_user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr[-2000:]}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data_dir), "-U", "perf", "--auth=trust", "-E", "UTF8",
                  "--no-sync")  # fmt: skip
        self.start()
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text("CREATE DATABASE perf"))
        admin.dispose()

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data_dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.data_dir / "server.log"),
                  "-w", "-t", "60", "-o", options, "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()


@pytest.fixture
def private_postgres() -> Iterator[PrivateCluster]:
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found")
    os_user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a 'postgres' OS user to run PostgreSQL as")
        os_user = "postgres"
    # Not under pytest's tmp_path: that is private to root, and the server runs as postgres.
    data_dir = Path(tempfile.mkdtemp(prefix="perf_rel_pg_"))
    if os_user:
        shutil.chown(data_dir, user=os_user)
    cluster = PrivateCluster(bin_dir, data_dir, os_user)
    try:
        cluster.init()
        yield cluster
    finally:
        if cluster.running():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                cluster.stop("immediate")
        shutil.rmtree(data_dir, ignore_errors=True)
