"""Run the compose deployment's topology natively, for end-to-end tests (no Docker).

Each service is a real subprocess in a process group of its own, with its output in a log file:
PostgreSQL (an existing server; two fresh databases, one for the agent's tables and one for
Dagster's storage), redis-server, the simulated fleet, `perf-pipelines db upgrade`, the user-code
gRPC server, `dagster-webserver` and `dagster-daemon run` on `deploy/dagster.yaml` and
`deploy/workspace.yaml` (the files the compose deployment uses), the sidecar, and the test
orchestrator (a thread of the test process).

Waits are bounded and fail with the tail of every service's log. `NativeTopology.stop()` ends
every process group (SIGTERM, then SIGKILL), whatever happened before.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from perf_pipelines.settings import Settings
from tests.support.orchestrator import TestOrchestrator

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEPLOY = ROOT / "deploy"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
TOKEN = "native-topology-token-4242"  # the orchestrator's bearer token in these tests
CYCLE_SCHEDULE = "optimization_cycle_schedule"

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def agent_environment_names() -> set[str]:
    """Every environment variable the agent reads (Settings fields, upper-cased)."""
    return {name.upper() for name in Settings.model_fields}


class Service:
    """One subprocess in its own process group (session), output to `<log_dir>/<name>.log`."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], cwd: Path, log_dir: Path
    ) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.cwd = cwd
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.generation = 0  # how many times it was started

    def start(self) -> Service:
        assert self.process is None or self.process.poll() is not None, f"{self.name} runs"
        self.generation += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start #{self.generation}: {' '.join(self.args)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.args,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed as a whole
            )
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 25) -> str:
        try:
            text_ = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text_.splitlines()[-lines:])

    def signal_group(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)  # the group outlives its leader: children too

    def kill(self) -> None:
        """SIGKILL the whole group at once (a crash, as the OOM killer or `docker kill` does)."""
        self.signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the group, wait for the leader, then SIGKILL whatever is left of the group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.signal_group(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace_s)
        self.signal_group(signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


class Services:
    """The started services: bounded waits that report every log tail, and a stop for all."""

    def __init__(self, log_dir: Path, cwd: Path) -> None:
        self.log_dir = log_dir
        self.cwd = cwd
        self.all: dict[str, Service] = {}

    def start(self, name: str, args: list[str], env: dict[str, str]) -> Service:
        service = Service(name, [str(a) for a in args], env, self.cwd, self.log_dir)
        self.all[name] = service
        return service.start()

    def __getitem__(self, name: str) -> Service:
        return self.all[name]

    def report(self, lines: int = 25) -> str:
        parts = []
        for service in self.all.values():
            state = "running" if service.running() else f"exited {service.process.poll()}"  # type: ignore[union-attr]
            parts.append(f"===== {service.name} ({state}), last lines of {service.log_path}:")
            parts.append(service.tail(lines))
        return "\n".join(parts)

    def wait_for(
        self,
        what: str,
        probe: Callable[[], T | None],
        timeout_s: float,
        interval_s: float = 0.5,
        must_run: tuple[str, ...] = (),
    ) -> T:
        """Call `probe` until it returns something truthy; fail after `timeout_s` (or at once
        when one of `must_run` exits) with what was awaited and the tail of every log."""
        deadline = time.monotonic() + timeout_s
        last_error = ""
        while True:
            try:
                result = probe()
            except AssertionError as exc:  # the probe saw a definite failure: stop waiting
                raise AssertionError(f"{exc}\n{self.report()}") from None
            except Exception as exc:  # a service still starting: connection refused, ...
                result = None
                last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            if result:
                return result
            dead = [n for n in must_run if not self.all[n].running()]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"timed out after {timeout_s:.0f} s"
                raise AssertionError(
                    f"{why} while waiting for {what}"
                    + (f" (last probe error: {last_error})" if last_error else "")
                    + "\n"
                    + self.report()
                )
            time.sleep(interval_s)

    def stop_all(self) -> None:
        for service in reversed(list(self.all.values())):
            service.stop()


# -- PostgreSQL --------------------------------------------------------------------------------
def create_database(admin_url: str, name: str) -> str:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


# -- Dagster's GraphQL API (the webserver) -----------------------------------------------------
RUNS_QUERY = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter, limit: 200) {
    __typename
    ... on Runs { results { runId status jobName startTime endTime tags { key value } } }
    ... on PythonError { message }
  }
}
"""
DAEMONS_QUERY = """
{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }
"""
WORKSPACE_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } }
} } } }
"""
TICKS_QUERY = """
query Ticks($selector: ScheduleSelector!) {
  scheduleOrError(scheduleSelector: $selector) { __typename
    ... on Schedule { scheduleState { status ticks(limit: 100) {
        tickId status timestamp runIds error { message } } } }
    ... on PythonError { message }
  }
}
"""
RUN_EVENTS_QUERY = """
query Events($runId: ID!) {
  logsForRun(runId: $runId) { __typename
    ... on EventConnection { events { __typename ... on MessageEvent { message } } } }
}
"""


