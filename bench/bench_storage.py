"""Storage growth: rows and bytes per target-day in SQLite and PostgreSQL, and what retention
keeps the tables at. Usage: python bench/bench_storage.py [--quick] [postgresql+psycopg://…]
(default: $PERF_TEST_POSTGRES_URL; SQLite only when neither is set).

Rows are the simulator's, as bench_analysis.py makes them (all four engines, failures and
restarts included), stored with `insert_snapshots` exactly as the collector stores them. At the
default schedule (a cycle every 5 minutes, 3 samples each) a target with one model writes 864
snapshot rows a day; bytes per row are measured on disk, indexes included, then multiplied out.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench_analysis import Template, plan, rows, simulate_templates
from benchkit import BenchResult, SummaryRow, fresh_postgres_database, markdown_table, report
from sqlalchemy import Engine, func, select, text

from perf_pipelines.storage.db import create_db_engine, ensure_schema
from perf_pipelines.storage.retention import delete_older_than
from perf_pipelines.storage.schema import metric_snapshots
from perf_pipelines.storage.snapshots import insert_snapshots

TARGETS = 40  # × 240 samples = 9,600 rows per database
QUICK_TARGETS = 5
ROWS_PER_TARGET_DAY = 24 * 12 * 3  # a cycle every 5 min, 3 samples each
RETENTION_DAYS = 7


def _bytes_sqlite(engine: Engine, path: Path) -> int:
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


def _bytes_postgres(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                text("SELECT pg_total_relation_size('metric_snapshots')")
            ).scalar_one()
        )


def measure(
    engine: Engine, size: Callable[[], int], templates: list[Template], targets: int
) -> dict[str, float]:
    ensure_schema(engine)
    empty = size()
    stored = rows(templates, plan(templates, targets), 0, targets)
    started = time.perf_counter()
    with engine.begin() as connection:
        insert_snapshots(connection, stored)
    insert_s = time.perf_counter() - started
    with engine.connect() as connection:
        count = connection.execute(select(func.count()).select_from(metric_snapshots)).scalar_one()
    per_row = (size() - empty) / count
    started = time.perf_counter()
    deleted = delete_older_than(engine, datetime.now(UTC) + timedelta(days=1)).deleted
    delete_s = time.perf_counter() - started
    return {
        "rows": count,
        "bytes_per_row": per_row,
        "insert_us": insert_s / count * 1e6,
        "mib_per_target_day": per_row * ROWS_PER_TARGET_DAY / 2**20,
        "deletes_per_s": deleted["metric_snapshots"] / delete_s,
    }


def main() -> None:
    quick = "--quick" in sys.argv
    arguments = [arg for arg in sys.argv[1:] if arg != "--quick"]
    postgres_url = arguments[0] if arguments else os.environ.get("PERF_TEST_POSTGRES_URL")
    targets = QUICK_TARGETS if quick else TARGETS
    templates = simulate_templates()
    measured: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "perf.db"
        engine = create_db_engine(f"sqlite:///{path}")
        sqlite_bytes = lambda: _bytes_sqlite(engine, path)  # noqa: E731
        measured["SQLite"] = measure(engine, sqlite_bytes, templates, targets)
        engine.dispose()
    if postgres_url:
        url, drop = fresh_postgres_database(postgres_url)
        engine = create_db_engine(url)
        try:
            measured["PostgreSQL"] = measure(
                engine, lambda: _bytes_postgres(engine), templates, targets
            )
        finally:
            engine.dispose()
            drop()
    table = markdown_table(
        [
            "database",
            "rows stored",
            "bytes per row (with indexes)",
            "insert µs per row",
            "rows per target-day",
            "MiB per target-day",
            f"GiB for 1,000 targets × {RETENTION_DAYS} days",
            "retention deletes rows/s",
        ],
        [
            [
                database,
                f"{m['rows']:,.0f}",
                f"{m['bytes_per_row']:,.0f}",
                f"{m['insert_us']:,.0f}",
                ROWS_PER_TARGET_DAY,
                f"{m['mib_per_target_day']:.2f}",
                f"{m['mib_per_target_day'] * RETENTION_DAYS * 1000 / 1024:.1f}",
                f"{m['deletes_per_s']:,.0f}",
            ]
            for database, m in measured.items()
        ],
    )
    summary = [
        SummaryRow(
            what=f"storage per target-day ({ROWS_PER_TARGET_DAY} rows), {database}",
            ours=f"{m['mib_per_target_day']:.2f} MiB",
            peer="—",
            ratio="—",
            goal=f"bounded: RETENTION_DAYS={RETENTION_DAYS} → "
            f"{m['mib_per_target_day'] * RETENTION_DAYS:.0f} MiB per target",
            met=None,
        )
        for database, m in measured.items()
    ]
    report(
        BenchResult(
            name="storage",
            command="python bench/bench_storage.py",
            table=table,
            summary=summary,
        )
    )


if __name__ == "__main__":
    main()
