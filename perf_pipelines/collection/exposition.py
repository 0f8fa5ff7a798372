"""A fast parser for the Prometheus text format 0.0.4 and OpenMetrics 1.0.

Why not prometheus_client's parser: it builds objects for every sample of every family and
parses labels character by character; the agent needs a dozen families out of hundreds, so
lines of unwanted families are skipped after reading only their metric name.

Family keys (what `parse_exposition` returns and `keep` selects):
- histogram / summary ``x``: key ``x``; samples ``x_bucket``, ``x_sum``, ``x_count`` (and for a
  summary ``x`` itself) belong to it. vLLM's histogram ``vllm:iteration_tokens_total`` is keyed
  ``vllm:iteration_tokens_total`` like any other histogram.
- counter: key = the sample name as written, i.e. with ``_total`` where the server writes it.
  Text 0.0.4 declares ``# TYPE x_total counter``, OpenMetrics declares ``# TYPE x counter``;
  both give the key ``x_total``. TGI writes counters without the suffix, so its keys have none.
- gauge, untyped, info and samples without a TYPE line: key = the sample name.
- ``*_created`` series of counters and histograms are dropped.

A series that appears twice keeps its last value. Anything that is not valid exposition text
raises `ExpositionError` (never another exception type), with the line number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass, field

__all__ = ["ExpositionError", "MetricFamily", "Sample", "parse_exposition"]


class ExpositionError(ValueError):
    """The body is not a valid metrics exposition (or exceeds a cap)."""


@dataclass(slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float
    timestamp: float | None = None


@dataclass(slots=True)
class MetricFamily:
    name: str
    type: str
    samples: list[Sample] = field(default_factory=list)


_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_BLOCK = re.compile(
    r'\{\s*((?:[a-zA-Z_][a-zA-Z0-9_]*\s*=\s*"(?:[^"\\\n]|\\.)*"\s*(?:,\s*)?)*)\}'
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\\n]|\\.)*)"')
_ESCAPES = re.compile(r"\\(.)")
_ESCAPE_MAP = {"n": "\n", "\\": "\\", '"': '"'}
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count", "_gsum", "_gcount")
_SUMMARY_SUFFIXES = ("_sum", "_count")
_KNOWN_TYPES = frozenset(
    {
        "counter",
        "gauge",
        "histogram",
        "gaugehistogram",
        "summary",
        "untyped",
        "unknown",
        "info",
        "stateset",
    }
)
_ERROR_SNIPPET = 80


def _unescape(value: str) -> str:
    return _ESCAPES.sub(lambda m: _ESCAPE_MAP.get(m.group(1), "\\" + m.group(1)), value)


def _snippet(line: str) -> str:
    return line if len(line) <= _ERROR_SNIPPET else line[:_ERROR_SNIPPET] + "…"


def _parse_float(text: str, line_number: int, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ExpositionError(
            f"line {line_number}: {what} {_snippet(text)!r} is not a number"
        ) from None


class _Types:
    """Maps sample names to (family key, family type) as TYPE lines arrive."""

    def __init__(self) -> None:
        self.by_sample: dict[str, tuple[str, str] | None] = {}

    def declare(self, name: str, kind: str) -> None:
        if kind in ("histogram", "gaugehistogram"):
            for suffix in _HISTOGRAM_SUFFIXES:
                self.by_sample[name + suffix] = (name, kind)
            self.by_sample[name + "_created"] = None
        elif kind == "summary":
            self.by_sample[name] = (name, kind)
            for suffix in _SUMMARY_SUFFIXES:
                self.by_sample[name + suffix] = (name, kind)
            self.by_sample[name + "_created"] = None
        elif kind == "counter":
            self.by_sample[name] = (name, kind)
            if not name.endswith("_total"):
                self.by_sample[name + "_total"] = (name + "_total", kind)
                self.by_sample[name + "_created"] = None
            else:
                self.by_sample[name[: -len("_total")] + "_created"] = None
        elif kind == "info":
            self.by_sample[name + "_info"] = (name + "_info", kind)
        else:
            self.by_sample[name] = (name, "untyped" if kind == "unknown" else kind)

    def family_of(self, sample_name: str) -> tuple[str, str] | None:
        if sample_name in self.by_sample:
            return self.by_sample[sample_name]
        return sample_name, "untyped"


def _wanted_sample_names(keep: Collection[str]) -> frozenset[str]:
    names: set[str] = set()
    for key in keep:
        names.add(key)
        names.update(key + suffix for suffix in _HISTOGRAM_SUFFIXES)
    return frozenset(names)


def parse_exposition(
    text: str,
    *,
    keep: Collection[str] | None = None,
    max_series: int = 200_000,
    max_labels: int = 64,
) -> dict[str, MetricFamily]:
    """Parse an exposition body into families keyed as described in the module docstring.

    `keep`: only these family keys are built; other lines are skipped after their name.
    `max_series` caps the kept samples and `max_labels` the labels of one sample.
    """
    if "\x00" in text:
        raise ExpositionError("body contains NUL bytes: not a text exposition")
    openmetrics = text.rstrip().endswith("# EOF")
    wanted = _wanted_sample_names(keep) if keep is not None else None
    types = _Types()
    families: dict[str, MetricFamily] = {}
    series_index: dict[tuple[str, tuple[tuple[str, str], ...]], Sample] = {}
    kept = 0
    lines = text.split("\n")
    last = len(lines) - 1
    if lines[last] == "":
        lines.pop()
    elif not lines[last].startswith("#"):
        # Every sample line ends with a newline; a body that stops without one was cut off.
        raise ExpositionError(
            f"line {last + 1}: body ends inside a sample line (truncated?): "
            f"{_snippet(lines[last])!r}"
        )
    eof_seen = False
    for index, raw in enumerate(lines):
        line = raw[:-1] if raw.endswith("\r") else raw
        if eof_seen:
            if line.strip():
                raise ExpositionError(f"line {index + 1}: content after '# EOF'")
            continue
        if not line or line.isspace():
            continue
        if line[0] == "#":
            if line.startswith("# TYPE "):
                parts = line.split(None, 3)
                if len(parts) != 4 or parts[3].strip() not in _KNOWN_TYPES:
                    raise ExpositionError(
                        f"line {index + 1}: malformed TYPE line {_snippet(line)!r}"
                    )
                types.declare(parts[2], parts[3].strip())
            elif line.startswith("# EOF"):
                eof_seen = True
            continue
        match = _NAME.match(line)
        if match is None:
            raise ExpositionError(f"line {index + 1}: expected a metric name: {_snippet(line)!r}")
        name = match.group()
        if wanted is not None and name not in wanted:
            continue
        family_info = types.family_of(name)
        if family_info is None:  # a _created series
            continue
        key, kind = family_info
        if keep is not None and key not in keep:
            continue
        position = match.end()
        labels: dict[str, str] = {}
        if position < len(line) and line[position] in "{ \t":
            rest_start = position
            while rest_start < len(line) and line[rest_start] in " \t":
                rest_start += 1
            if rest_start < len(line) and line[rest_start] == "{":
                block = _LABEL_BLOCK.match(line, rest_start)
                if block is None:
                    raise ExpositionError(
                        f"line {index + 1}: malformed or unterminated labels: {_snippet(line)!r}"
                    )
                for label in _LABEL.finditer(block.group(1)):
                    value = label.group(2)
                    labels[label.group(1)] = _unescape(value) if "\\" in value else value
                if len(labels) > max_labels:
                    raise ExpositionError(
                        f"line {index + 1}: {len(labels)} labels exceed the cap of {max_labels}"
                    )
                position = block.end()
            else:
                position = rest_start
        else:
            raise ExpositionError(f"line {index + 1}: malformed sample: {_snippet(line)!r}")
        rest = line[position:]
        exemplar = rest.find(" # ")
        if exemplar != -1:
            rest = rest[:exemplar]
        fields = rest.split()
        if not fields or len(fields) > 2:
            raise ExpositionError(
                f"line {index + 1}: expected 'value [timestamp]': {_snippet(line)!r}"
            )
        value = _parse_float(fields[0], index + 1, "value")
        timestamp = None
        if len(fields) == 2:
            stamp = _parse_float(fields[1], index + 1, "timestamp")
            if not math.isfinite(stamp):
                raise ExpositionError(f"line {index + 1}: timestamp {fields[1]!r} is not finite")
            # 0.0.4 timestamps are integer milliseconds; OpenMetrics uses seconds.
            timestamp = stamp if openmetrics else stamp / 1000.0
        identity = (name, tuple(sorted(labels.items())))
        previous = series_index.get(identity)
        if previous is not None:
            previous.value = value
            previous.timestamp = timestamp
            continue
        kept += 1
        if kept > max_series:
            raise ExpositionError(
                f"more than {max_series} series: refusing an oversized exposition"
            )
        sample = Sample(name, labels, value, timestamp)
        series_index[identity] = sample
        family = families.get(key)
        if family is None:
            family = families[key] = MetricFamily(key, kind)
        family.samples.append(sample)
    return families
