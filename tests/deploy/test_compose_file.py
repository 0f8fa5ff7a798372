"""docker-compose.yml, the Dockerfile, .env.example and deploy/ agree with the code (no Docker
needed): every setting is documented, every service has a health check, ports match the
settings' defaults, the image runs as a non-root user, Dagster's storage is PostgreSQL."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from perf_pipelines.settings import Settings
from tests.support.topology import create_database, drop_database

ROOT = Path(__file__).resolve().parents[2]
OUR_SERVICES = ("user-code", "dagster-webserver", "dagster-daemon", "sidecar", "fleet")
MODULE = "perf_pipelines.definitions"


def _load(name: str) -> Any:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load("docker-compose.yml")


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _env_example() -> tuple[dict[str, str], dict[str, str]]:
    """(active, commented) NAME=value lines of .env.example."""
    active: dict[str, str] = {}
    commented: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if match := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line):
            active[match[1]] = match[2]
        elif match := re.fullmatch(r"#\s?([A-Z][A-Z0-9_]*)=(.*)", line):
            commented[match[1]] = match[2]
    return active, commented


def _published(ports: list[str]) -> dict[int, str]:
    """{container port: published host address} from "${ADDR:-127.0.0.1}:3000:3000" strings."""
    result = {}
    for entry in ports:
        address, published, container = str(entry).rsplit(":", 2)
        assert published == container, entry  # the same port number outside as inside
        result[int(container)] = address
    return result


def test_the_topology_has_every_service(services: dict[str, Any]) -> None:
    assert set(services) == {"postgres", "redis", *OUR_SERVICES}
    assert services["fleet"]["profiles"] == ["demo"]
    assert all("profiles" not in s for name, s in services.items() if name != "fleet")


def test_every_service_has_a_health_check(services: dict[str, Any]) -> None:
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name
        assert {"interval", "timeout", "retries"} <= set(check), name


def test_services_wait_for_what_they_need(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for needed, condition in service.get("depends_on", {}).items():
            assert needed in services, (name, needed)
            assert condition["condition"] in ("service_healthy", "service_started"), name
    assert services["user-code"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # one process creates Dagster's tables in a new database: the webserver, then the daemon
    assert services["dagster-daemon"]["depends_on"]["dagster-webserver"] == {
        "condition": "service_healthy"
    }


def test_commands_load_the_code_location_and_serve_the_documented_ports(
    services: dict[str, Any],
) -> None:
    user_code = services["user-code"]["command"]
    assert user_code == [
        "dagster", "api", "grpc", "-m", MODULE, "-h", "0.0.0.0", "-p", "4000",
    ]  # fmt: skip
    workspace = _load("deploy/workspace.yaml")["load_from"][0]["grpc_server"]
    environment = services["dagster-webserver"]["environment"]
    assert workspace["host"] == {"env": "DAGSTER_GRPC_HOST"}
    assert workspace["port"] == {"env": "DAGSTER_GRPC_PORT"}
    for name in ("dagster-webserver", "dagster-daemon", "user-code"):
        env = services[name]["environment"]
        assert env["DAGSTER_GRPC_HOST"] == "user-code" and env["DAGSTER_GRPC_PORT"] == "4000"
        assert env["DAGSTER_HOME"] == environment["DAGSTER_HOME"]
    for name in ("dagster-webserver", "dagster-daemon"):
        assert f"{environment['DAGSTER_HOME']}/workspace.yaml" in services[name]["command"]

    defaults = Settings.model_fields
    webserver = services["dagster-webserver"]
    assert webserver["command"][:5] == ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000"]
    assert set(_published(webserver["ports"])) == {3000}
    sidecar = services["sidecar"]
    assert sidecar["command"] == ["perf-pipelines", "sidecar", "--host", "0.0.0.0"]
    assert set(_published(sidecar["ports"])) == {defaults["port"].default} == {8002}
    assert "8002" in " ".join(sidecar["healthcheck"]["test"])
    assert "3000" in " ".join(webserver["healthcheck"]["test"])
    assert services["user-code"]["healthcheck"]["test"][-2:] == ["-p", "4000"]
    # The UI has no login and PostgreSQL/Redis are internal: nothing is published elsewhere by
    # default, and the databases are not published at all.
    for name in ("dagster-webserver", "sidecar"):
        for address in _published(services[name]["ports"]).values():
            assert address.endswith(":-127.0.0.1}"), (name, address)
    for name in ("postgres", "redis", "user-code", "dagster-daemon", "fleet"):
        assert "ports" not in services[name], name

    fleet = services["fleet"]["command"]
    assert fleet[:4] == ["perf-pipelines", "fleet", "--scenario", "mixed"]
    assert fleet[fleet.index("--write-targets") + 1] == _env_example()[0]["PERF_TARGETS"]
    # The fleet's targets file names 127.0.0.1: it must share the scrapers' network.
    assert services["fleet"]["network_mode"] == "service:user-code"


def test_our_services_run_the_project_image_with_the_env_file(services: dict[str, Any]) -> None:
    images = {services[name]["image"] for name in OUR_SERVICES if name != "fleet"}
    assert len(images) == 1, images
    # the demo fleet runs the same Dockerfile with the lab added; the product image has none
    assert services["fleet"]["image"] not in images
    assert services["fleet"]["build"]["args"] == {"WITH_LAB": "1"}
    for name in OUR_SERVICES:
        service = services[name]
        assert service["build"]["dockerfile"] == "Dockerfile"
        assert service["env_file"] == ".env"
        assert service["init"] is True
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")


def test_env_example_lists_every_setting_the_code_reads() -> None:
    active, commented = _env_example()
    listed = set(active) | set(commented)
    settings = {name.upper() for name in Settings.model_fields}
    missing = sorted(settings - listed)
    assert not missing, f".env.example does not list {missing}"
    dagster = {f"DAGSTER_POSTGRES_{p}" for p in ("USER", "PASSWORD", "DB", "HOST", "PORT")}
    assert dagster <= set(active)
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"} <= set(active)


def test_env_example_values_are_valid_and_its_defaults_are_the_code_s(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    active, commented = _env_example()
    for value in active.values():
        assert " #" not in value, f"inline comment in an active line: {value!r}"
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    settings = Settings(_env_file=ROOT / ".env.example")  # type: ignore[call-arg]
    assert settings.database_url is not None and settings.database_url.startswith(
        "postgresql+psycopg://"
    )
    # each commented value is the documented default
    for name, field in Settings.model_fields.items():
        value = commented.get(name.upper())
        if not value:
            continue
        parsed = getattr(Settings(**{name: value}), name)
        default = field.default
        if isinstance(parsed, SecretStr):
            continue
        assert parsed == default, f"{name.upper()}={value} in .env.example, default {default!r}"


def test_the_agent_database_url_matches_the_bundled_postgres() -> None:
    active, _ = _env_example()
    url = active["DATABASE_URL"]
    assert url == (
        f"postgresql+psycopg://{active['POSTGRES_USER']}:{active['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{active['POSTGRES_DB']}"
    )
    assert active["DAGSTER_POSTGRES_HOST"] == "postgres"
    assert active["DAGSTER_POSTGRES_DB"] != active["POSTGRES_DB"]
    assert active["REDIS_URL"].startswith("redis://redis:")


def test_dagster_instance_uses_postgres_and_the_queued_coordinator() -> None:
    instance = _load("deploy/dagster.yaml")
    postgres = instance["storage"]["postgres"]["postgres_db"]
    for key, variable in (
        ("username", "DAGSTER_POSTGRES_USER"),
        ("password", "DAGSTER_POSTGRES_PASSWORD"),
        ("hostname", "DAGSTER_POSTGRES_HOST"),
        ("db_name", "DAGSTER_POSTGRES_DB"),
        ("port", "DAGSTER_POSTGRES_PORT"),
    ):
        assert postgres[key] == {"env": variable}  # never a literal credential
    # psycopg2: dagster-postgres's NOTIFY fails under psycopg 3 (deploy/dagster.yaml)
    assert postgres["scheme"] == "postgresql+psycopg2"
    assert instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert instance["run_launcher"]["class"] == "DefaultRunLauncher"
    assert instance["run_monitoring"]["enabled"] is True


def test_dagster_instance_config_is_valid_for_run_event_log_and_schedule_storage(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Dagster itself resolves deploy/dagster.yaml into PostgreSQL run, event-log and schedule
    storage (constructed lazily: no database is contacted)."""
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.instance.ref import InstanceRef

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    for suffix, value in (("USER", "u"), ("PASSWORD", "p"), ("HOST", "h"), ("DB", "d")):
        monkeypatch.setenv(f"DAGSTER_POSTGRES_{suffix}", value)
    monkeypatch.setenv("DAGSTER_POSTGRES_PORT", "5432")
    config, _ = dagster_instance_config(str(home))
    ref = InstanceRef.from_dir(str(home), config_dir=str(home))
    for data in (ref.run_storage_data, ref.event_storage_data, ref.schedule_storage_data):
        assert data.module_name.startswith("dagster_postgres"), data
    assert config["run_launcher"]["class"] == "DefaultRunLauncher"


