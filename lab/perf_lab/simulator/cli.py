"""`perf-pipelines fleet`: serve a simulated fleet on loopback."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import click

from perf_lab.simulator.scenarios import SCENARIOS


@click.command("fleet")
@click.option(
    "--scenario", type=click.Choice(sorted(SCENARIOS)), default="mixed", show_default=True
)
@click.option(
    "--fleet-file",
    type=click.Path(exists=True, path_type=Path),
    help="YAML fleet instead of a scenario.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9400, show_default=True, type=int)
@click.option(
    "--write-targets", type=click.Path(path_type=Path), help="Write a matching targets file here."
)
@click.option("--speed", default=1.0, show_default=True, help="Simulated seconds per wall second.")
@click.option("--servers", default=1000, show_default=True, help="Size of the 'scale' scenario.")
@click.option(
    "--warmup", default=120.0, show_default=True, help="Simulated seconds run before serving."
)
@click.option(
    "--tick",
    default=None,
    type=float,
    help="Model step in simulated seconds (default 0.25; 2 for 'scale').",
)
def fleet(
    scenario: str,
    fleet_file: Path | None,
    host: str,
    port: int,
    write_targets: Path | None,
    speed: float,
    servers: int,
    warmup: float,
    tick: float | None,
) -> None:
    """Serve simulated vLLM/SGLang/TGI/llama.cpp servers at http://HOST:PORT/<name>/metrics."""
    # Imported here: `perf-pipelines --help` lists this command and must not load the HTTP
    # server (uvicorn) or the product's settings (pydantic-settings) to do so.
    import yaml

    from perf_lab.simulator.fleet import Fleet
    from perf_lab.simulator.http import make_server
    from perf_lab.simulator.scenarios import load_fleet_file, scale, targets_for
    from perf_pipelines.cli.common import ExitCode, fail
    from perf_pipelines.settings import is_wildcard_address
    from perf_pipelines.targets import is_loopback_host

    if not is_loopback_host(host):
        click.echo(
            f"warning: the simulator's control API has no authentication; binding {host}", err=True
        )
    # Bound before anything is written: a targets file must never point at a port that
    # another program answers on.
    try:
        listener = socket.create_server(
            (host.strip("[]"), port),
            family=socket.AF_INET6 if ":" in host else socket.AF_INET,
            backlog=4096,
        )
    except OSError as exc:
        fail(
            f"cannot listen on {host}:{port} ({os.strerror(exc.errno) if exc.errno else exc}): "
            "another program has it; "
            "choose another with --port (FLEET_PORT for scripts/demo.sh)",
            ExitCode.CONFIGURATION,
        )
    port = listener.getsockname()[1]
    if fleet_file is not None:
        specs = load_fleet_file(fleet_file)
    elif scenario == "scale":
        specs = scale(servers)
    else:
        specs = SCENARIOS[scenario]()
    large = len(specs) > 50
    warmup = 0.0 if large else warmup  # replaying minutes for 1,000 servers would take minutes
    simulated = Fleet(
        specs, tick=tick or (2.0 if large else 0.25), virtual=True, start=time.time() - warmup
    )
    simulated.speed = speed
    simulated.advance(warmup)  # servers look like they have been serving for a while
    simulated.switch_to_real_time()
    # A wildcard bind is reachable on loopback too; the targets file needs a concrete host.
    base_url = f"http://{'127.0.0.1' if is_wildcard_address(host) else host}:{port}"
    if write_targets is not None:
        write_targets.parent.mkdir(parents=True, exist_ok=True)
        # Written whole or not at all: a reader never sees half a file.
        partial = write_targets.with_name(f".{write_targets.name}.partial")
        partial.write_text(yaml.safe_dump(targets_for(specs, base_url), sort_keys=False))
        partial.replace(write_targets)
        click.echo(f"targets file: {write_targets}")
    click.echo(f"{len(specs)} simulated servers on {base_url}/<name>/metrics")
    click.echo(f"control API: {base_url}/control/servers")
    server = make_server(simulated, host, port)
    server.run(sockets=[listener])
    sys.exit(0)
