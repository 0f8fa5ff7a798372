"""`perf-pipelines llama-server build|start`: a real llama.cpp server on CPU, on loopback."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType

import click


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@click.group("llama-server")
def llama_server() -> None:
    """A real llama.cpp llama-server: built once into a cache outside the checkout, run with
    --metrics on 127.0.0.1 with a small real model (Gemma 3 270M, Q4_K_M)."""


@llama_server.command("build")
@click.option("--jobs", default=2, show_default=True, help="Parallel compile jobs.")
@click.option("--nice", default=19, show_default=True, help="Niceness of the compiler (0: none).")
def build_command(jobs: int, nice: int) -> None:
    """Build llama-server and assemble the model into the cache, unless already done.

    The cache is $PERF_LLAMACPP_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/perf_pipelines/llama.cpp;
    a build cut short resumes; a second build waits for the first."""
    from perf_lab.real_engine.llamacpp import BuildError, build
    from perf_pipelines.cli.common import ExitCode, fail

    try:
        done = build(jobs=jobs, nice=nice)
    except BuildError as exc:
        fail(str(exc), ExitCode.ERROR)
    click.echo(f"llama-server b{done.build}: {done.binary}")
    click.echo(f"model: {done.model}")


@llama_server.command("start")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--parallel", type=click.IntRange(1, 4096), help="Slots (llama.cpp: -1 = auto, 4).")
@click.option(
    "--ctx-size", type=click.IntRange(0), help="KV cache size in tokens (0: the model's)."
)
@click.option(
    "--threads", type=click.IntRange(1, 1024), help="CPU threads (llama.cpp's default if unset)."
)
@click.option(
    "--write-targets",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a targets file naming this server (engine: auto) here.",
)
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def start_command(
    port: int,
    parallel: int | None,
    ctx_size: int | None,
    threads: int | None,
    write_targets: Path | None,
    extra: tuple[str, ...],
) -> None:
    """Start llama-server on 127.0.0.1:PORT with --metrics (building it first if needed) and
    serve until Ctrl-C. Arguments after `--` go to llama-server as they are."""
    from perf_lab.real_engine.llamacpp import BuildError, build, installed
    from perf_lab.real_engine.server import LlamaServer, ServerError
    from perf_pipelines.cli.common import ExitCode, fail

    done = installed()
    if done is None:
        click.echo("llama-server is not built yet: building it first", err=True)
        try:
            done = build()
        except BuildError as exc:
            fail(str(exc), ExitCode.ERROR)
    server = LlamaServer(
        done.binary,
        done.model,
        port=port or None,
        parallel=parallel,
        ctx_size=ctx_size,
        threads=threads,
        extra=extra,
    )
    # SIGTERM, and SIGINT even where a shell started this in the background with SIGINT
    # ignored, end in the `finally` below: llama-server never outlives this command.
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    try:
        server.start()
        assert server.process is not None
        props = server.props()
        if write_targets is not None:  # before "ready": whoever waits for it finds the file
            write_targets.write_text(
                "targets:\n"
                f"  - name: llamacpp-{server.port}\n"
                f"    url: {server.metrics_url}\n"
                "    engine: auto\n",
                encoding="utf-8",
            )
        click.echo(
            f"llama-server b{done.build} ready at {server.metrics_url} "
            f"({props.get('total_slots')} slots, model {done.model.name}); Ctrl-C stops it"
        )
        if write_targets is not None:
            click.echo(f"targets file: {write_targets}")
        code = server.process.wait()
        fail(f"llama-server exited ({code}): {' | '.join(server.log_lines(3))}", ExitCode.ERROR)
    except KeyboardInterrupt:
        click.echo("stopping llama-server", err=True)
    except ServerError as exc:
        fail(str(exc), ExitCode.ERROR)
    finally:
        server.stop()


@llama_server.command("capture")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
def capture_command(folder: Path) -> None:
    """Start the built llama-server (2 slots), and write its /metrics idle and under load,
    /props and /slots into FOLDER (the parser fixtures: tests/fixtures/expositions/llamacpp/)."""
    from perf_lab.real_engine.capture import capture
    from perf_lab.real_engine.llamacpp import installed
    from perf_lab.real_engine.server import LlamaServer, ServerError
    from perf_pipelines.cli.common import ExitCode, fail

    done = installed()
    if done is None:
        fail("llama-server is not built: run `perf-pipelines llama-server build`", ExitCode.ERROR)
    out = folder / f"b{done.build}"
    try:
        with LlamaServer(done.binary, done.model, parallel=2, ctx_size=2048) as server:
            summary = capture(server, out)
    except ServerError as exc:
        fail(str(exc), ExitCode.ERROR)
    click.echo(f"{out}: {summary['requests']} requests, {summary['tokens_predicted']} tokens")