def _final_stage(dockerfile: str) -> list[str]:
    stages = re.split(r"(?m)^FROM ", dockerfile)
    return stages[-1].splitlines()


def test_dockerfile_is_multi_stage_slim_and_not_root() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"(?m)^FROM (\S+)(?: AS (\w+))?", dockerfile)
    assert len(froms) >= 2
    assert re.search(r"(?m)^ARG PYTHON_IMAGE=python:3\.11-slim$", dockerfile)
    assert froms[-1] == ("${PYTHON_IMAGE}", "runtime")
    assert "pip wheel" in dockerfile.split("AS runtime")[0]  # the builder builds the wheel
    final = "\n".join(_final_stage(dockerfile))
    users = re.findall(r"(?m)^USER (\S+)", final)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "COPY --from=builder /opt/venv /opt/venv" in final
    for tool in ("gcc", "build-essential", "apt-get install", "COPY . "):
        assert tool not in final, tool
    assert "deploy/dagster.yaml" in final and "deploy/workspace.yaml" in final


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for match in re.finditer(
        r"(?m)^COPY (?!--from)(?:--\S+ )*(.+) \S+$", (ROOT / "Dockerfile").read_text()
    ):
        copied.update(p.rstrip("/").removeprefix("./") for p in match[1].split())
    assert copied <= included, copied - included
    assert {".env", ".venv", ".git", "tests"}.isdisjoint(included)


