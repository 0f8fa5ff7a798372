"""The coverage matrix of docs/detection.md §3, cell by cell: engine × bottleneck kind.

Every cell is a window built from that engine's own `/metrics` text (the metric names the cell
names), parsed by the engine's adapter, then judged; a "not judged" cell must give no report of
its kind and say why. One test per engine then runs the real simulator over HTTP on loopback.
`test_the_doc_matrix_is_this_matrix` keeps the page and this file in step.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from perf_lab.simulator.fleet import Fleet, ServerSpec
from perf_lab.simulator.http import run_fleet_in_thread
from perf_lab.simulator.model import Workload
from perf_lab.simulator.scenarios import LLAMA_8B, kv_pressure, mixed, targets_for, underutilized
from perf_pipelines.analysis.detection import Detection, detect, is_sustained
from perf_pipelines.analysis.window import window_stats
from perf_pipelines.engines import Engine, snapshots_from_text
from perf_pipelines.storage.snapshots import SnapshotRow
from perf_pipelines.targets import Target, parse_targets
from tests.support.windows import T0, scrape_fleet, snapshot_frame, window_bounds

DOC = Path(__file__).parents[2] / "docs" / "detection.md"
ENGINES = ("vLLM V0", "vLLM V1", "SGLang", "TGI", "llama.cpp")
KINDS = (
    "kv_cache_pressure",
    "preemption",
    "queue_saturation",
    "ttft/itl breach, empty queue",
    "underutilization",
    "target_down",
)
DOWN = "failed scrape (`up` = false): `target_down`, critical when no scrape succeeded"


@dataclass(frozen=True)
class Cell:
    text: str  # as in the doc
    reports: tuple[str, ...] = ()  # sustained reports the window must give
    not_judged: str | None = None  # a reason that must be listed
    judged: bool = True


def _nj(reason: str, why: str, reports: tuple[str, ...] = ()) -> Cell:
    return Cell(f"not judged: {why}", reports, reason, judged=False)


MATRIX: dict[tuple[str, str], Cell] = {
    ("vLLM V0", "kv_cache_pressure"): Cell(
        "`vllm:gpu_cache_usage_perc` ≥ 0.90, sustained; `vllm:num_preemptions_total` as evidence",
        ("kv_cache_pressure",),
    ),
    ("vLLM V0", "preemption"): Cell(
        "`vllm:num_preemptions_total` rising, sustained, without `vllm:gpu_cache_usage_perc` "
        "sustained ≥ 0.90",
        ("preemption",),
    ),
    ("vLLM V0", "queue_saturation"): Cell(
        "`vllm:num_requests_running` at `max_num_seqs` (targets file, else the running plateau) "
        "with `vllm:num_requests_waiting` > 0",
        ("queue_saturation",),
    ),
    ("vLLM V0", "ttft/itl breach, empty queue"): Cell(
        "`vllm:time_to_first_token_seconds`, `vllm:time_per_output_token_seconds` p95 vs SLO; "
        "queue from `vllm:request_queue_time_seconds`, `vllm:num_requests_waiting`",
        ("ttft_slo_breach", "itl_slo_breach"),
    ),
    ("vLLM V0", "underutilization"): Cell(
        "`vllm:num_requests_running` ≤ 2 on average, `vllm:num_requests_waiting` = 0, "
        "`vllm:gpu_cache_usage_perc` < 0.30 (cap not exported: judged without it)",
        ("underutilization",),
    ),
    ("vLLM V1", "kv_cache_pressure"): Cell(
        "`vllm:kv_cache_usage_perc` ≥ 0.90, sustained; `vllm:num_preemptions_total` as evidence",
        ("kv_cache_pressure",),
    ),
    ("vLLM V1", "preemption"): Cell(
        "`vllm:num_preemptions_total` rising, sustained, without `vllm:kv_cache_usage_perc` "
        "sustained ≥ 0.90",
        ("preemption",),
    ),
    ("vLLM V1", "queue_saturation"): Cell(
        "`vllm:num_requests_running` at `max_num_seqs` (targets file, else the running plateau) "
        "with `vllm:num_requests_waiting` > 0",
        ("queue_saturation",),
    ),
    ("vLLM V1", "ttft/itl breach, empty queue"): Cell(
        "`vllm:time_to_first_token_seconds`, `vllm:inter_token_latency_seconds` p95 vs SLO; "
        "queue from `vllm:request_queue_time_seconds`, `vllm:num_requests_waiting`",
        ("ttft_slo_breach", "itl_slo_breach"),
    ),
    ("vLLM V1", "underutilization"): Cell(
        "`vllm:num_requests_running` ≤ 2 on average, `vllm:num_requests_waiting` = 0, "
        "`vllm:kv_cache_usage_perc` < 0.30 (cap not exported: judged without it)",
        ("underutilization",),
    ),
    ("SGLang", "kv_cache_pressure"): Cell(
        "`sglang:token_usage` ≥ 0.90, sustained; `sglang:num_retracted_requests_total` as evidence",
        ("kv_cache_pressure",),
    ),
    ("SGLang", "preemption"): Cell(
        "`sglang:num_retracted_requests_total` rising, sustained, without `sglang:token_usage` "
        "sustained ≥ 0.90 (0.5+; 0.4.x has no counter: not judged there)",
        ("preemption",),
    ),
    ("SGLang", "queue_saturation"): Cell(
        "`sglang:num_running_reqs` at `max_running_requests` (targets file, else the running "
        "plateau) with `sglang:num_queue_reqs` > 0",
        ("queue_saturation",),
    ),
    ("SGLang", "ttft/itl breach, empty queue"): Cell(
        "`sglang:time_to_first_token_seconds`, `sglang:inter_token_latency_seconds` p95 vs SLO; "
        "queue from `sglang:queue_time_seconds` (0.5+), `sglang:num_queue_reqs`",
        ("ttft_slo_breach", "itl_slo_breach"),
    ),
    ("SGLang", "underutilization"): Cell(
        "`sglang:num_running_reqs` ≤ 2 on average, `sglang:num_queue_reqs` = 0, "
        "`sglang:token_usage` < 0.30 (cap not exported: judged without it)",
        ("underutilization",),
    ),
    ("TGI", "kv_cache_pressure"): Cell(
        "proxy: `tgi_batch_current_max_tokens` / `tgi_batch_max_total_tokens` ≥ 0.90 (reserved, "
        "not used, tokens; beside a queue at the token budget it is the same budget, said in "
        "`evidence.same_budget_as`)",
        ("kv_cache_pressure",),
        "judged on a proxy",
    ),
    ("TGI", "preemption"): _nj(
        "never preempts",
        "no preemption counter; TGI reserves each request's full length at admission and never "
        "preempts",
    ),
    ("TGI", "queue_saturation"): Cell(
        "`tgi_queue_size` > 0 while `tgi_batch_current_max_tokens` leaves less than one "
        "request's reservation of `tgi_batch_max_total_tokens` (the token budget), or "
        "`tgi_batch_current_size` at `max_batch_size`",
        ("queue_saturation",),
    ),
    ("TGI", "ttft/itl breach, empty queue"): Cell(
        'ITL: `tgi_batch_forward_duration{method="decode"}` p95 vs SLO, queue from '
        "`tgi_request_queue_duration`, `tgi_queue_size`; TTFT not judged (no TTFT histogram)",
        ("itl_slo_breach",),
        "ttft_slo_breach: no TTFT histogram",
    ),
    ("TGI", "underutilization"): Cell(
        "`tgi_batch_current_size` ≤ 2 on average, `tgi_queue_size` = 0, reservation ratio "
        "< 0.30 (no batch cap by default: judged without it)",
        ("underutilization",),
    ),
    ("llama.cpp", "kv_cache_pressure"): _nj(
        "exports no KV-cache usage gauge",
        "current builds export no KV gauge (`llamacpp:kv_cache_usage_ratio` was removed in "
        "mid-2025; used where present)",
    ),
    ("llama.cpp", "preemption"): _nj(
        "exports no preemption counter", "no preemption counter (a slot keeps its context)"
    ),
    ("llama.cpp", "queue_saturation"): Cell(
        "`llamacpp:requests_processing` at `parallel` (targets file, else the running plateau) "
        "with `llamacpp:requests_deferred` > 0",
        ("queue_saturation",),
    ),
    ("llama.cpp", "ttft/itl breach, empty queue"): _nj(
        "no TTFT histogram", "no latency histograms at all"
    ),
    ("llama.cpp", "underutilization"): Cell(
        "`llamacpp:requests_processing` ≤ 10 % of `parallel` (default 4 slots) and ≤ 2 on "
        "average, `llamacpp:requests_deferred` = 0",
        ("underutilization",),
    ),
    **{(engine, "target_down"): Cell(DOWN, ("target_down",)) for engine in ENGINES},
}


# --- each engine's /metrics text --------------------------------------------------------------


@dataclass
class State:
    running: float = 8.0
    waiting: float = 0.0
    kv: float = 0.5
    preemptions: float = 0.0
    finished: float = 0.0
    slow: float = 0.0  # observations in the slow latency buckets (TTFT ≈ 1.5 s, ITL ≈ 150 ms)
    reserved: float = 8_000.0  # TGI: tokens the running batch reserves


BUDGET = 32_000.0  # TGI --max-batch-total-tokens
LATENCY = (0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def _histogram(name: str, labels: str, count: float, at: float) -> list[str]:
    """`count` observations just under `at`; a queue histogram (`at` = 0) keeps them ≤ 10 ms."""
    sep = "," if labels else ""
    lines = [f"# TYPE {name} histogram"]
    for bound in LATENCY:
        lines.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {count if bound >= at else 0}')
    lines += [
        f'{name}_bucket{{{labels}{sep}le="+Inf"}} {count}',
        f"{name}_sum{{{labels}}} {count * at}" if labels else f"{name}_sum {count * at}",
        f"{name}_count{{{labels}}} {count}" if labels else f"{name}_count {count}",
    ]
    return lines


def _metric(kind: str, name: str, labels: str, value: float) -> list[str]:
    return [f"# TYPE {name} {kind}", f"{name}{{{labels}}} {value}" if labels else f"{name} {value}"]


def _vllm(s: State, v0: bool) -> str:
    labels = 'model_name="m"' if v0 else 'engine="0",model_name="m"'
    kv = "vllm:gpu_cache_usage_perc" if v0 else "vllm:kv_cache_usage_perc"
    itl = "vllm:time_per_output_token_seconds" if v0 else "vllm:inter_token_latency_seconds"
    lines = [
        *_metric("gauge", "vllm:num_requests_running", labels, s.running),
        *_metric("gauge", "vllm:num_requests_waiting", labels, s.waiting),
        *_metric("gauge", kv, labels, s.kv),
        *_metric("counter", "vllm:num_preemptions_total", labels, s.preemptions),
        *_metric("counter", "vllm:prompt_tokens_total", labels, s.finished * 500),
        *_metric("counter", "vllm:generation_tokens_total", labels, s.finished * 200),
        *_metric(
            "counter", "vllm:request_success_total", labels + ',finished_reason="stop"', s.finished
        ),
        *_histogram("vllm:time_to_first_token_seconds", labels, s.slow, 2.0),
        *_histogram(itl, labels, s.slow * 20, 0.2),
        *_histogram("vllm:request_queue_time_seconds", labels, s.slow, 0.01),
    ]
    return "\n".join(lines) + "\n"


def _sglang(s: State) -> str:
    labels = 'model_name="m",tp_rank="0"'
    lines = [
        *_metric("gauge", "sglang:num_running_reqs", labels, s.running),
        *_metric("gauge", "sglang:num_queue_reqs", labels, s.waiting),
        *_metric("gauge", "sglang:token_usage", labels, round(s.kv, 2)),
        *_metric("gauge", "sglang:max_total_num_tokens", labels, 400_000),
        *_metric("counter", "sglang:num_retracted_requests_total", labels, s.preemptions),
        *_metric("counter", "sglang:num_requests_total", labels, s.finished),
        *_metric("counter", "sglang:prompt_tokens_total", labels, s.finished * 500),
        *_metric("counter", "sglang:generation_tokens_total", labels, s.finished * 200),
        *_histogram("sglang:time_to_first_token_seconds", labels, s.slow, 2.0),
        *_histogram("sglang:inter_token_latency_seconds", labels, s.slow * 20, 0.2),
        *_histogram("sglang:queue_time_seconds", labels, s.slow, 0.01),
    ]
    return "\n".join(lines) + "\n"


def _tgi(s: State) -> str:
    lines = [
        *_metric("gauge", "tgi_batch_current_size", "", s.running),
        *_metric("gauge", "tgi_queue_size", "", s.waiting),
        *_metric("gauge", "tgi_batch_current_max_tokens", "", s.reserved),
        *_metric("gauge", "tgi_batch_max_total_tokens", "", BUDGET),
        *_metric("counter", "tgi_request_success", "", s.finished),
        *_histogram("tgi_batch_forward_duration", 'method="decode"', s.slow * 20, 0.2),
        *_histogram("tgi_request_queue_duration", "", s.slow, 0.01),
    ]
    return "\n".join(lines) + "\n"


def _llamacpp(s: State) -> str:
    lines = [
        *_metric("gauge", "llamacpp:requests_processing", "", s.running),
        *_metric("gauge", "llamacpp:requests_deferred", "", s.waiting),
        *_metric("counter", "llamacpp:prompt_tokens_total", "", s.finished * 500),
        *_metric("counter", "llamacpp:tokens_predicted_total", "", s.finished * 200),
    ]
    return "\n".join(lines) + "\n"


ENGINE_OF = {
    "vLLM V0": Engine.VLLM,
    "vLLM V1": Engine.VLLM,
    "SGLang": Engine.SGLANG,
    "TGI": Engine.TGI,
    "llama.cpp": Engine.LLAMACPP,
}
CAP = {"vLLM V0": "max_num_seqs", "vLLM V1": "max_num_seqs", "SGLang": "max_running_requests"}
CAP |= {"TGI": "max_batch_size", "llama.cpp": "parallel"}


def _body(engine: str, state: State) -> str:
    if engine.startswith("vLLM"):
        return _vllm(state, v0=engine == "vLLM V0")
    return {"SGLang": _sglang, "TGI": _tgi, "llama.cpp": _llamacpp}[engine](state)


def _states(engine: str, kind: str) -> tuple[list[State | None], dict[str, Any]]:
    """Twelve samples 15 s apart (None: a failed scrape) and the targets-file entry."""
    entry: dict[str, Any] = {"slo": {"ttft_p95_ms": 500, "itl_p95_ms": 100}}
    n = range(12)
    if kind == "kv_cache_pressure":
        if engine == "TGI":  # the reservation proxy, no queue
            return [State(running=20, reserved=0.95 * BUDGET, finished=9.0 * i) for i in n], entry
        return [State(kv=0.95, preemptions=2.0 * i, finished=9.0 * i) for i in n], entry
    if kind == "preemption":
        return [State(kv=0.6, preemptions=2.0 * i, finished=9.0 * i) for i in n], entry
    if kind == "queue_saturation":
        if engine == "TGI":  # at the token budget, no request cap configured
            return [State(running=12, waiting=20, reserved=BUDGET - 900) for _ in n], entry
        entry["config"] = {CAP[engine]: 16}
        return [State(running=16, waiting=20, kv=0.5, finished=9.0 * i) for i in n], entry
    if kind == "ttft/itl breach, empty queue":
        return [State(running=8, slow=50.0 * i, finished=50.0 * i) for i in n], entry
    if kind == "underutilization":
        busy = [1.0 if i % 6 == 0 else 0.0 for i in n]  # one request now and then
        return [State(running=b, kv=0.02, reserved=1_000.0 * b) for b in busy], entry
    return [None] * 12, entry  # target_down


def _window(engine: str, kind: str) -> tuple[Detection, str]:
    states, entry = _states(engine, kind)
    name = "server"
    target = parse_targets(
        {"targets": [{"name": name, "url": "http://127.0.0.1:1/metrics", **entry}]}
    )[0]
    rows, bodies = [], []
    for index, state in enumerate(states):
        at = T0 + pd.Timedelta(seconds=15 * index)
        common: dict[str, Any] = dict(
            run_id=f"run-{index // 4}",
            sample_index=index % 4,
            target=name,
            collected_at=at,
            scrape_ms=3.0,
            body_bytes=100,
        )
        if state is None:
            rows.append(
                SnapshotRow(
                    **common, engine=None, model=None, up=False, error="timeout", snapshot=None
                )
            )
            continue
        body = _body(engine, state)
        bodies.append(body)
        found, snapshots = snapshots_from_text(body, ENGINE_OF[engine])
        for snapshot in snapshots:
            rows.append(
                SnapshotRow(
                    **common,
                    engine=found.value,
                    model=snapshot.model,
                    up=True,
                    error=None,
                    snapshot=snapshot,
                )
            )
    data = snapshot_frame(rows)
    targets = {name: target}
    return detect(window_stats(data, targets, *window_bounds(data)), targets), "".join(bodies)


def _seen(detection: Detection) -> list[tuple[str, str, Any]]:
    return [(r.kind, r.severity, r.evidence.get("sustained")) for r in detection.reports]


@pytest.mark.parametrize(
    ("engine", "kind"), sorted(MATRIX), ids=[f"{e}-{k}" for e, k in sorted(MATRIX)]
)
def test_matrix_cell(engine: str, kind: str) -> None:
    cell = MATRIX[engine, kind]
    detection, bodies = _window(engine, kind)
    sustained = {r.kind for r in detection.reports if is_sustained(r)}
    reasons = detection.not_judged.get("server", [])
    for wanted in cell.reports:
        assert wanted in sustained, f"{engine} × {kind}: saw {_seen(detection)}; {reasons}"
    if cell.not_judged is not None:
        assert any(cell.not_judged in r for r in reasons), f"{engine} × {kind}: {reasons}"
    if not cell.judged:
        assert kind not in {r.kind for r in detection.reports}, _seen(detection)
    if kind == "ttft/itl breach, empty queue":
        for report in detection.reports:
            if report.kind.endswith("_slo_breach"):
                assert report.evidence["queue_empty"] is True, report.evidence
    if kind == "preemption" and cell.judged:
        assert "kv_cache_pressure" not in sustained, _seen(detection)
    if kind == "kv_cache_pressure":
        assert "preemption" not in {r.kind for r in detection.reports}, _seen(detection)
    if cell.judged and kind != "target_down":
        # every metric the cell names is one this window was built from
        for name in re.findall(r"`([a-z_]+:[a-z_]+|tgi_[a-z_]+)", cell.text):
            assert name in bodies, f"{engine} × {kind}: {name} is named but not exported"


# --- the doc ---------------------------------------------------------------------------------


def _doc_matrix() -> dict[tuple[str, str], str]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("<!-- coverage-matrix -->")[1].split("<!-- /coverage-matrix -->")[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[1:] == list(KINDS), header
    cells = {}
    for line in lines[2:]:
        values = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        for kind, value in zip(KINDS, values[1:], strict=True):
            cells[values[0], kind] = value.replace("\\|", "|")
    return cells


def test_the_doc_matrix_is_this_matrix() -> None:
    doc = _doc_matrix()
    assert set(doc) == set(MATRIX) == {(e, k) for e in ENGINES for k in KINDS}
    for key, cell in MATRIX.items():
        assert doc[key] == cell.text, f"{key}: doc says {doc[key]!r}, test says {cell.text!r}"


def markdown_matrix() -> str:
    """The table for the doc, from MATRIX (paste between the coverage-matrix markers)."""
    rows = ["| engine | " + " | ".join(KINDS) + " |", "|---" * (len(KINDS) + 1) + "|"]
    for engine in ENGINES:
        cells = [MATRIX[engine, kind].text.replace("|", "\\|") for kind in KINDS]
        rows.append(f"| {engine} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


# --- the real simulator over HTTP -------------------------------------------------------------


def _specs() -> list[ServerSpec]:
    (v1,) = kv_pressure()
    v0 = dataclasses.replace(v1, name="vllm-v0-kv", version="0.8.5")
    (idle,) = underutilized()
    (llama,) = [s for s in mixed() if s.engine == "llamacpp"]
    tgi = ServerSpec(
        "tgi-budget",
        "tgi",
        LLAMA_8B,
        "A10G",
        settings={"max_batch_total_tokens": 16_000, "max_concurrent_requests": 512},
        workload=Workload(rate_rps=4, prompt_tokens_mean=1200, output_tokens_mean=300),
    )
    return [v1, v0, idle, tgi, llama]


SIMULATED = {
    "vLLM V1": ("vllm-llama70b-kv", "kv_cache_pressure"),
    "vLLM V0": ("vllm-v0-kv", "kv_cache_pressure"),
    "SGLang": ("sglang-qwen7b-idle", "underutilization"),
    "TGI": ("tgi-budget", "queue_saturation"),
    "llama.cpp": ("llamacpp-llama8b-l4", "queue_saturation"),
}


@pytest.fixture(scope="module")
def simulated() -> Iterator[tuple[Detection, pd.DataFrame]]:
    specs = _specs()
    fleet = Fleet(specs, virtual=True, tick=0.5, seed=7, start=0.0)
    for _ in range(3):  # three simulated minutes of warm-up, in steps the fleet can catch up
        fleet.advance(60.0)
    with run_fleet_in_thread(fleet) as base_url:
        data = yaml.safe_load(yaml.safe_dump(targets_for(specs, base_url)))
        for entry in data["targets"]:
            if entry["name"] == "sglang-qwen7b-idle":
                # as in the field: SGLang exports no --max-running-requests; nobody wrote it down
                entry["config"].pop("max_running_requests")
        targets = parse_targets(data)
        frame = scrape_fleet(fleet, targets, samples=13, interval_s=15.0)
    target_map: dict[str, Target] = {t.name: t for t in targets}
    stats = window_stats(frame, target_map, *window_bounds(frame))
    yield detect(stats, target_map), frame


@pytest.mark.parametrize("engine", ENGINES)
def test_the_simulated_engine_shows_its_bottleneck_over_http(
    engine: str, simulated: tuple[Detection, pd.DataFrame]
) -> None:
    detection, frame = simulated
    name, kind = SIMULATED[engine]
    mine = [r for r in detection.reports if r.target == name]
    seen = [(r.kind, r.severity, r.evidence.get("sustained")) for r in mine]
    assert frame[frame.target == name].up.all(), f"{name}: scrapes failed"
    (report,) = [r for r in mine if r.kind == kind] or [None]
    assert report is not None and is_sustained(report), f"{name}: saw {seen}"
    if kind == "kv_cache_pressure":
        assert "preemption" not in {r.kind for r in mine}, seen
    if engine == "SGLang":
        assert report.evidence["batch_limit_known"] is False, report.evidence
    if engine == "TGI":
        assert report.evidence["limit_kind"] == "token_budget", report.evidence
        assert report.evidence["token_budget_tokens"] == 16_000, report.evidence
    if engine == "llama.cpp":
        assert report.evidence["deferred_mean"] > 0 and report.evidence["slots"] == 4
