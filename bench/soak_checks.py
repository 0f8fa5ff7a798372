"""The soak's verdicts (bench/soak.py): memory and open files flat, no cycle lost, no row missing
or stored twice, every fault visible in the tables; and the Markdown summary of them.

Each check returns its figures and `ok`; the soak passes when every check is ok. Thresholds are
stated here and printed with the figures, so a reader can judge them.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import datetime
from typing import Any

from benchkit import markdown_table
from sqlalchemy import create_engine, text

# Memory is flat when the last 10 minutes' median RSS is within this of the first 10 minutes'
# (the first 10 minutes include warm-up: imports, caches, the first analysis window filling).
RSS_GROWTH_MAX_MIB = 20.0
RSS_GROWTH_MAX_SHARE = 0.10
FDS_GROWTH_MAX = 5
# A failed run is explained by a database restart when it ran inside the outage or this soon
# after it (a run worker that connected before the restart and is told so on its next query).
AFTER_FAULT_S = 90.0
COUNTERS = (
    "generation_tokens_total",
    "requests_finished_total",
    "prompt_tokens_total",
    "preemptions_total",
)
# Roles whose process is restarted by a fault: compared per incarnation, not start to end.
RESTARTED_BY_FAULTS = {"orchestrator", "prometheus", "postgres"}


def _window(samples: list[dict[str, Any]], duration_s: float) -> tuple[float, float]:
    span = min(600.0, duration_s / 4)
    return span, duration_s - span


def check_processes(samples: list[dict[str, Any]], duration_s: float) -> dict[str, Any]:
    first_end, last_start = _window(samples, duration_s)
    series: dict[str, list[tuple[float, float, int, int]]] = defaultdict(list)
    for sample in samples:
        for role, reading in sample["processes"].items():
            series[role].append((sample["t"], reading["rss_mib"], reading["fds"], reading["pid"]))
    rows, ok = {}, True
    for role, points in sorted(series.items()):
        first = [p for p in points if p[0] <= first_end]
        last = [p for p in points if p[0] >= last_start]
        if not first or not last:
            continue
        pids = sorted({p[3] for p in points})
        rss_first = statistics.median(p[1] for p in first)
        rss_last = statistics.median(p[1] for p in last)
        fds_first = statistics.median(p[2] for p in first)
        fds_last = statistics.median(p[2] for p in last)
        after_warmup = [p for p in points if p[0] > first_end]
        slope = _slope([(p[0], p[1]) for p in after_warmup]) * 3600 if len(after_warmup) > 2 else 0
        growth = rss_last - rss_first
        flat_rss = growth <= max(RSS_GROWTH_MAX_MIB, RSS_GROWTH_MAX_SHARE * rss_first)
        flat_fds = fds_last - fds_first <= FDS_GROWTH_MAX
        judged = len(pids) == 1 or role not in RESTARTED_BY_FAULTS
        rows[role] = {
            "pids": pids,
            "rss_first_mib": round(rss_first, 1),
            "rss_last_mib": round(rss_last, 1),
            "rss_max_mib": round(max(p[1] for p in points), 1),
            "rss_slope_mib_per_h": round(slope, 1),
            "fds_first": fds_first,
            "fds_last": fds_last,
            "fds_max": max(p[2] for p in points),
            "flat": (flat_rss and flat_fds) if judged else None,
        }
        ok = ok and (rows[role]["flat"] is not False)
    return {"ok": ok, "processes": rows, "first_window_s": first_end, "last_from_s": last_start}


def _slope(points: list[tuple[float, float]]) -> float:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def _location(run: Any) -> str:
    origin = run.remote_job_origin
    return str(origin.location_name) if origin is not None else "?"


def _failure_reason(instance: Any, run_id: str) -> str:
    from dagster import DagsterEventType

    reasons = []
    for kind in (DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE):
        for record in instance.all_logs(run_id, of_type=kind):
            event = record.dagster_event
            if event is None:
                continue
            error = event.step_failure_data.error if event.is_step_failure else None
            if error is not None:
                reasons.append(error.message.strip().splitlines()[0])
            elif event.message or record.user_message:
                reasons.append(event.message or record.user_message)
    return " | ".join(dict.fromkeys(r[:300] for r in reasons))[:900] or "no failure event"


def collect_runs(instance: Any) -> list[dict[str, Any]]:
    runs = []
    for record in instance.get_run_records():
        run = record.dagster_run
        scheduled = run.tags.get(".dagster/scheduled_execution_time")
        runs.append(
            {
                "run_id": run.run_id,
                "job": run.job_name,
                "location": _location(run),
                "status": run.status.value,
                "schedule": run.tags.get("dagster/schedule_name"),
                "tick": datetime.fromisoformat(scheduled).timestamp() if scheduled else None,
                "start": record.start_time,
                "end": record.end_time,
                "reason": _failure_reason(instance, run.run_id)
                if run.status.value == "FAILURE"
                else None,
            }
        )
    return runs


def _explained(run: dict[str, Any], faults: list[dict[str, Any]]) -> str | None:
    """The fault that explains a failed run: a database restart for any run; a Prometheus
    outage for a cycle of the location that reads Prometheus (the product's contract: when
    Prometheus itself fails, the step fails and stores nothing, docs/prometheus.md)."""
    begin = run["start"] or run["tick"] or 0
    end = run["end"] or begin
    for fault in faults:
        if fault["started"] is None:
            continue
        if fault["kind"] == "prometheus_restart" and run["location"] != "soak_prometheus":
            continue
        if fault["kind"] not in ("database_restart", "prometheus_restart"):
            continue
        if (
            begin <= (fault["ended"] or fault["started"]) + AFTER_FAULT_S
            and end >= fault["started"]
        ):
            return f"{fault['kind']} at {fault['at']} s"
    return None


def check_cycles(
    runs: list[dict[str, Any]],
    t0: float,
    duration_s: float,
    cycle_s: float,
    faults: list[dict[str, Any]],
) -> dict[str, Any]:
    plans = {
        ("perf_pipelines", "optimization_cycle_schedule"): cycle_s,
        ("soak_prometheus", "optimization_cycle_schedule"): cycle_s,
        ("perf_pipelines", "health_check_schedule"): 60.0,
    }
    result, ok = {}, True
    for (location, schedule), period in plans.items():
        ticks = [t0 + k * period for k in range(int(duration_s // period))]
        mine = [r for r in runs if r["location"] == location and r["schedule"] == schedule]
        by_tick: dict[float, list[dict[str, Any]]] = defaultdict(list)
        for run in mine:
            if run["tick"] is not None:
                by_tick[round(run["tick"])].append(run)
        lost = [t - t0 for t in ticks if round(t) not in by_tick]
        twice = [t - t0 for t in ticks if len(by_tick.get(round(t), [])) > 1]
        in_soak = [r for tick in ticks for r in by_tick.get(round(tick), [])]
        statuses = defaultdict(int)
        for run in in_soak:
            statuses[run["status"]] += 1
        failed = []
        for run in sorted(
            (r for r in in_soak if r["status"] != "SUCCESS"), key=lambda r: r["tick"]
        ):
            following = [r for r in in_soak if r["tick"] > run["tick"] and r["status"] == "SUCCESS"]
            next_ok = min((r["tick"] for r in following), default=None)
            failed.append(
                {
                    "tick_s": round(run["tick"] - t0),
                    "status": run["status"],
                    "reason": run["reason"],
                    "explained_by": _explained(run, faults),
                    "next_success_tick_s": None if next_ok is None else round(next_ok - t0),
                    "run_id": run["run_id"],
                }
            )
        unexplained = [f for f in failed if not f["explained_by"]]
        unrecovered = [f for f in failed if f["next_success_tick_s"] is None]
        durations = [r["end"] - r["start"] for r in in_soak if r["start"] and r["end"]]
        lateness = [r["start"] - r["tick"] for r in in_soak if r["start"]]
        entry = {
            "period_s": period,
            "ticks": len(ticks),
            "runs": len(in_soak),
            "statuses": dict(statuses),
            "lost_ticks_s": lost,
            "ticks_with_two_runs_s": twice,
            "failed": failed,
            "run_seconds_median": round(statistics.median(durations), 1) if durations else None,
            "run_seconds_max": round(max(durations), 1) if durations else None,
            "start_after_tick_s_median": round(statistics.median(lateness), 1)
            if lateness
            else None,
            "start_after_tick_s_max": round(max(lateness), 1) if lateness else None,
            "ok": not lost and not twice and not unexplained and not unrecovered,
        }
        result[f"{location}/{schedule}"] = entry
        ok = ok and entry["ok"]
    return {"ok": ok, "schedules": result}


def check_rows(
    connection: Any,
    runs: list[dict[str, Any]],
    samples_per_run: int,
    direct: list[str],
    via_prometheus: list[str],
    t0: float,
    duration_s: float,
) -> dict[str, Any]:
    counts = {
        row[0]: (int(row[1]), int(row[2]), int(row[3]))
        for row in connection.execute(
            text(
                "SELECT run_id, count(*), count(DISTINCT (target, sample_index)), "
                "count(DISTINCT target) FROM metric_snapshots GROUP BY run_id"
            )
        )
    }
    expected = {
        "perf_pipelines": len(direct) * samples_per_run,
        "soak_prometheus": len(via_prometheus) * samples_per_run,
    }
    checked, wrong = 0, []
    for run in runs:
        if run["job"] != "optimization_cycle" or run["tick"] is None:
            continue
        if not t0 <= run["tick"] < t0 + duration_s:
            continue
        rows, distinct, _ = counts.get(run["run_id"], (0, 0, 0))
        want = expected[run["location"]]
        allowed = {want} if run["status"] == "SUCCESS" else {0, want}
        checked += 1
        if rows not in allowed or distinct != rows:
            wrong.append(
                {
                    "run_id": run["run_id"],
                    "location": run["location"],
                    "status": run["status"],
                    "tick_s": round(run["tick"] - t0),
                    "rows": rows,
                    "distinct_target_samples": distinct,
                    "expected": sorted(allowed),
                }
            )
    duplicates = {
        "metric_snapshots": connection.execute(
            text(
                "SELECT count(*) FROM (SELECT 1 FROM metric_snapshots GROUP BY run_id, target, "
                "sample_index, coalesce(model, '') HAVING count(*) > 1) AS d"
            )
        ).scalar_one(),
        "bottleneck_reports": connection.execute(
            text(
                "SELECT count(*) FROM (SELECT 1 FROM bottleneck_reports GROUP BY run_id, target, "
                "coalesce(model, ''), kind HAVING count(*) > 1) AS d"
            )
        ).scalar_one(),
        "open recommendations per (target, parameter)": connection.execute(
            text(
                "SELECT count(*) FROM (SELECT 1 FROM tuning_recommendations WHERE status = 'open' "
                "GROUP BY target, parameter HAVING count(*) > 1) AS d"
            )
        ).scalar_one(),
    }
    crossed = connection.execute(
        text(
            "SELECT count(*) FROM metric_snapshots WHERE run_id NOT LIKE 'backfill%' "
            "AND target = ANY(:prom) AND run_id = ANY(:direct_runs)"
        ),
        {
            "prom": via_prometheus,
            "direct_runs": [r["run_id"] for r in runs if r["location"] == "perf_pipelines"],
        },
    ).scalar_one()
    totals = {
        table: int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
        for table in (
            "metric_snapshots",
            "bottleneck_reports",
            "tuning_recommendations",
            "agent_health",
            "orchestrator_events",
        )
    }
    ok = not wrong and not any(duplicates.values()) and not crossed
    return {
        "ok": ok,
        "runs_checked": checked,
        "expected_rows_per_run": expected,
        "runs_with_wrong_rows": wrong,
        "duplicate_keys": duplicates,
        "rows_of_prometheus_targets_in_direct_runs": crossed,
        "table_totals": totals,
    }


def _counter_resets(
    connection: Any, names: list[str], since: float, cycle_s: float
) -> dict[str, Any]:
    columns = ", ".join(COUNTERS)
    rows = connection.execute(
        text(
            f"SELECT target, run_id, sample_index, extract(epoch FROM collected_at), up, error, "
            f"{columns} FROM metric_snapshots WHERE target = ANY(:names) "
            "AND collected_at BETWEEN to_timestamp(:a) AND to_timestamp(:b) "
            "ORDER BY target, collected_at, sample_index"
        ),
        {"names": names, "a": since - 2 * cycle_s, "b": since + 3 * cycle_s},
    ).all()
    by_target: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_target[row[0]].append(row)
    seen, within_run, down = set(), set(), set()
    errors: dict[str, int] = defaultdict(int)
    for target, points in by_target.items():
        previous = None
        for point in points:
            if not point[4]:
                if point[3] >= since - 1:
                    down.add(target)
                    errors[(point[5] or "")[:80]] += 1
                continue
            if (
                previous is not None
                and point[3] >= since - 1
                and any(
                    a is not None and b is not None and b < a
                    for a, b in zip(previous[6:], point[6:], strict=True)
                )
            ):
                seen.add(target)
                if previous[1] == point[1]:
                    within_run.add(target)
            previous = point
    return {
        "servers": len(names),
        "reset_seen_in_rows": len(seen),
        "reset_within_one_run": len(within_run),
        "down_rows_after_restart": len(down),
        "down_errors": dict(errors),
        "ok": len(seen | down) == len(names),
    }


def _events(connection: Any, a: float, b: float) -> dict[str, Any]:
    rows = connection.execute(
        text(
            "SELECT kind, success, status_code, error, extract(epoch FROM occurred_at) "
            "FROM orchestrator_events WHERE occurred_at BETWEEN to_timestamp(:a) AND "
            "to_timestamp(:b) ORDER BY occurred_at"
        ),
        {"a": a, "b": b},
    ).all()
    return {
        "failures": sum(1 for r in rows if not r[1]),
        "successes": sum(1 for r in rows if r[1]),
        "kinds": sorted({f"{r[0]}:{'ok' if r[1] else 'failed'}" for r in rows}),
        "first_error": next((r[3] for r in rows if not r[1]), None),
    }


def check_faults(
    connection: Any,
    faults: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    samples: list[dict[str, Any]],
    via_prometheus: list[str],
    cycle_s: float,
    t0: float,
) -> dict[str, Any]:
    results, ok = [], True
    for fault in faults:
        start, end = fault["started"], fault["ended"]
        entry: dict[str, Any] = {
            "kind": fault["kind"],
            "at_s": fault["at"],
            "down_s": fault["down_s"],
        }
        if start is None or end is None:
            entry.update(visible=False, evidence="not injected (the soak ended first)")
            results.append(entry)
            ok = False
            continue
        entry["actual_s"] = [round(start - t0, 1), round(end - t0, 1)]
        if fault["kind"] in ("server_restart", "counter_reset"):
            found = _counter_resets(connection, fault["servers"], start, cycle_s)
            entry.update(found)
            entry["visible"] = found["ok"]
        elif fault["kind"] == "database_restart":
            failed = [
                r for r in runs if r["status"] == "FAILURE" and _explained(r, [fault]) is not None
            ]
            health = connection.execute(
                text(
                    "SELECT count(*) FROM agent_health WHERE checked_at BETWEEN "
                    "to_timestamp(:a) AND to_timestamp(:b)"
                ),
                {"a": start, "b": end},
            ).scalar_one()
            sidecar = [
                s["sidecar"].get("/api/v1/health/detailed")
                for s in samples
                if start <= t0 + s["t"] <= end
            ]
            entry.update(
                failed_runs=[
                    {"job": r["job"], "reason": (r["reason"] or "")[:200]} for r in failed
                ],
                agent_health_rows_during=health,
                sidecar_detailed_during=sidecar,
                # In the agent's own tables an outage of its database can only be an absence;
                # what records it is a run that failed with the reason (Dagster's run storage).
                visible=bool(failed),
            )
        elif fault["kind"] == "orchestrator_outage":
            during = _events(connection, start, end + 5)
            after = _events(connection, end, end + 5 * 60)
            entry.update(events_during=during, events_after=after)
            entry["visible"] = during["failures"] > 0 and after["successes"] > 0
        elif fault["kind"] == "prometheus_restart":
            failed = [
                r
                for r in runs
                if r["location"] == "soak_prometheus"
                and r["status"] == "FAILURE"
                and _explained(r, [fault]) is not None
            ]
            stored = connection.execute(
                text("SELECT count(*) FROM metric_snapshots WHERE run_id = ANY(:ids)"),
                {"ids": [r["run_id"] for r in failed]},
            ).scalar_one()
            runs_during = [
                r["status"]
                for r in runs
                if r["location"] == "soak_prometheus" and r["start"] and start <= r["start"] <= end
            ]
            entry.update(
                failed_runs=[(r["reason"] or "")[:200] for r in failed],
                rows_stored_by_them=stored,
                prometheus_runs_started_during=runs_during,
                visible=bool(failed) and stored == 0,
            )
        results.append(entry)
        ok = ok and bool(entry["visible"])
    return {"ok": ok, "faults": results}


def check_all(
    *,
    instance: Any,
    database_url: str,
    t0: float,
    duration_s: float,
    cycle_s: float,
    samples_per_run: int,
    direct: list[str],
    via_prometheus: list[str],
    faults: list[dict[str, Any]],
    process_samples: list[dict[str, Any]],
) -> dict[str, Any]:
    runs = collect_runs(instance)
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = check_rows(
                connection, runs, samples_per_run, direct, via_prometheus, t0, duration_s
            )
            visible = check_faults(
                connection, faults, runs, process_samples, via_prometheus, cycle_s, t0
            )
    finally:
        engine.dispose()
    loads = [s["load"][0] for s in process_samples]
    checks = {
        "processes": check_processes(process_samples, duration_s),
        "cycles": check_cycles(runs, t0, duration_s, cycle_s, faults),
        "rows": rows,
        "faults": visible,
    }
    return {
        "passed": all(c["ok"] for c in checks.values()),
        "checks": checks,
        "load_average_1m": {
            "mean": round(statistics.fmean(loads), 2) if loads else None,
            "max": max(loads, default=None),
            "min": min(loads, default=None),
        },
        "runs": runs,
    }


def _verdict(ok: bool | None) -> str:
    return {True: "yes", False: "**NO**", None: "n/a (restarted by a fault)"}[ok]


def summary_markdown(results: dict[str, Any]) -> str:
    setup, checks = results["setup"], results["checks"]
    lines = [
        f"# Soak {setup['started']} — {'PASSED' if results['passed'] else 'FAILED'}",
        "",
        f"Commit `{setup['commit']}`{' (dirty tree)' if setup['dirty'] else ''}; seed "
        f"{setup['seed']}; {setup['minutes']:g} min; {setup['servers']} simulated servers "
        f"({setup['servers'] - setup['prometheus_servers']} scraped directly, "
        f"{setup['prometheus_servers']} through Prometheus); cycle `{setup['cycle_cron']}`, "
        f"{setup['samples']} samples {setup['interval_s']:g} s apart; simulator step "
        f"{setup.get('simulator_tick_s', 2)} s; heartbeat every "
        f"{setup['heartbeat_s']:g} s.",
        f"Machine: {results['machine']['cpu']}, {results['machine']['memory']}, "
        f"{results['machine']['os']}, Python {results['machine']['python']}. Load average (1 min) "
        f"over the soak: mean {results['load_average_1m']['mean']}, min "
        f"{results['load_average_1m']['min']}, max {results['load_average_1m']['max']}.",
        "",
        "## Fault schedule",
        "",
        markdown_table(
            ["at (s)", "fault", "down (s)", "servers", "injected (s after start)", "note"],
            [
                [
                    f["at"],
                    f["kind"],
                    f["down_s"] or "–",
                    len(f["servers"]) or "–",
                    "–"
                    if f["started"] is None
                    else f"{f['started'] - results['t0']:.0f}–{f['ended'] - results['t0']:.0f}",
                    f["note"] or "",
                ]
                for f in results["schedule"]
            ],
        ),
        "",
        "## Memory and open files",
        "",
        markdown_table(
            [
                "process",
                "RSS first 10 min (MiB)",
                "RSS last 10 min",
                "max",
                "slope after warm-up",
                "fds first",
                "fds last",
                "fds max",
                "flat",
            ],
            [
                [
                    role,
                    p["rss_first_mib"],
                    p["rss_last_mib"],
                    p["rss_max_mib"],
                    f"{p['rss_slope_mib_per_h']:+.1f} MiB/h",
                    p["fds_first"],
                    p["fds_last"],
                    p["fds_max"],
                    _verdict(p["flat"]),
                ]
                for role, p in checks["processes"]["processes"].items()
            ],
        ),
        "",
        "## Cycles",
        "",
        markdown_table(
            [
                "schedule",
                "ticks",
                "runs",
                "succeeded",
                "failed",
                "lost",
                "run s (median / max)",
                "start after tick s (median / max)",
                "ok",
            ],
            [
                [
                    name,
                    s["ticks"],
                    s["runs"],
                    s["statuses"].get("SUCCESS", 0),
                    s["statuses"].get("FAILURE", 0),
                    len(s["lost_ticks_s"]),
                    f"{s['run_seconds_median']} / {s['run_seconds_max']}",
                    f"{s['start_after_tick_s_median']} / {s['start_after_tick_s_max']}",
                    _verdict(s["ok"]),
                ]
                for name, s in checks["cycles"]["schedules"].items()
            ],
        ),
        "",
    ]
    for name, s in checks["cycles"]["schedules"].items():
        for failed in s["failed"]:
            lines.append(
                f"- {name} tick +{failed['tick_s']} s {failed['status']}: {failed['reason']} — "
                f"explained by {failed['explained_by'] or '**nothing**'}; next success at "
                f"+{failed['next_success_tick_s']} s"
            )
    rows = checks["rows"]
    lines += [
        "",
        "## Rows",
        "",
        f"- optimization_cycle runs checked: {rows['runs_checked']}; expected rows per run "
        f"{rows['expected_rows_per_run']}; runs with wrong counts: "
        f"{len(rows['runs_with_wrong_rows'])} {rows['runs_with_wrong_rows'][:5] or ''}",
        f"- duplicate keys: {rows['duplicate_keys']}",
        f"- table totals at the end: {rows['table_totals']}",
        "",
        "## Faults in the tables",
        "",
    ]
    for fault in checks["faults"]["faults"]:
        evidence = {k: v for k, v in fault.items() if k not in ("kind", "at_s", "down_s")}
        lines.append(
            f"- {fault['kind']} at {fault['at_s']} s: visible {_verdict(fault['visible'])} — "
            f"`{evidence}`"
        )
    lines.append("")
    return "\n".join(lines)