@pytest.mark.postgres
def test_postgres_init_script_creates_the_dagster_database() -> None:
    """deploy/postgres/10-dagster-database.sh, as the postgres image runs it, against a real
    server: creates the owner role and the database once, and is safe to run again."""
    admin_url = os.environ.get("PERF_TEST_POSTGRES_URL")
    psql = shutil.which("psql") or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))), None
    )
    if not admin_url or psql is None:
        pytest.skip("needs PERF_TEST_POSTGRES_URL and psql (scripts/start_postgres.sh)")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    suffix = uuid.uuid4().hex[:8]
    scratch = f"perf_init_{suffix}"  # the script's "POSTGRES_DB": any existing database
    create_database(admin_url, scratch)
    database, role = f"perf_dagster_{suffix}", f"perf_dagster_{suffix}_owner"
    env = {
        **os.environ,
        "PATH": f"{Path(psql).parent}:{os.environ['PATH']}",
        "PGHOST": url.host or "127.0.0.1",
        "PGPORT": str(url.port or 5432),
        "POSTGRES_USER": url.username or "postgres",
        "POSTGRES_DB": scratch,
        "DAGSTER_POSTGRES_DB": database,
        "DAGSTER_POSTGRES_USER": role,
        "DAGSTER_POSTGRES_PASSWORD": "it's a 'quoted' secret",
    }
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        for _ in range(2):  # a second run changes nothing
            done = subprocess.run(
                ["sh", str(ROOT / "deploy" / "postgres" / "10-dagster-database.sh")],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
        with admin.connect() as connection:
            owner = connection.execute(
                text("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = :name"),
                {"name": database},
            ).scalar()
        assert owner == role
    finally:
        drop_database(admin_url, database)
        drop_database(admin_url, scratch)
        with admin.connect() as connection:
            connection.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()
