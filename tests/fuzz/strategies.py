"""Hypothesis strategies for the fuzz tests: metrics expositions that look valid, with the
values the parser must return for them, and engine pages built from the adapters' own names.

The generated expositions exercise what real servers and careless proxies produce: random
family names, label values with every escape, NaN/±Inf, timestamps in both formats, HELP lines,
`_created` series, OpenMetrics exemplars, duplicate series (last one wins), CRLF line ends and
tab separators. Each generator returns the text together with an independent model of what a
correct parser reads from it, so a property can compare the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hypothesis import strategies as st

from perf_pipelines.engines import llamacpp, sglang, tgi, vllm
from perf_pipelines.engines.canonical import Engine

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]

_NAME_RE = r"[a-zA-Z_:][a-zA-Z0-9_:]{0,24}"
_LABEL_NAME_RE = r"[a-zA-Z_][a-zA-Z0-9_]{0,15}"
_RESERVED_LABELS = frozenset({"le", "quantile"})

metric_names = st.from_regex(_NAME_RE, fullmatch=True)
label_names = st.from_regex(_LABEL_NAME_RE, fullmatch=True).filter(
    lambda n: n not in _RESERVED_LABELS and not n.startswith("__")
)
# Any text a server could put in a label value: quotes, backslashes, newlines, '#', braces,
# CR, Unicode line separators, emoji. NUL cannot appear (a body with NUL is refused whole).
label_values = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=24
) | st.sampled_from(['"', "\\", "\n", '\\n"', "a\rb", "x # y", "}", "{", "=", ",", "\u2028"])

floats = st.floats(allow_nan=True, allow_infinity=True)


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float, style: int) -> str:
    """One of the spellings servers use for the same number."""
    if math.isnan(value):
        return ("NaN", "nan", "NaN")[style % 3]
    if math.isinf(value):
        return (
            ("+Inf", "inf", "Inf")[style % 3] if value > 0 else ("-Inf", "-inf", "-Inf")[style % 3]
        )
    if style % 3 == 1 and value.is_integer() and abs(value) < 1e18:
        return str(int(value))
    if style % 3 == 2:
        return f"{value:.17g}"
    return repr(value)


@dataclass
class Exposition:
    """A generated body and what a correct parser must read from it (with `keep=None`)."""

    text: str
    openmetrics: bool
    # (sample name, sorted labels) -> (value, timestamp in seconds or None); last write wins
    expected: dict[SeriesKey, tuple[float, float | None]] = field(default_factory=dict)
    # sample name -> (family key, family type) the parser must file it under
    family_of: dict[str, tuple[str, str]] = field(default_factory=dict)
    max_labels_in_a_sample: int = 0


def same_value(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


_KINDS = ("gauge", "counter", "histogram", "summary", "untyped", "untyped-no-type", "info")


@st.composite
def expositions(draw: st.DrawFn, max_families: int = 6, max_label_sets: int = 4) -> Exposition:
    openmetrics = draw(st.booleans())
    newline = "\n" if openmetrics else draw(st.sampled_from(["\n", "\r\n"]))
    sep = " " if openmetrics else draw(st.sampled_from([" ", "\t", "  "]))
    exposition = Exposition(text="", openmetrics=openmetrics)
    lines: list[str] = []
    n_families = draw(st.integers(0, max_families))
    for index in range(n_families):
        kind = draw(st.sampled_from(_KINDS if openmetrics else _KINDS[:-1]))
        # Every base name ends in "_<index>": derived names (_bucket, _total, ...) end in a
        # letter, so no two families can claim the same sample name.
        base = f"{draw(metric_names)}_{index}"
        label_sets = draw(
            st.lists(
                st.dictionaries(label_names, label_values, max_size=6),
                min_size=1,
                max_size=max_label_sets,
                unique_by=lambda d: frozenset(d.items()),
            )
        )
        if draw(st.booleans()):
            help_text = draw(label_values).replace("\\", "\\\\").replace("\n", "\\n")
            lines.append(f"# HELP {base} {help_text}")
        family_lines = _family(draw, exposition, kind, base, label_sets, sep)
        lines.extend(family_lines)
        if draw(st.integers(0, 9)) == 0:
            lines.append("")  # a stray blank line
        if draw(st.integers(0, 9)) == 0:
            lines.append('# a free-form comment {with} "quotes"')
    if openmetrics:
        lines.append("# EOF")
    exposition.text = newline.join(lines) + (newline if lines else "")
    return exposition


def _declare(
    draw: st.DrawFn,
    exposition: Exposition,
    kind: str,
    base: str,
    label_sets: list[dict[str, str]],
) -> tuple[list[str], list[tuple[str, list[tuple[str, str]]]]]:
    """A family's TYPE line and its samples' names and labels, by kind; records which family
    each sample name belongs to."""
    om = exposition.openmetrics
    lines: list[str] = []
    samples: list[tuple[str, list[tuple[str, str]]]] = []  # (sample name, labels in order)
    if kind == "counter":
        declared = base if om else base + "_total"
        lines.append(f"# TYPE {declared} counter")
        key = base + "_total"
        for labels in label_sets:
            samples.append((base + "_total", list(labels.items())))
        exposition.family_of[base + "_total"] = (key, "counter")
    elif kind in ("histogram", "summary"):
        lines.append(f"# TYPE {base} {kind}")
        extra_label = "le" if kind == "histogram" else "quantile"
        bounds = draw(
            st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=4, unique=True)
        )
        if kind == "histogram":
            bound_texts = [repr(b) for b in sorted(bounds)] + ["+Inf"]
            series_name = base + "_bucket"
        else:
            bound_texts = [repr(q) for q in sorted({abs(b) % 1 for b in bounds})]
            series_name = base
        for labels in label_sets:
            for bound in bound_texts:
                samples.append((series_name, [*labels.items(), (extra_label, bound)]))
            samples.append((base + "_sum", list(labels.items())))
            samples.append((base + "_count", list(labels.items())))
        for name in (series_name, base + "_sum", base + "_count"):
            exposition.family_of[name] = (base, kind)
    elif kind == "info":
        lines.append(f"# TYPE {base} info")
        for labels in label_sets:
            samples.append((base + "_info", list(labels.items())))
        exposition.family_of[base + "_info"] = (base + "_info", "info")
    else:
        family_type = "untyped"
        if kind != "untyped-no-type":
            declared = draw(st.sampled_from(["gauge", "untyped", "unknown"]))
            lines.append(f"# TYPE {base} {declared}")
            family_type = "gauge" if declared == "gauge" else "untyped"
        for labels in label_sets:
            samples.append((base, list(labels.items())))
        exposition.family_of[base] = (base, family_type)
    return lines, samples


def _family(
    draw: st.DrawFn,
    exposition: Exposition,
    kind: str,
    base: str,
    label_sets: list[dict[str, str]],
    sep: str,
) -> list[str]:
    om = exposition.openmetrics
    lines, samples = _declare(draw, exposition, kind, base, label_sets)

    # Some series are written twice: the parser must keep the last value.
    repeats = draw(st.lists(st.integers(0, max(0, len(samples) - 1)), max_size=2))
    order = list(range(len(samples))) + [i for i in repeats if samples]
    for position in order:
        name, labels = samples[position]
        exposition.max_labels_in_a_sample = max(
            exposition.max_labels_in_a_sample, len({k for k, _ in labels})
        )
        value = 1.0 if kind == "info" else draw(floats)
        value_text = format_value(value, draw(st.integers(0, 2)))
        stamp_text, stamp = None, None
        if draw(st.integers(0, 3)) == 0:
            if om:
                seconds = draw(st.floats(-1e10, 1e10, allow_nan=False))
                stamp_text, stamp = repr(seconds), seconds
            else:
                millis = draw(st.integers(-(2**53), 2**53))
                stamp_text, stamp = str(millis), millis / 1000.0
        label_text = ""
        if labels:
            label_text = "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels) + "}"
        line = f"{name}{label_text}{sep}{value_text}"
        if stamp_text is not None:
            line += f"{sep}{stamp_text}"
        if om and name.endswith(("_bucket", "_total")) and draw(st.integers(0, 4)) == 0:
            line += ' # {trace_id="a # b"} 0.5'
        lines.append(line)
        exposition.expected[(name, tuple(sorted(dict(labels).items())))] = (value, stamp)
    if kind in ("counter", "histogram") and draw(st.integers(0, 3)) == 0:
        lines.append(f"{base}_created{sep}1700000000.0")  # dropped by the parser
    return lines


# -- engine pages ---------------------------------------------------------------------------

# Which canonical field each engine fills from which families: a field whose families are all
# absent from a page must stay None ("not measured", never 0).
SOURCES: dict[Engine, dict[str, tuple[str, ...]]] = {
    Engine.VLLM: {
        "requests_running": (vllm.RUNNING,),
        "requests_waiting": (vllm.WAITING,),
        "kv_cache_usage": vllm.KV_USAGE,
        "kv_cache_capacity_tokens": (vllm.CACHE_CONFIG,),
        "prompt_tokens_total": (vllm.PROMPT_TOKENS,),
        "generation_tokens_total": (vllm.GENERATION_TOKENS,),
        "preemptions_total": (vllm.PREEMPTIONS,),
        "requests_finished_total": (vllm.REQUEST_SUCCESS,),
        "requests_failed_total": (vllm.REQUEST_SUCCESS, vllm.ADMISSION_REJECTIONS),
        "prefix_cache_queries_total": vllm.PREFIX_QUERIES,
        "prefix_cache_hits_total": vllm.PREFIX_HITS,
        "ttft_seconds": (vllm.TTFT,),
        "itl_seconds": vllm.ITL,
        "e2e_seconds": (vllm.E2E,),
        "queue_seconds": (vllm.QUEUE,),
        "process_start_time": (vllm.PROCESS_START,),
    },
    Engine.SGLANG: {
        "requests_running": (sglang.RUNNING,),
        "requests_waiting": (sglang.WAITING,),
        "kv_cache_usage": (sglang.KV_USAGE,),
        "kv_cache_capacity_tokens": ("sglang:max_total_num_tokens",),
        "prompt_tokens_total": (sglang.PROMPT_TOKENS,),
        "generation_tokens_total": (sglang.GENERATION_TOKENS,),
        "preemptions_total": (sglang.RETRACTIONS,),
        "requests_finished_total": (sglang.FINISHED,),
        "requests_failed_total": (sglang.ABORTED,),
        "prefix_cache_queries_total": (sglang.CACHED_TOKENS,),
        "prefix_cache_hits_total": (sglang.CACHED_TOKENS,),
        "ttft_seconds": (sglang.TTFT,),
        "itl_seconds": (sglang.ITL,),
        "e2e_seconds": (sglang.E2E,),
        "queue_seconds": (sglang.QUEUE,),
        "process_start_time": (),
    },
    Engine.TGI: {
        "requests_running": (tgi.BATCH_SIZE,),
        "requests_waiting": (tgi.QUEUE_SIZE,),
        "kv_cache_usage": (),
        "kv_cache_capacity_tokens": (tgi.MAX_TOTAL_TOKENS,),
        "prompt_tokens_total": (tgi.INPUT_LENGTH,),
        "generation_tokens_total": (tgi.GENERATED_TOKENS,),
        "preemptions_total": (),
        "requests_finished_total": (tgi.SUCCESS, tgi.FAILURE),
        "requests_failed_total": (tgi.FAILURE,),
        "prefix_cache_queries_total": (),
        "prefix_cache_hits_total": (),
        "ttft_seconds": (),
        "itl_seconds": (tgi.FORWARD_DURATION,),
        "e2e_seconds": (tgi.DURATION,),
        "queue_seconds": (tgi.QUEUE_DURATION,),
        "process_start_time": (),
    },
    Engine.LLAMACPP: {
        "requests_running": (llamacpp.PROCESSING,),
        "requests_waiting": (llamacpp.DEFERRED,),
        "kv_cache_usage": (llamacpp.KV_USAGE,),
        "kv_cache_capacity_tokens": (),
        "prompt_tokens_total": (llamacpp.PROMPT_TOKENS,),
        "generation_tokens_total": (llamacpp.PREDICTED,),
        "preemptions_total": (),
        "requests_finished_total": (),
        "requests_failed_total": (),
        "prefix_cache_queries_total": (llamacpp.PROMPT_CACHED,),
        "prefix_cache_hits_total": (llamacpp.PROMPT_CACHED,),
        "ttft_seconds": (),
        "itl_seconds": (),
        "e2e_seconds": (),
        "queue_seconds": (),
        "process_start_time": (),
    },
}

_HISTOGRAMS = frozenset(
    {
        vllm.TTFT,
        *vllm.ITL,
        vllm.E2E,
        vllm.QUEUE,
        sglang.TTFT,
        sglang.ITL,
        sglang.E2E,
        sglang.QUEUE,
        tgi.DURATION,
        tgi.QUEUE_DURATION,
        tgi.FORWARD_DURATION,
        tgi.INPUT_LENGTH,
        tgi.GENERATED_TOKENS,
    }
)
_TGI_COUNTERS = frozenset({tgi.SUCCESS, tgi.FAILURE})
WANTED: dict[Engine, frozenset[str]] = {
    Engine.VLLM: vllm.WANTED,
    Engine.SGLANG: sglang.WANTED,
    Engine.TGI: tgi.WANTED,
    Engine.LLAMACPP: llamacpp.WANTED,
}
_MODEL_LABELED = {Engine.VLLM: "model_name", Engine.SGLANG: "model_name"}

# Label values that stress the adapters: DP/TP ranks, per-process leftovers, failure reasons,
# TGI's prefill/decode split, settings spelled as numbers, booleans, NaN and overflow.
_ENGINE_LABELS: dict[str, st.SearchStrategy[str]] = {
    "engine": st.sampled_from(["0", "1", "2"]),
    "tp_rank": st.sampled_from(["0", "1"]),
    "pp_rank": st.sampled_from(["0", "1"]),
    "dp_rank": st.sampled_from(["0", "1"]),
    "moe_ep_rank": st.sampled_from(["0", "1"]),
    "pid": st.sampled_from(["123", "456"]),
    "is_streaming": st.sampled_from(["true", "false"]),
    "finished_reason": st.sampled_from(["stop", "length", "abort", "error", "repetition"]),
    "method": st.sampled_from(["prefill", "decode", "DECODE"]),
}
_SETTING_VALUES = st.sampled_from(
    ["16", "1024", "0.9", "1e308", "1e999", "-1", "nan", "inf", "None", "True", "auto", "", "0x10"]
) | st.text(max_size=8)
_CONFIG_LABELS = ("num_gpu_blocks", "block_size", "kv_cache_size_tokens", "gpu_memory_utilization")
model_names = st.sampled_from(["m", "llama/70b", 'we"ird\\model\n', "é", "m" * 600]) | st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=8
)


@dataclass
class EnginePage:
    engine: Engine
    text: str
    present: frozenset[str]  # family keys written on the page
    models: frozenset[str]  # model label values written on the page
    series: int  # sample lines written


@st.composite
def engine_pages(draw: st.DrawFn, engine: Engine) -> EnginePage:
    """A page with a random subset of one engine's families, random labels and values."""
    names = sorted(WANTED[engine])
    present = draw(st.lists(st.sampled_from(names), unique=True, min_size=1, max_size=len(names)))
    models = draw(st.lists(model_names, min_size=1, max_size=3, unique=True))
    model_label = _MODEL_LABELED.get(engine)
    lines: list[str] = []
    series = 0
    used_models: set[str] = set()
    for name in present:
        if name in _HISTOGRAMS:
            kind = "histogram"
        elif name.endswith("_total") or name in _TGI_COUNTERS:
            kind = "counter"
        else:
            kind = "gauge"
        lines.append(f"# TYPE {name} {kind}")
        for _ in range(draw(st.integers(1, 3))):
            labels: dict[str, str] = {}
            if model_label is not None and draw(st.integers(0, 5)) > 0:
                labels[model_label] = draw(st.sampled_from(models))
                used_models.add(labels[model_label])
            for label in draw(st.lists(st.sampled_from(sorted(_ENGINE_LABELS)), max_size=3)):
                labels[label] = draw(_ENGINE_LABELS[label])
            if name == vllm.CACHE_CONFIG:
                for label in draw(st.lists(st.sampled_from(_CONFIG_LABELS), max_size=4)):
                    labels[label] = draw(_SETTING_VALUES)
            label_text = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels.items())
            if kind == "histogram":
                bounds = sorted(draw(st.lists(st.floats(0, 100), max_size=4, unique=True)))
                for bound in [*map(repr, bounds), "+Inf", "garbage"]:
                    le = f'le="{bound}"'
                    text = f"{label_text},{le}" if label_text else le
                    lines.append(f"{name}_bucket{{{text}}} {format_value(draw(floats), 0)}")
                    series += 1
                for suffix in ("_sum", "_count"):
                    if draw(st.integers(0, 4)) > 0:
                        lines.append(
                            f"{name}{suffix}{{{label_text}}} {format_value(draw(floats), 0)}"
                        )
                        series += 1
            else:
                lines.append(f"{name}{{{label_text}}} {format_value(draw(floats), 0)}")
                series += 1
    return EnginePage(
        engine=engine,
        text="\n".join(lines) + "\n",
        present=frozenset(present),
        models=frozenset(used_models),
        series=series,
    )