@dataclass(frozen=True)
class Tick:
    tick_id: str
    status: str
    timestamp: float  # a schedule tick's scheduled execution time
    run_ids: list[str]
    error: str | None


@dataclass(frozen=True)
class Run:
    run_id: str
    status: str
    job: str
    start_time: float | None
    end_time: float | None
    tags: dict[str, str]

    @property
    def schedule(self) -> str | None:
        return self.tags.get("dagster/schedule_name")

    @property
    def tick_id(self) -> str | None:
        return self.tags.get("dagster/tick")

    @property
    def finished(self) -> bool:
        return self.status in ("SUCCESS", "FAILURE", "CANCELED")


class DagsterApi:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client = httpx.Client(timeout=20)

    def query(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = self.client.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}
        )
        answer.raise_for_status()
        body = answer.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def runs(self, job: str) -> list[Run]:
        data = self.query(RUNS_QUERY, {"filter": {"pipelineName": job}})["runsOrError"]
        if data["__typename"] != "Runs":
            raise RuntimeError(f"runsOrError: {data}")
        return [
            Run(
                run_id=r["runId"],
                status=r["status"],
                job=r["jobName"],
                start_time=r["startTime"],
                end_time=r["endTime"],
                tags={t["key"]: t["value"] for t in r["tags"]},
            )
            for r in data["results"]
        ]

    def run(self, run_id: str, job: str) -> Run:
        return next(r for r in self.runs(job) if r.run_id == run_id)

    def daemons_healthy(self) -> bool:
        statuses = self.query(DAEMONS_QUERY)["instance"]["daemonHealth"]["allDaemonStatuses"]
        return all(s["healthy"] for s in statuses if s["required"])

    def location_loaded(self) -> bool:
        data = self.query(WORKSPACE_QUERY)["workspaceOrError"]
        entries = data.get("locationEntries", [])
        for entry in entries:
            error = entry["locationOrLoadError"]
            if error and error["__typename"] == "PythonError":
                raise RuntimeError(f"code location {entry['name']}: {error['message'][:500]}")
        return any(
            e["loadStatus"] == "LOADED"
            and (e["locationOrLoadError"] or {}).get("__typename") == "RepositoryLocation"
            for e in entries
        )

    def schedule_ticks(self, schedule: str, location: str = "perf_pipelines") -> list[Tick]:
        selector = {
            "repositoryLocationName": location,
            "repositoryName": "__repository__",
            "scheduleName": schedule,
        }
        data = self.query(TICKS_QUERY, {"selector": selector})["scheduleOrError"]
        if data["__typename"] != "Schedule":
            raise RuntimeError(f"scheduleOrError: {data}")
        return [
            Tick(
                tick_id=t["tickId"],
                status=t["status"],
                timestamp=t["timestamp"],
                run_ids=list(t["runIds"]),
                error=(t["error"] or {}).get("message"),
            )
            for t in data["scheduleState"]["ticks"]
        ]

    def run_messages(self, run_id: str) -> list[str]:
        data = self.query(RUN_EVENTS_QUERY, {"runId": run_id})["logsForRun"]
        return [e.get("message") or "" for e in data.get("events", [])]

    def close(self) -> None:
        self.client.close()


