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
from bisect import bisect_left
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import lru_cache

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
# The common case, tried first: no escapes, no exemplar, single spaces or tabs. Values then
# cannot contain '"', so the label text splits on quotes without a regex per label.
_FAST_SAMPLE = re.compile(
    r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*",?)*)\})?'
    r"[ \t]+([^ \t#]+)(?:[ \t]+([^ \t#]+))?[ \t]*"
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


@lru_cache(maxsize=32)
def _sorted_names(names: frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted(names))


def _family_wanted(types: _Types, declared: str, wanted: frozenset[str]) -> bool:
    """Whether any sample name of the just-declared family is wanted."""
    candidates = (declared, declared + "_total", declared + "_info")
    candidates += tuple(declared + suffix for suffix in _HISTOGRAM_SUFFIXES)
    return any(name in wanted and types.by_sample.get(name) is not None for name in candidates)


def _only_lines_of(text: str, start: int, end: int, prefix: str) -> bool:
    """Whether every line in text[start:end] starts with `prefix` ("\n" + a family name).

    Two counts in C, no copy. Skipping a family's group is only safe when it really holds just
    that family: an untyped family written without a TYPE or HELP line of its own directly
    after another family's samples is valid text, and would otherwise be skipped with it.
    """
    return text.count("\n", start - 1, end - 1) == text.count(prefix, start - 1, end - 1)


def _line_number(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def parse_exposition(
    text: str,
    *,
    keep: Collection[str] | None = None,
    max_series: int = 200_000,
    max_labels: int = 64,
) -> dict[str, MetricFamily]:
    """Parse an exposition body into families keyed as described in the module docstring.

    `keep`: only these family keys are built. Both formats require a family's lines to form one
    group after its TYPE line, so the group of an unwanted family is skipped with one `find` for
    the next comment line, without parsing its samples (two counts check that every line of
    the group starts with the family's name: an untyped family may follow without a comment).
    `max_series` caps the kept samples and `max_labels` the labels of one sample.
    """
    if "\x00" in text:
        raise ExpositionError("body contains NUL bytes: not a text exposition")
    tail_start = text.rfind("\n", 0, len(text) - 1) + 1 if text else 0
    if text and not text.endswith("\n") and not text.startswith("#", tail_start):
        # Every sample line ends with a newline; a body that stops without one was cut off.
        raise ExpositionError(
            f"line {_line_number(text, tail_start)}: body ends inside a sample line (truncated?): "
            f"{_snippet(text[tail_start:])!r}"
        )
    openmetrics = text.rstrip().endswith("# EOF")
    keep_set = frozenset(keep) if keep is not None else None
    wanted = _wanted_sample_names(keep_set) if keep_set is not None else None
    wanted_sorted = _sorted_names(wanted) if wanted is not None else ()
    parser = _SampleParser(keep_set, wanted, openmetrics, max_series, max_labels)
    types = parser.types
    length = len(text)
    position = 0
    # While set: "\n" + the name of an unwanted family whose group may be skipped unread.
    skip_prefix: str | None = None
    while position < length:
        if text.startswith("#", position):
            end = text.find("\n", position)
            end = length if end == -1 else end
            line = text[position:end].rstrip("\r")
            if line.startswith("# TYPE "):
                parts = line.split(None, 3)
                if len(parts) != 4 or parts[3].strip() not in _KNOWN_TYPES:
                    number = _line_number(text, position)
                    raise ExpositionError(f"line {number}: malformed TYPE line {_snippet(line)!r}")
                types.declare(parts[2], parts[3].strip())
                skip_prefix = None
                if wanted is not None and not _family_wanted(types, parts[2], wanted):
                    # A wanted name that merely starts with this one could hide in the group.
                    after = bisect_left(wanted_sorted, parts[2])
                    if after == len(wanted_sorted) or not wanted_sorted[after].startswith(parts[2]):
                        skip_prefix = "\n" + parts[2]
            elif line.startswith("# EOF"):
                if text[end:].strip():
                    raise ExpositionError(
                        f"line {_line_number(text, end) + 1}: content after '# EOF'"
                    )
                break
            else:
                skip_prefix = None  # a HELP line may start an untyped family: look at its lines
            position = end + 1
            continue
        next_comment = text.find("\n#", position)
        region_end = length if next_comment == -1 else next_comment + 1
        if skip_prefix is None or not _only_lines_of(text, position, region_end, skip_prefix):
            parser.parse_region(text, position, region_end)
        position = region_end
    return parser.families


class _SampleParser:
    """Parses the sample lines of the regions that are not skipped."""

    def __init__(
        self,
        keep: frozenset[str] | None,
        wanted: frozenset[str] | None,
        openmetrics: bool,
        max_series: int,
        max_labels: int,
    ) -> None:
        self.keep = keep
        self.wanted = wanted
        self.openmetrics = openmetrics
        self.max_series = max_series
        self.max_labels = max_labels
        self.types = _Types()
        self.families: dict[str, MetricFamily] = {}
        self.series: dict[tuple[str, str], Sample] = {}

    def parse_region(self, text: str, start: int, end: int) -> None:
        for index, raw in enumerate(text[start:end].split("\n")):
            line = raw[:-1] if raw.endswith("\r") else raw
            if not line or line.isspace():
                continue
            try:
                self._parse_line(line)
            except ExpositionError as exc:
                raise ExpositionError(f"line {_line_number(text, start) + index}: {exc}") from None

    def _parse_line(self, line: str) -> None:
        fast = _FAST_SAMPLE.fullmatch(line)
        if fast is None:
            self._parse_line_slowly(line)
            return
        name, label_text, value_text, stamp_text = fast.groups()
        if self.wanted is not None and name not in self.wanted:
            return
        family_info = self.types.family_of(name)
        if family_info is None:
            return
        if self.keep is not None and family_info[0] not in self.keep:
            return
        labels: dict[str, str] = {}
        if label_text:
            pieces = label_text.split('"')
            for i in range(0, len(pieces) - 1, 2):
                labels[pieces[i].lstrip(",")[:-1]] = pieces[i + 1]
            if len(labels) > self.max_labels:
                raise ExpositionError(f"{len(labels)} labels exceed the cap of {self.max_labels}")
        self._add(family_info, name, label_text or "", labels, value_text, stamp_text)

    def _parse_line_slowly(self, line: str) -> None:
        match = _NAME.match(line)
        if match is None:
            raise ExpositionError(f"expected a metric name: {_snippet(line)!r}")
        name = match.group()
        if self.wanted is not None and name not in self.wanted:
            return
        family_info = self.types.family_of(name)
        if family_info is None:  # a _created series
            return
        if self.keep is not None and family_info[0] not in self.keep:
            return
        position = match.end()
        while position < len(line) and line[position] in " \t":
            position += 1
        labels: dict[str, str] = {}
        label_text = ""
        if position < len(line) and line[position] == "{":
            block = _LABEL_BLOCK.match(line, position)
            if block is None:
                raise ExpositionError(f"malformed or unterminated labels: {_snippet(line)!r}")
            label_text = block.group(1)
            for label in _LABEL.finditer(label_text):
                value = label.group(2)
                labels[label.group(1)] = _unescape(value) if "\\" in value else value
            if len(labels) > self.max_labels:
                raise ExpositionError(f"{len(labels)} labels exceed the cap of {self.max_labels}")
            position = block.end()
        elif position == match.end():
            raise ExpositionError(f"malformed sample: {_snippet(line)!r}")
        rest = line[position:]
        exemplar = rest.find(" # ")
        if exemplar != -1:
            rest = rest[:exemplar]
        fields = rest.split()
        if not fields or len(fields) > 2:
            raise ExpositionError(f"expected 'value [timestamp]': {_snippet(line)!r}")
        self._add(
            family_info, name, label_text, labels, fields[0], fields[1] if len(fields) > 1 else None
        )

    def _add(
        self,
        family_info: tuple[str, str],
        name: str,
        label_text: str,
        labels: dict[str, str],
        value_text: str,
        stamp_text: str | None,
    ) -> None:
        try:
            value = float(value_text)
        except ValueError:
            raise ExpositionError(f"value {_snippet(value_text)!r} is not a number") from None
        timestamp = None
        if stamp_text is not None:
            try:
                stamp = float(stamp_text)
            except ValueError:
                raise ExpositionError(
                    f"timestamp {_snippet(stamp_text)!r} is not a number"
                ) from None
            if not math.isfinite(stamp):
                raise ExpositionError(f"timestamp {stamp_text!r} is not finite")
            # 0.0.4 timestamps are integer milliseconds; OpenMetrics uses seconds.
            timestamp = stamp if self.openmetrics else stamp / 1000.0
        # The label text as written identifies the series: cheaper than sorting label pairs.
        identity = (name, label_text)
        previous = self.series.get(identity)
        if previous is not None:
            previous.value = value
            previous.timestamp = timestamp
            return
        if len(self.series) >= self.max_series:
            raise ExpositionError(
                f"more than {self.max_series} series: refusing an oversized exposition"
            )
        sample = Sample(name, labels, value, timestamp)
        self.series[identity] = sample
        key, kind = family_info
        family = self.families.get(key)
        if family is None:
            family = self.families[key] = MetricFamily(key, kind)
        family.samples.append(sample)
