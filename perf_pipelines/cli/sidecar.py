"""`perf-pipelines sidecar`: serve the sidecar HTTP API with uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import TYPE_CHECKING

import click

from perf_pipelines.logs import SecretRedactor, redact_and_clip

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger("perf_pipelines.sidecar")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def _migrate_in_background(engine: Engine) -> threading.Thread:
    """Bring the schema to head without delaying start-up or failing it (liveness first)."""
    from perf_pipelines.storage.db import ensure_schema

    password = engine.url.password

    def run() -> None:
        try:
            ensure_schema(engine)
        except Exception as exc:
            log.warning(
                "schema not brought to head at start-up (%s: %s); the detailed health shows "
                "the database's state; `perf-pipelines db upgrade` applies the migrations",
                type(exc).__name__,
                redact_and_clip(str(exc), 240, SecretRedactor([password] if password else [])),
            )

    thread = threading.Thread(target=run, name="sidecar-migrate", daemon=True)
    thread.start()
    return thread


@click.command("sidecar")
@click.option("--host", default=None, help="Bind address  [default: HOST, 127.0.0.1]")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Port  [default: PORT, 8002]"
)
@click.option(
    "--migrate/--no-migrate",
    default=True,
    show_default=True,
    help="Apply pending migrations in the background at start-up.",
)
def sidecar(host: str | None, port: int | None, migrate: bool) -> None:
    """Serve health, /metrics and the recommendations API over HTTP (FastAPI + uvicorn)."""
    import uvicorn

    from perf_pipelines.cli.common import settings_or_exit
    from perf_pipelines.serving import limited_config
    from perf_pipelines.sidecar.app import create_app
    from perf_pipelines.sidecar.limits import http_limits
    from perf_pipelines.storage.db import create_db_engine

    settings = settings_or_exit()
    bind_host = host or settings.host
    bind_port = port if port is not None else settings.port
    if not is_loopback(bind_host) and settings.token is None:
        log.warning(
            "SECURITY: the sidecar binds %s, reachable from other hosts, and ORCHESTRATOR_TOKEN "
            "is unset: anyone who can reach it can mark recommendations applied or rejected. "
            "Set ORCHESTRATOR_TOKEN or bind 127.0.0.1.",
            bind_host,
            extra={"security": True},
        )
    engine = create_db_engine(settings.resolved_database_url)
    if migrate:
        _migrate_in_background(engine)
    app = create_app(settings, engine)
    config = limited_config(
        app,
        bind_host,
        bind_port,
        http_limits(settings),
        log_config=None,  # keep the agent's JSON logging
        log_level=settings.log_level.lower(),
        access_log=False,  # our own request log never records headers
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )
    log.info("sidecar starting on %s:%d", bind_host, bind_port)
    try:
        uvicorn.Server(config).run()
    finally:
        engine.dispose()
