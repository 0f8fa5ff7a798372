"""Cost of one analysis cycle over a fleet: an hour of 15-second samples per target, through
`load_snapshots` → `window_stats` → `detect` → `recommend`, as `dagster_defs/analysis.py` runs it.

The rows are the simulator's own: fifteen servers (all four engines; KV pressure, queue
saturation, TTFT and ITL breaches, idle and healthy servers; four restarted mid-window, so their
counters reset) run for an hour of virtual time, every scrape rendered in the engine's exposition
format and mapped by the collector's parser and adapters. Target i replays server i mod 15 under
its own name; 1 % of targets never answer and 5 % miss four scrapes each.

(a) the analysis of a `load_snapshots`-shaped DataFrame at 10 … 10,000 targets against the goal;
(b) `load_snapshots` of 1,000 targets from a SQLite file, and from PostgreSQL when a URL is given,
against the bare driver running the same query. Usage:
python bench/bench_analysis.py [--quick] [postgresql+psycopg://…]
(default: $PERF_TEST_POSTGRES_URL)
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from benchkit import BenchResult, SummaryRow, fresh_postgres_database, markdown_table, report
from sqlalchemy import JSON, Engine, insert, select

from perf_lab.simulator import scenarios
from perf_lab.simulator.fleet import Fleet, ServerSpec, Unavailable
from perf_lab.simulator.model import Workload
from perf_pipelines.analysis.detection import detect
from perf_pipelines.analysis.window import window_stats
from perf_pipelines.engines import snapshots_from_text
from perf_pipelines.recommendations.rules import recommend
from perf_pipelines.storage.db import create_db_engine, ensure_schema
from perf_pipelines.storage.schema import metric_snapshots
from perf_pipelines.storage.snapshots import SnapshotRow, insert_snapshots, load_snapshots
from perf_pipelines.targets import Target, parse_targets

SAMPLES = 240  # one hour of 15-second scrapes
STEP_S = 15.0
SIZES = (10, 100, 1_000, 10_000)
QUICK_SIZES = (10, 100)
GOAL_TARGETS, GOAL_S = 1_000, 2.0
LOAD_TARGETS, INSERTED = 1_000, 100
NEVER_ANSWER, SOMETIMES_DOWN = 0.01, 0.05  # shares of targets
RESTART_AT = 160  # sample at which the restarted servers are down, counters from zero after
T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
SIM_START = T0.timestamp() - 600.0  # ten minutes of warm-up before the window


def _busy_tgi_and_llamacpp() -> list[ServerSpec]:
    """TGI and llama.cpp under more load than they can take (the scenarios' are healthy)."""
    return [
        ServerSpec(
            "tgi-llama8b-busy",
            "tgi",
            scenarios.LLAMA_8B,
            "L4",
            settings={"max_concurrent_requests": 128, "max_batch_prefill_tokens": 4096},
            workload=Workload(rate_rps=3, prompt_tokens_mean=1500, output_tokens_mean=400),
            slo={"ttft_p95_ms": 2000, "itl_p95_ms": 60},
        ),
        ServerSpec(
            "llamacpp-llama8b-busy",
            "llamacpp",
            scenarios.LLAMA_8B,
            "A10G",
            settings={"ctx_size": 16384, "parallel": 2, "model_quant": "q8_0"},
            workload=Workload(rate_rps=0.6, prompt_tokens_mean=600, output_tokens_mean=300),
            slo={"ttft_p95_ms": 3000, "itl_p95_ms": 50},
        ),
    ]


def _template_specs() -> tuple[list[ServerSpec], set[str]]:
    specs = [
        *scenarios.mixed(),
        *scenarios.ttft_breach(),
        *scenarios.itl_breach(),
        *scenarios.healthy(),
        *_busy_tgi_and_llamacpp(),
    ]
    restarted = {
        "vllm-llama70b-kv",
        "sglang-qwen7b-a100",
        "tgi-llama8b-a10g",
        "llamacpp-llama8b-l4",
    }
    specs += [
        replace(spec, name=f"{spec.name}-restart") for spec in specs if spec.name in restarted
    ]
    return specs, {f"{name}-restart" for name in restarted}


@dataclass
class Template:
    target: Target
    rows: list[SnapshotRow]  # one per scrape, in order (each server serves one model)


def simulate_templates() -> list[Template]:
    """Run every template server through the warm-up and the window; one row per scrape."""
    specs, restarted = _template_specs()
    fleet = Fleet(specs, virtual=True, tick=2.0, start=SIM_START)
    fleet.advance(T0.timestamp() - SIM_START)
    targets = {
        t.name: t for t in parse_targets(scenarios.targets_for(specs, "http://10.0.0.1:9400"))
    }
    rows: dict[str, list[SnapshotRow]] = {spec.name: [] for spec in specs}
    for sample in range(SAMPLES):
        if sample == RESTART_AT:
            fleet.advance(STEP_S - 3.0)
            for name in restarted:
                fleet.apply_settings(name, {})  # same flags: a restart, counters from zero
            fleet.advance(3.0)
        elif sample:
            fleet.advance(STEP_S)
        at = T0 + timedelta(seconds=STEP_S * sample)
        for spec in specs:
            target = targets[spec.name]
            common: dict[str, Any] = {
                "run_id": "template",
                "sample_index": sample,
                "target": spec.name,
                "engine": spec.engine,
                "collected_at": at,
                "scrape_ms": 4.0,
            }
            try:
                body = fleet.exposition(spec.name)
            except Unavailable:
                rows[spec.name].append(
                    SnapshotRow(
                        **common,
                        model=target.model,
                        up=False,
                        error="HTTP 503 Service Unavailable",
                        body_bytes=None,
                        snapshot=None,
                    )
                )
                continue
            _, snapshots = snapshots_from_text(body, target.engine_hint)
            for snapshot in snapshots:
                snapshot.model = snapshot.model or target.model
                rows[spec.name].append(
                    SnapshotRow(
                        **common,
                        model=snapshot.model,
                        up=True,
                        error=None,
                        body_bytes=len(body),
                        snapshot=snapshot,
                    )
                )
    templates = [Template(targets[spec.name], rows[spec.name]) for spec in specs]
    assert all(len(t.rows) == SAMPLES for t in templates)
    return templates


@dataclass
class Plan:
    """Which template each target replays, and how it fails."""

    targets: list[Target]
    template: np.ndarray  # index into the templates, per target
    down: np.ndarray  # (targets, SAMPLES) bool: the scrape failed
    errors: list[str]  # per target, the error of its failed scrapes


def plan(templates: list[Template], count: int) -> Plan:
    random = np.random.default_rng(42)
    chosen = np.arange(count) % len(templates)
    draw = random.random(count)
    down = np.zeros((count, SAMPLES), dtype=bool)
    down[draw < NEVER_ANSWER] = True
    flaky = np.flatnonzero((draw >= NEVER_ANSWER) & (draw < NEVER_ANSWER + SOMETIMES_DOWN))
    for index in flaky:
        down[index, random.choice(SAMPLES, size=4, replace=False)] = True
    targets = [
        templates[t].target.model_copy(update={"name": f"{templates[t].target.name}-{i:05d}"})
        for i, t in enumerate(chosen)
    ]
    errors = [
        "connection failed: [Errno 111] Connection refused"
        if d < NEVER_ANSWER
        else "timeout after 5s"
        for d in draw
    ]
    return Plan(targets, chosen, down, errors)


def _replayed(row: SnapshotRow, plan: Plan, index: int) -> SnapshotRow:
    """A template row as target `index` stores it (own name, own time, own failures)."""
    target, sample = plan.targets[index], row.sample_index
    common: dict[str, Any] = {
        "run_id": f"run-{sample // 4:03d}",
        "sample_index": sample % 4,
        "target": target.name,
        "collected_at": row.collected_at + timedelta(milliseconds=3 * (index % 1000)),
    }
    if not plan.down[index, sample]:
        return replace(row, **common)
    return replace(
        row,
        **common,
        model=target.model,
        up=False,
        error=plan.errors[index],
        body_bytes=None,
        snapshot=None,
    )


def rows(templates: list[Template], plan: Plan, first: int, last: int) -> list[SnapshotRow]:
    """The rows of targets [first, last), as the collector hands them to storage."""
    return [
        _replayed(row, plan, index)
        for index in range(first, last)
        for row in templates[plan.template[index]].rows
    ]


_KEEP_WHEN_DOWN = ("run_id", "sample_index", "target", "engine", "collected_at", "scrape_ms")


def frame(templates: list[Template], plan: Plan) -> pd.DataFrame:
    """What `load_snapshots` returns for the plan's rows, built column-wise (10,000 targets of
    dicts would not fit in memory comfortably)."""
    base = pd.DataFrame([row.as_record() for template in templates for row in template.rows])
    starts = np.arange(len(templates)) * SAMPLES
    count = len(plan.targets)
    take = (starts[plan.template][:, None] + np.arange(SAMPLES)[None, :]).ravel()
    data = base.take(take).reset_index(drop=True)
    sample = np.tile(np.arange(SAMPLES), count)
    data["run_id"] = np.char.add("run-", np.char.zfill((sample // 4).astype(str), 3))
    data["sample_index"] = sample % 4
    data["target"] = np.repeat([t.name for t in plan.targets], SAMPLES)
    data["collected_at"] = pd.to_datetime(data["collected_at"], utc=True) + pd.to_timedelta(
        np.repeat(3 * (np.arange(count) % 1000), SAMPLES), unit="ms"
    )
    down = plan.down.ravel()
    data["body_bytes"] = data["body_bytes"].astype(float)  # NULLs come back as NaN
    for column in data.columns:
        if column not in (*_KEEP_WHEN_DOWN, "up"):
            data.loc[down, column] = np.nan if data[column].dtype.kind == "f" else None
    data.loc[down, "model"] = np.repeat([t.model for t in plan.targets], SAMPLES)[down]
    data.loc[down, "up"] = False
    data.loc[down, "error"] = np.repeat(plan.errors, SAMPLES)[down]
    data["up"] = data["up"].astype(bool)
    data.insert(0, "id", np.arange(1, len(data) + 1))
    return data.sort_values(["target", "collected_at"], kind="stable").reset_index(drop=True)


def _window() -> tuple[datetime, datetime]:
    return T0 - timedelta(seconds=1), T0 + timedelta(seconds=STEP_S * SAMPLES)


def _median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


@dataclass
class AnalysisRun:
    window_s: float
    detect_s: float
    recommend_s: float
    stats: int
    reports: Counter[str]
    recommendations: int

    @property
    def total_s(self) -> float:
        return self.window_s + self.detect_s + self.recommend_s


def analyse(frame: pd.DataFrame, targets: dict[str, Target], repeats: int) -> AnalysisRun:
    start, end = _window()
    window_s, stats = _median_time(lambda: window_stats(frame, targets, start, end), repeats)
    assert isinstance(stats, list)
    detect_s, detection = _median_time(lambda: detect(stats, targets), repeats)
    reports = detection.reports  # type: ignore[attr-defined]
    recommend_s, recommendations = _median_time(lambda: recommend(stats, reports, targets), repeats)
    assert isinstance(recommendations, list)
    return AnalysisRun(
        window_s,
        detect_s,
        recommend_s,
        len(stats),
        Counter(r.kind for r in reports),
        len(recommendations),
    )


def fill(
    engine: Engine, templates: list[Template], load_targets: int
) -> tuple[dict[str, Target], float]:
    """Store `load_targets` targets' rows: the first INSERTED through `insert_snapshots`, the rest
    copied from those by the database under new names (`insert_snapshots` would take minutes).

    Returns the targets and the µs per row `insert_snapshots` took.
    """
    ensure_schema(engine)
    first = plan(templates, INSERTED)
    originals = [t.name for t in first.targets]
    columns = [c for c in metric_snapshots.columns if c.name != "id"]
    with engine.begin() as connection:
        started = time.perf_counter()
        inserted = insert_snapshots(connection, rows(templates, first, 0, INSERTED))
        insert_us = (time.perf_counter() - started) / inserted * 1e6
        for copy in range(1, load_targets // INSERTED):
            renamed = [
                (c + f"-copy{copy}").label("target") if c.name == "target" else c for c in columns
            ]
            copied = select(*renamed).where(metric_snapshots.c.target.in_(originals))
            connection.execute(
                insert(metric_snapshots).from_select([c.name for c in columns], copied)
            )
    targets = {
        f"{t.name}-copy{copy}": t.model_copy(update={"name": f"{t.name}-copy{copy}"})
        for copy in range(1, load_targets // INSERTED)
        for t in first.targets
    }
    return {t.name: t for t in first.targets} | targets, insert_us


@dataclass
class LoadRun:
    rows: int
    insert_us: float
    fetch_s: float
    decoded_s: float
    raw_s: float
    analysis_s: float

    def cells(self, database: str) -> list[object]:
        return [
            database,
            f"{self.rows:,}",
            f"{self.insert_us:.0f}",
            f"{self.fetch_s:.2f}",
            f"{self.decoded_s:.2f}",
            f"{self.decoded_s / self.fetch_s:.1f}×",
            f"{self.raw_s:.2f}",
            f"{self.raw_s / self.fetch_s:.1f}×",
            f"**{self.raw_s + self.analysis_s:.2f}**",
        ]


def measure_load(engine: Engine, templates: list[Template], load_targets: int) -> LoadRun:
    """`load_snapshots` of `load_targets` targets × SAMPLES against the bare driver running the
    same query (the floor: no type conversion, no JSON decoding, no DataFrame), then the whole
    cycle as the analysis assets run it (histograms decoded only where the analysis reads them).
    """
    targets, insert_us = fill(engine, templates, load_targets)
    start, end = _window()
    names = list(targets)

    def load(decode: bool) -> pd.DataFrame:
        with engine.connect() as connection:
            return load_snapshots(connection, start, end, targets=names, decode_histograms=decode)

    json_as_text = ", ".join(
        f"CAST({c.name} AS TEXT)" if isinstance(c.type, JSON) else c.name
        for c in metric_snapshots.columns
    )

    def fetch() -> int:
        with engine.connect() as connection:
            cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
            cursor.execute(
                f"SELECT {json_as_text} FROM metric_snapshots ORDER BY target, collected_at"
            )
            return len(cursor.fetchall())

    fetch_s, fetched = _median_time(fetch, 3)
    decoded_s, decoded = _median_time(lambda: load(True), 1)  # slow: once
    raw_s, raw = _median_time(lambda: load(False), 3)
    assert isinstance(decoded, pd.DataFrame) and isinstance(raw, pd.DataFrame)
    assert len(decoded) == len(raw) == fetched == len(targets) * SAMPLES, (len(raw), fetched)
    analysis = analyse(raw, targets, 3)
    return LoadRun(fetched, insert_us, fetch_s, decoded_s, raw_s, analysis.total_s)


def main() -> None:
    quick = "--quick" in sys.argv
    arguments = [arg for arg in sys.argv[1:] if arg != "--quick"]
    postgres_url = arguments[0] if arguments else os.environ.get("PERF_TEST_POSTGRES_URL")
    sizes = QUICK_SIZES if quick else SIZES
    load_targets = INSERTED if quick else LOAD_TARGETS
    started = time.perf_counter()
    templates = simulate_templates()
    simulated_s = time.perf_counter() - started
    analysis_rows: list[list[object]] = []
    summary: list[SummaryRow] = []
    for size in sizes:
        targets = plan(templates, size)
        data = frame(templates, targets)
        run = analyse(data, {t.name: t for t in targets.targets}, 5 if size <= 1_000 else 1)
        analysis_rows.append(
            [
                f"{size:,}",
                f"{len(data):,}",
                f"{run.window_s:.3f}",
                f"{run.detect_s:.3f}",
                f"{run.recommend_s:.3f}",
                f"**{run.total_s:.3f}**",
                f"{run.total_s / (size * SAMPLES) * 1e6:.1f}",
                f"{sum(run.reports.values()):,}",
                f"{run.recommendations:,}",
            ]
        )
        if size == GOAL_TARGETS:
            summary.append(
                SummaryRow(
                    what="analysis, 1,000 targets × 1 h of 15 s samples (detect + recommend)",
                    ours=f"{run.total_s:.2f} s",
                    peer="—",
                    ratio="—",
                    goal="≤ 2 s",
                    met=run.total_s <= GOAL_S,
                )
            )
        if size == max(sizes) and size > GOAL_TARGETS:
            summary.append(
                SummaryRow(
                    what=f"analysis, {size:,} targets × 1 h",
                    ours=f"{run.total_s:.2f} s",
                    peer="—",
                    ratio="—",
                    goal="—",
                    met=None,
                )
            )
    load_rows = []
    with tempfile.TemporaryDirectory() as folder:
        engine = create_db_engine(f"sqlite:///{Path(folder) / 'bench.db'}")
        loads = {"SQLite": measure_load(engine, templates, load_targets)}
        engine.dispose()
    if postgres_url:
        url, drop = fresh_postgres_database(postgres_url)
        try:
            engine = create_db_engine(url)
            loads["PostgreSQL"] = measure_load(engine, templates, load_targets)
            engine.dispose()
        finally:
            drop()
    for database, load in loads.items():
        load_rows.append(load.cells(database))
        summary.append(
            SummaryRow(
                what=f"loading that hour of {load_targets:,} targets from {database}",
                ours=f"{load.raw_s:.2f} s",
                peer=f"bare driver fetch: {load.fetch_s:.2f} s",
                ratio=f"{load.raw_s / load.fetch_s:.1f}×",
                goal="—",
                met=None,
            )
        )
    table = (
        f"Rows simulated ({len(templates)} servers × {SAMPLES} scrapes, rendered, parsed, "
        f"mapped) in {simulated_s:.1f} s.\n\n"
        + markdown_table(
            [
                "targets",
                "rows",
                "window_stats (s)",
                "detect (s)",
                "recommend (s)",
                "total (s)",
                "µs per target-sample",
                "reports",
                "recommendations",
            ],
            analysis_rows,
        )
        + "\n\n"
        + markdown_table(
            [
                "database",
                "rows",
                "insert_snapshots µs/row",
                "driver fetch (s)",
                "load_snapshots (s)",
                "ratio",
                "`decode_histograms=False` (s)",
                "ratio",
                "+ analysis (s)",
            ],
            load_rows,
        )
    )
    report(
        BenchResult(
            name="analysis",
            command="python bench/bench_analysis.py",
            table=table,
            summary=summary,
            versions={"pandas": pd.__version__, "numpy": np.__version__},
        )
    )


if __name__ == "__main__":
    main()
