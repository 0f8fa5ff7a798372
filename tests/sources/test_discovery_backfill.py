"""Discovery of the fleet from Prometheus and back-fill of history, against the real server."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select

from perf_pipelines.cli import main
from perf_pipelines.sources.cycle import backfill
from perf_pipelines.sources.discovery import discover
from perf_pipelines.sources.prometheus import read_history, read_recent
from perf_pipelines.storage.db import ensure_schema
from perf_pipelines.storage.schema import metric_snapshots as table
from perf_pipelines.storage.snapshots import insert_snapshots
from perf_pipelines.targets import dump_targets, load_targets
from tests.sources.conftest import PromFleet


def test_discovery_finds_every_engine_with_the_url_prometheus_scrapes(
    prom_fleet: PromFleet,
) -> None:
    servers = {s.name: s for s in asyncio.run(discover(prom_fleet.config))}
    expected = {t.name: t for t in [*prom_fleet.live_targets, *prom_fleet.frozen_targets]}
    expected[prom_fleet.reset_target.name] = prom_fleet.reset_target
    # `gone` never exported an engine metric: it is not an inference server as far as we know.
    assert set(servers) == set(expected)
    for name, target in expected.items():
        server = servers[name]
        assert server.engine.value == target.engine
        assert server.url == target.url and server.url_from_scrape_config
        assert server.job == name and server.up is True
        if target.engine in ("vllm", "sglang"):
            assert server.models == [target.model]
        else:
            assert server.models == []
    assert {s.engine.value for s in servers.values()} == {"vllm", "sglang", "tgi", "llamacpp"}


def _cli_env(prom_fleet: PromFleet, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "PROMETHEUS_URL": prom_fleet.prometheus.url,
        "PERF_HOME": str(tmp_path / "home"),
        "LOG_LEVEL": "WARNING",
        **extra,
    }


def test_discover_writes_a_valid_targets_file_that_reads_back(
    prom_fleet: PromFleet, tmp_path: Path
) -> None:
    path = tmp_path / "discovered.yaml"
    result = CliRunner().invoke(
        main,
        ["prometheus", "discover", "--write-targets", str(path)],
        env=_cli_env(prom_fleet, tmp_path),
    )
    assert result.exit_code == 0, result.output
    assert "vllm-llama70b-kv" in result.output and "targets file:" in result.output
    targets = load_targets(path)
    assert len(targets) == 9
    assert {t.engine for t in targets} == {"vllm", "sglang", "tgi", "llamacpp"}
    # The written URLs are the scrape URLs, so reading them back matches exactly.
    reads = asyncio.run(read_recent(prom_fleet.config, targets, 1, 1.0))
    assert all(r.latest.up for r in reads), [r.latest.error for r in reads]
    assert all(r.selector is not None and r.selector.by_scrape_url for r in reads)


def test_discover_reports_an_unreachable_prometheus(tmp_path: Path) -> None:
    from tests.support.http_servers import closed_port

    result = CliRunner().invoke(
        main,
        ["prometheus", "discover"],
        env={
            "PROMETHEUS_URL": f"http://127.0.0.1:{closed_port()}",
            "PERF_HOME": str(tmp_path),
            "LOG_LEVEL": "WARNING",
        },
    )
    assert result.exit_code == 4, result.output  # ExitCode.UNREACHABLE
    assert "cannot reach Prometheus" in result.output


def _rows(engine: Engine) -> list:
    with engine.connect() as connection:
        return connection.execute(
            select(table).order_by(table.c.target, table.c.collected_at)
        ).all()


def test_backfill_stores_history_and_a_rerun_adds_nothing(
    prom_fleet: PromFleet, db_engine: Engine
) -> None:
    targets = prom_fleet.live_targets
    prom_fleet.prometheus.wait_for_scrapes([t.name for t in targets], 12)
    ensure_schema(db_engine)
    outcome = backfill(db_engine, prom_fleet.config, targets, minutes=0.2, step_s=2.0)
    assert not outcome.errors
    assert outcome.inserted == sum(outcome.rows_by_target.values())
    by_target = defaultdict(list)
    for row in _rows(db_engine):
        by_target[row.target].append(row)
    assert set(by_target) == {t.name for t in targets}
    for name, rows in by_target.items():
        assert len(rows) >= 5, name
        assert all(r.up and r.run_id.startswith("backfill-") for r in rows)
        stamps = [r.collected_at.timestamp() for r in rows]
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert all(1.0 <= gap <= 3.0 for gap in gaps), gaps  # one row per 2 s step
        generated = [r.generation_tokens_total for r in rows]
        assert generated == sorted(generated) and generated[-1] > generated[0]

    again = backfill(db_engine, prom_fleet.config, targets, minutes=0.2, step_s=2.0)
    assert again.inserted == 0
    assert len(_rows(db_engine)) == outcome.inserted


def test_history_rows_have_deterministic_keys(prom_fleet: PromFleet, db_engine: Engine) -> None:
    """The same history read by runs that ask for different ranges yields the same
    (run_id, sample_index) for the same step: inserting both stores each step once."""
    targets = prom_fleet.live_targets[:2]
    prom_fleet.prometheus.wait_for_scrapes([t.name for t in targets], 12)
    ensure_schema(db_engine)
    end = datetime.now(UTC).timestamp() - 1
    ends = {t.name: end for t in targets}
    short = asyncio.run(read_history(prom_fleet.config, targets, end - 8, ends, 2.0))
    longer = asyncio.run(read_history(prom_fleet.config, targets, end - 10.5, ends, 2.0))

    def keys(reads: list) -> set:
        return {(r.run_id, r.target, r.sample_index, r.collected_at) for h in reads for r in h.rows}

    assert keys(short) and keys(short) <= keys(longer)
    with db_engine.begin() as connection:
        first = insert_snapshots(connection, [r for h in short for r in h.rows])
    with db_engine.begin() as connection:
        second = insert_snapshots(connection, [r for h in longer for r in h.rows])
    assert first == len(keys(short))
    assert second == len(keys(longer) - keys(short))


def test_backfill_command_is_idempotent(
    prom_fleet: PromFleet, tmp_path: Path, sqlite_url: str
) -> None:
    targets_path = tmp_path / "targets.yaml"
    targets_path.write_text(dump_targets(prom_fleet.live_targets))
    env = _cli_env(prom_fleet, tmp_path, DATABASE_URL=sqlite_url)
    args = ["prometheus", "backfill", "--minutes", "0.2", "--step", "2", str(targets_path)]
    first = CliRunner().invoke(main, args, env=env)
    assert first.exit_code == 0, first.output
    stored = int(first.output.strip().splitlines()[-1].split()[0])
    assert stored >= 4 * 4
    second = CliRunner().invoke(main, args, env=env)
    assert second.exit_code == 0, second.output
    assert second.output.strip().endswith("0 new rows stored")


@pytest.mark.parametrize("minutes", ["0", "-1"])
def test_backfill_command_rejects_an_empty_range(
    prom_fleet: PromFleet, tmp_path: Path, minutes: str
) -> None:
    result = CliRunner().invoke(
        main, ["prometheus", "backfill", "--minutes", minutes], env=_cli_env(prom_fleet, tmp_path)
    )
    assert result.exit_code == 2
