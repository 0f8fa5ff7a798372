"""Storage growth: rows and bytes per target-day in SQLite and PostgreSQL, and what retention
keeps the tables at. Usage: python bench/bench_storage.py [postgresql+psycopg://…]
(default: $PERF_TEST_POSTGRES_URL; SQLite only when neither is set).

Rows are the simulator's, as bench_analysis.py makes them (all four engines, failures and
restarts included), stored with `insert_snapshots` exactly as the collector stores them. At the
default schedule (a cycle every 5 minutes, 3 samples each) a target with one model writes 864
snapshot rows a day; bytes per row are measured on disk, indexes included, then multiplied out.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench_analysis import _postgres_database, plan, rows, simulate_templates
from sqlalchemy import Engine, func, select, text

from perf_pipelines.storage.db import create_db_engine, ensure_schema
from perf_pipelines.storage.retention import delete_older_than
from perf_pipelines.storage.schema import metric_snapshots
from perf_pipelines.storage.snapshots import insert_snapshots

TARGETS = 40  # × 240 samples = 9,600 rows per database
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


def measure(label: str, engine: Engine, size: object) -> list[str]:
    ensure_schema(engine)
    empty = size()  # type: ignore[operator]
    templates = simulate_templates.cache  # type: ignore[attr-defined]
    fleet_plan = plan(templates, TARGETS)
    stored = rows(templates, fleet_plan, 0, TARGETS)
    started = time.perf_counter()
    with engine.begin() as connection:
        insert_snapshots(connection, stored)
    insert_s = time.perf_counter() - started
    with engine.connect() as connection:
        count = connection.execute(select(func.count()).select_from(metric_snapshots)).scalar_one()
    used = size() - empty  # type: ignore[operator]
    per_row = used / count
    per_target_day = per_row * ROWS_PER_TARGET_DAY
    started = time.perf_counter()
    deleted = delete_older_than(engine, datetime.now(UTC) + timedelta(days=1)).deleted
    delete_s = time.perf_counter() - started
    return [
        f"| {label} | {count:,} | {per_row:,.0f} | {insert_s / count * 1e6:,.0f} "
        f"| {ROWS_PER_TARGET_DAY} | {per_target_day / 2**20:.2f} "
        f"| {per_target_day * RETENTION_DAYS * 1000 / 2**30:.1f} "
        f"| {deleted['metric_snapshots'] / delete_s:,.0f} |"
    ]


def main() -> None:
    postgres_url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PERF_TEST_POSTGRES_URL")
    print(
        f"# {datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    simulate_templates.cache = simulate_templates()  # type: ignore[attr-defined]
    print(
        "| database | rows stored | bytes per row (with indexes) | insert µs per row "
        "| rows per target-day | MiB per target-day "
        f"| GiB for 1,000 targets × {RETENTION_DAYS} days | retention deletes rows/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "perf.db"
        engine = create_db_engine(f"sqlite:///{path}")
        for line in measure("SQLite", engine, lambda: _bytes_sqlite(engine, path)):
            print(line)
        engine.dispose()
    if postgres_url:
        url, drop = _postgres_database(postgres_url)
        engine = create_db_engine(url)
        try:
            for line in measure("PostgreSQL", engine, lambda: _bytes_postgres(engine)):
                print(line)
        finally:
            engine.dispose()
            drop()


if __name__ == "__main__":
    main()