# -- the topology ------------------------------------------------------------------------------
@dataclass
class NativeTopology:
    root: Path
    services: Services
    orchestrator: TestOrchestrator
    agent_db_url: str
    dagster_db_url: str
    dagster_home: Path
    targets_path: Path
    redis_url: str
    fleet_url: str
    grpc_port: int
    webserver_url: str
    sidecar_url: str
    agent_env: dict[str, str]
    dagster_env: dict[str, str]
    samples: int
    api: DagsterApi = field(init=False)
    _first_success: Run | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.api = DagsterApi(self.webserver_url)

    def start_daemon(self) -> Service:
        """(Re)start `dagster-daemon run` on the deployment's workspace."""
        if "daemon" in self.services.all:
            return self.services["daemon"].start()
        return self.services.start(
            "daemon",
            [BIN / "dagster-daemon", "run", "-w", DEPLOY / "workspace.yaml"],
            self.dagster_env,
        )

    def wait_daemon_healthy(self, timeout_s: float = 120) -> None:
        self.services.wait_for(
            "every required Dagster daemon to heartbeat",
            self.api.daemons_healthy,
            timeout_s,
            interval_s=1.0,
            must_run=("daemon", "webserver"),
        )

    def wait_for_run(
        self,
        what: str,
        pick: Callable[[list[Run]], Run | None],
        timeout_s: float,
        job: str = "optimization_cycle",
        must_run: tuple[str, ...] = ("webserver", "user-code"),
    ) -> Run:
        return self.services.wait_for(
            what, lambda: pick(self.api.runs(job)), timeout_s, interval_s=1.0, must_run=must_run
        )

    def scheduled_cycles(self) -> list[Run]:
        """optimization_cycle runs started by its schedule, oldest tick first; fails at once
        when one of them failed (with the end of its event log)."""
        runs = sorted(
            (r for r in self.api.runs("optimization_cycle") if r.schedule == CYCLE_SCHEDULE),
            key=lambda r: int(r.tick_id or 0),
        )
        for run in runs:
            if run.status in ("FAILURE", "CANCELED"):
                events = "\n".join(m[:300] for m in self.api.run_messages(run.run_id)[-15:])
                raise AssertionError(f"optimization_cycle run {run.run_id} {run.status}:\n{events}")
        return runs

    def first_successful_cycle(self, timeout_s: float = 180) -> Run:
        """The first scheduled optimization_cycle that succeeded; waits for it. The first tick
        is at the minute after the daemon started, and a cycle takes ~25 s here."""
        if self._first_success is None:
            self._first_success = self.services.wait_for(
                "a scheduled optimization_cycle run to succeed",
                lambda: next((r for r in self.scheduled_cycles() if r.status == "SUCCESS"), None),
                timeout_s,
                interval_s=1.0,
                must_run=("daemon", "webserver", "user-code", "fleet"),
            )
        return self._first_success

    def stop(self) -> None:
        self.api.close()
        self.services.stop_all()


def _base_environment() -> dict[str, str]:
    """The test process's environment without anything the agent or Dagster would read."""
    ours = agent_environment_names()
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ours and not k.startswith(("DAGSTER_", "PERF_", "PROMETHEUS_"))
    }


