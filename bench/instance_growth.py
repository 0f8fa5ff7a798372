"""Growth of the Dagster instance's storage over simulated days of schedules, with retention.

A real SQLite instance (the repository's dagster.yaml in a fresh DAGSTER_HOME) and a SQLite
agent database; every simulated day runs `health_check` and `optimization_cycle` HEALTH and
CYCLE times (in-process, real runs with their event logs, against 5 loopback targets), then the
real `retention` job. Days are compressed in time, not faked: run timestamps are real, and the
retention job is given RETENTION_DAYS equal to the real time since the start of the simulated
day that is RETENTION days old, so it deletes exactly the runs and rows of older simulated days.

After each day: the bytes of every file under DAGSTER_HOME (what the disk holds), the bytes the
SQLite databases use (pages minus free pages: a deleted row's page is reused, not returned to
the file system), the files and the runs kept. Real schedules run 288 + 288 + 1 runs a day
(every 5 minutes); the default here is a twelfth of that, so bytes per run are reported too.

Usage: python bench/instance_growth.py [--days 10] [--health 24] [--cycle 24] [--retention 7]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchkit import EXPOSITIONS, ROOT, markdown_table
from dagster import DagsterInstance

from perf_pipelines.definitions import build_definitions
from perf_pipelines.settings import load_settings

PAUSE_S = 15.0
BODY = (EXPOSITIONS / "vllm_v1_0_33.txt").read_bytes()


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/plain; version=0.0.4")
        self.send_header("content-length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        return None


def _sqlite_used_bytes(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        free = connection.execute("PRAGMA freelist_count").fetchone()[0]
        size = connection.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)
    finally:
        connection.close()


def _row_counts(home: Path) -> dict[str, int]:
    """Rows per table of the instance's shared databases (what may grow while runs stay flat)."""
    counts: dict[str, int] = {}
    for path in (home / "history" / "runs.db", home / "history" / "runs" / "index.db"):
        connection = sqlite3.connect(path)
        try:
            tables = connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            for (table,) in tables.fetchall():
                query = f'SELECT count(*) FROM "{table}"'  # names from sqlite_master
                counts[f"{path.name}:{table}"] = connection.execute(query).fetchone()[0]
        finally:
            connection.close()
    return {name: count for name, count in counts.items() if count}


def _measure(home: Path) -> dict[str, int]:
    files = [path for path in home.rglob("*") if path.is_file()]
    return {
        "disk_bytes": sum(path.stat().st_size for path in files),
        "used_bytes": sum(_sqlite_used_bytes(path) for path in files if path.suffix == ".db"),
        "files": len(files),
    }


def simulate(
    days: int, health: int, cycle: int, retention: int, work: Path
) -> list[dict[str, Any]]:
    home = work / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    targets = work / "targets.yaml"
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    targets.write_text(
        "targets:\n"
        + "".join(f"  - {{name: vllm-{i}, url: '{url}', engine: vllm}}\n" for i in range(5))
    )
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{work / 'agent.db'}",
        "perf_targets": targets,
        "orchestrator_url": None,
        "redis_url": None,
        "scrape_samples": 1,
        "scrape_interval_s": 0,
    }
    defs = build_definitions(load_settings(**values))
    instance = DagsterInstance.from_config(str(home))
    day_starts: list[datetime] = []
    rows = []
    try:
        for day in range(days):
            # The day starts, then a pause before its first run: the retention op reads the clock
            # a moment (seconds on a busy machine) after it is given RETENTION_DAYS, so its cutoff
            # lands inside this pause, never after a run of a day that is to be kept.
            day_starts.append(datetime.now(UTC))
            time.sleep(PAUSE_S)
            started = time.monotonic()
            for index in range(max(health, cycle)):
                for name, count in (("health_check", health), ("optimization_cycle", cycle)):
                    if index < count:
                        defs.resolve_job_def(name).execute_in_process(instance=instance)
            # RETENTION_DAYS simulated days: everything before the start of the oldest kept day.
            kept_from = day_starts[max(0, day - retention + 1)]
            elapsed_days = (datetime.now(UTC) - kept_from).total_seconds() / 86400
            # As run config, like a launch from the UI: new definitions each day would store a new
            # job snapshot each day, which a deployment with a fixed RETENTION_DAYS does not.
            result = defs.resolve_job_def("retention").execute_in_process(
                instance=instance,
                run_config={"resources": {"retention": {"config": {"days": elapsed_days}}}},
            )
            (output,) = [event for event in result.all_events if event.is_successful_output]
            metadata = output.step_output_data.metadata
            row = {
                "day": day + 1,
                "runs_kept": len(instance.get_run_records()),
                "runs_deleted": metadata["dagster_runs"].value,
                **_measure(home),
                "agent_db_bytes": (work / "agent.db").stat().st_size,
                "seconds": round(time.monotonic() - started, 1),
                "rows": _row_counts(home),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        instance.dispose()
        server.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--health", type=int, default=24, help="health_check runs a day")
    parser.add_argument("--cycle", type=int, default=24, help="optimization_cycle runs a day")
    parser.add_argument("--retention", type=int, default=7, help="RETENTION_DAYS")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "instance_growth.json"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="instance_growth_") as work:
        rows = simulate(args.days, args.health, args.cycle, args.retention, Path(work))
    mib = 1024 * 1024
    table = [
        (
            r["day"],
            r["runs_kept"],
            r["runs_deleted"],
            f"{r['disk_bytes'] / mib:.2f}",
            f"{r['used_bytes'] / mib:.2f}",
            r["files"],
            f"{r['agent_db_bytes'] / mib:.2f}",
        )
        for r in rows
    ]
    headers = ("day", "runs kept", "runs deleted", "disk MiB", "used MiB", "files", "agent db MiB")
    print(markdown_table(headers, table))
    runs_per_day = args.health + args.cycle + 1
    full = rows[min(args.retention, len(rows)) - 1]
    print(f"bytes per kept run (day {full['day']}): {full['disk_bytes'] / full['runs_kept']:.0f}")
    args.out.write_text(
        json.dumps({"runs_per_day": runs_per_day, "retention": args.retention, "days": rows})
    )


if __name__ == "__main__":
    main()