@contextmanager
def native_topology(
    workdir: Path,
    admin_url: str,
    *,
    samples: int = 3,
    interval_s: float = 5.0,
    fleet_speed: float = 1.0,
    heartbeat_interval_s: float = 2.0,
) -> Iterator[NativeTopology]:
    """Start the whole deployment on loopback; stop every process and drop both databases after.

    Schedules run every minute (`* * * * *`); each optimization_cycle takes `samples` samples
    `interval_s` apart of the `mixed` fleet (six servers) running `fleet_speed` times real time.
    The defaults are the demo's (`scripts/demo.sh`): a 10 s span, which the detection rules need
    at least 8 s of, and one cycle takes ~25 s here.
    """
    if not Path(REDIS_SERVER).exists():
        raise RuntimeError("redis-server is not installed (Debian package redis-server)")
    suffix = uuid.uuid4().hex[:10]
    agent_db, dagster_db = f"perf_e2e_agent_{suffix}", f"perf_e2e_dagster_{suffix}"
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    dagster_home = workdir / "dagster_home"
    (dagster_home / ".nux").mkdir(parents=True, exist_ok=True)
    shutil.copy(DEPLOY / "dagster.yaml", dagster_home / "dagster.yaml")
    (dagster_home / ".nux" / "nux.yaml").write_text("seen: 1\n")  # no first-visit pop-up
    targets_path = workdir / "shared" / "targets.yaml"

    services = Services(logs, cwd=workdir)  # cwd without a stray .env
    with ExitStack() as stack:
        stack.callback(services.stop_all)
        agent_db_url = create_database(admin_url, agent_db)
        stack.callback(drop_database, admin_url, agent_db)
        dagster_db_url = create_database(admin_url, dagster_db)
        stack.callback(drop_database, admin_url, dagster_db)
        orchestrator = TestOrchestrator(token=TOKEN)
        orchestrator.start()
        stack.callback(orchestrator.stop)

        ports = {name: free_port() for name in ("redis", "fleet", "grpc", "web", "sidecar")}
        base = _base_environment()
        redis_url = f"redis://127.0.0.1:{ports['redis']}/0"
        pg = make_url(admin_url)
        agent_env = {
            **base,
            "PERF_HOME": str(workdir / "perf_home"),
            "DATABASE_URL": agent_db_url,
            "PERF_TARGETS": str(targets_path),
            "REDIS_URL": redis_url,
            "ORCHESTRATOR_URL": orchestrator.url,
            "ORCHESTRATOR_TOKEN": TOKEN,
            "ORCHESTRATOR_HEARTBEAT_INTERVAL": str(heartbeat_interval_s),
            "OPTIMIZATION_CYCLE_CRON": "* * * * *",
            "HEALTH_CHECK_CRON": "* * * * *",
            "SCRAPE_SAMPLES": str(samples),
            "SCRAPE_INTERVAL_S": str(interval_s),
            # one cycle of `samples` is all the history these tests have: count its span as
            # sustained (the 30 s default needs the 8-sample production cycle)
            "DETECTION_MIN_SUSTAINED_S": str(max(1.0, (samples - 1) * interval_s)),
            "SCRAPE_TIMEOUT_S": "5",
            "ENVIRONMENT": "test",
            "AGENT_ID": "perf-agent-e2e",
            "HOST": "127.0.0.1",
            "PORT": str(ports["sidecar"]),
        }
        dagster_env = {
            **agent_env,
            "DAGSTER_HOME": str(dagster_home),
            "DAGSTER_POSTGRES_USER": pg.username or "",
            "DAGSTER_POSTGRES_PASSWORD": pg.password or "",
            "DAGSTER_POSTGRES_HOST": pg.host or "127.0.0.1",
            "DAGSTER_POSTGRES_PORT": str(pg.port or 5432),
            "DAGSTER_POSTGRES_DB": dagster_db,
            "DAGSTER_GRPC_HOST": "127.0.0.1",
            "DAGSTER_GRPC_PORT": str(ports["grpc"]),
        }

        services.start(
            "redis",
            [
                REDIS_SERVER,
                *f"--port {ports['redis']} --bind 127.0.0.1 --appendonly no".split(),
                "--save",
                "",
                "--dir",
                workdir,
            ],
            base,
        )
        services.start(
            "fleet",
            [
                BIN / "perf-pipelines",
                *f"fleet --scenario mixed --port {ports['fleet']}".split(),
                "--write-targets",
                targets_path,
                "--speed",
                fleet_speed,
            ],
            base,
        )
        # As in the compose deployment: the schema first, then the services.
        upgraded = subprocess.run(
            [BIN / "perf-pipelines", "db", "upgrade"],
            env=agent_env,
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if upgraded.returncode != 0:
            raise AssertionError(f"perf-pipelines db upgrade failed: {upgraded.stderr[-3000:]}")
        services.start(
            "user-code",
            [
                BIN / "dagster",
                *["api", "grpc", "-m", "perf_pipelines.definitions", "-h", "127.0.0.1", "-p"],
                ports["grpc"],
            ],
            dagster_env,
        )
        services.start(
            "sidecar",
            [BIN / "perf-pipelines", "sidecar", "--host", "127.0.0.1", "--port", ports["sidecar"]],
            agent_env,
        )
        services.wait_for(
            "the user-code gRPC server to listen",
            lambda: port_open(ports["grpc"]),
            120,
            must_run=("user-code",),
        )
        services.start(
            "webserver",
            [
                BIN / "dagster-webserver",
                "-h",
                "127.0.0.1",
                "-p",
                ports["web"],
                "-w",
                DEPLOY / "workspace.yaml",
            ],
            dagster_env,
        )
        topology = NativeTopology(
            root=workdir,
            services=services,
            orchestrator=orchestrator,
            agent_db_url=agent_db_url,
            dagster_db_url=dagster_db_url,
            dagster_home=dagster_home,
            targets_path=targets_path,
            redis_url=redis_url,
            fleet_url=f"http://127.0.0.1:{ports['fleet']}",
            grpc_port=ports["grpc"],
            webserver_url=f"http://127.0.0.1:{ports['web']}",
            sidecar_url=f"http://127.0.0.1:{ports['sidecar']}",
            agent_env=agent_env,
            dagster_env=dagster_env,
            samples=samples,
        )
        stack.callback(topology.api.close)
        # The webserver creates Dagster's tables in its database; the daemon starts after it
        # (as `depends_on: dagster-webserver: service_healthy` orders it in docker-compose.yml).
        services.wait_for(
            "the webserver to load the perf_pipelines code location from the gRPC server",
            topology.api.location_loaded,
            150,
            interval_s=1.0,
            must_run=("webserver", "user-code"),
        )
        topology.start_daemon()
        services.wait_for(
            "the fleet's targets file and the sidecar",
            lambda: (
                targets_path.exists()
                and httpx.get(f"{topology.fleet_url}/", timeout=2).status_code == 200
                and httpx.get(f"{topology.sidecar_url}/api/v1/health", timeout=2).status_code == 200
            ),
            60,
            must_run=("fleet", "sidecar", "redis"),
        )
        topology.wait_daemon_healthy()
        yield topology
