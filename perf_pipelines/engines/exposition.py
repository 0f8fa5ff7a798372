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

A series is its name and its set of labels, in any order: a series that appears twice, also
with its labels written in another order, keeps its last value. Anything that is not valid
exposition text raises `ExpositionError` (never another exception type), with the line number;
a body past a cap (series, label text) raises its subclass `ExpositionLimitError`. Only a
parse still running at its `deadline` raises something else: `TimeoutError`.

Speed (see docs/benchmarks.md): `_parse_line` defines what a line means; the sample lines of
kept families usually go a faster way that gives the same result for the lines it accepts
(`_SampleParser.parse_region`): str.split instead of a regex, label names checked once per
parse, a histogram bucket's labels copied from the bucket before it. What a TYPE line declares
is cached across calls, since a server sends the same TYPE lines on every scrape.
"""

from __future__ import annotations

import math
import re
import time
from bisect import bisect_left
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from perf_pipelines.logs import redact_and_clip

__all__ = [
    "ExpositionError",
    "ExpositionLimitError",
    "MetricFamily",
    "Sample",
    "parse_exposition",
]


class ExpositionError(ValueError):
    """The body is not a valid metrics exposition (or exceeds a cap)."""


class ExpositionLimitError(ExpositionError):
    """The body exceeds a cap on what one target may expose; `limit` names the cap."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


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
# Sample lines are parsed in slices of about this many characters, with a look at the deadline
# between two: a 16 MiB body that only the slow line parser accepts takes seconds, and a parse
# that has lost its caller must end soon after (a thread cannot be stopped from outside).
_SLICE = 256 * 1024


def _unescape(value: str) -> str:
    return _ESCAPES.sub(lambda m: _ESCAPE_MAP.get(m.group(1), "\\" + m.group(1)), value)


def _snippet(line: str) -> str:
    return redact_and_clip(line, _ERROR_SNIPPET, ellipsis="…")


class _Types:
    """Maps sample names to (family key, family type) as TYPE lines arrive."""

    def __init__(self) -> None:
        self.by_sample: dict[str, tuple[str, str] | None] = {}

    def family_of(self, sample_name: str) -> tuple[str, str] | None:
        if sample_name in self.by_sample:
            return self.by_sample[sample_name]
        return sample_name, "untyped"


def _declared_samples(name: str, kind: str) -> tuple[tuple[str, tuple[str, str] | None], ...]:
    """The sample names a TYPE line declares, each with its family (None: dropped)."""
    entries: list[tuple[str, tuple[str, str] | None]] = []
    # One tuple per family: the parser recognises a family by identity between lines.
    family = (name, kind)
    if kind in ("histogram", "gaugehistogram"):
        entries += [(name + suffix, family) for suffix in _HISTOGRAM_SUFFIXES]
        entries.append((name + "_created", None))
    elif kind == "summary":
        entries.append((name, family))
        entries += [(name + suffix, family) for suffix in _SUMMARY_SUFFIXES]
        entries.append((name + "_created", None))
    elif kind == "counter":
        entries.append((name, family))
        if not name.endswith("_total"):
            entries.append((name + "_total", (name + "_total", kind)))
            entries.append((name + "_created", None))
        else:
            entries.append((name[: -len("_total")] + "_created", None))
    elif kind == "info":
        entries.append((name + "_info", (name + "_info", kind)))
    else:
        entries.append((name, (name, "untyped" if kind == "unknown" else kind)))
    return tuple(entries)


# eq=False: hashed and compared by identity, as a cache key (equal selections are one object).
@dataclass(frozen=True, slots=True, eq=False)
class _Selection:
    """What `keep` selects, derived once per distinct `keep` (the collector passes the same
    frozenset on every scrape, so this is a cache hit after the first)."""

    keep: frozenset[str]
    # Sample names that can belong to a kept family.
    wanted: frozenset[str]
    wanted_sorted: tuple[str, ...]


@lru_cache(maxsize=32)
def _selection(keep: frozenset[str]) -> _Selection:
    names: set[str] = set()
    for key in keep:
        names.add(key)
        names.update(key + suffix for suffix in _HISTOGRAM_SUFFIXES)
    return _Selection(keep, frozenset(names), tuple(sorted(names)))


# What to do with the samples of a name (see `_resolution`): _SKIP drops a line after reading
# its name; _INVALID (not a metric name) leaves the line to `_parse_line`, which reports it.
_SKIP = ("", "")
_INVALID = ("", "invalid")


def _resolution(
    name: str, family_info: tuple[str, str] | None, selection: _Selection | None
) -> tuple[str, str]:
    """(family key, type), _SKIP or _INVALID for samples called `name`, as `_parse_line`
    decides it; `family_info` is what the TYPE lines so far file the name under."""
    if _NAME.fullmatch(name) is None:
        return _INVALID
    if selection is not None and name not in selection.wanted:
        return _SKIP
    if family_info is None or (selection is not None and family_info[0] not in selection.keep):
        return _SKIP
    return family_info


class _Declaration(NamedTuple):
    # (sample name, its family or None for a dropped _created series), for `_Types`
    entries: tuple[tuple[str, tuple[str, str] | None], ...]
    # "\n" + the family name when its group may be skipped unread (see `_type_line`)
    skip_prefix: str | None
    # The resolution of every declared sample name, to start the parser's cache with
    resolutions: dict[str, tuple[str, str]]
    # Whether empty lines at the end of a skippable group may be skipped with it (TGI ends every
    # group with one): only for a metric name, whose lines `_parse_line` drops without a word
    # (a line that starts with anything else may be an error it reports).
    skips_empty_lines: bool


# A TYPE line's outcome depends only on its text and the selection; servers repeat the same
# TYPE lines on every scrape, so this turns a split, a validation, several concatenations, a
# bisect and the resolution of the family's sample names into one cache lookup.
@lru_cache(maxsize=1024)
def _type_line(line: str, selection: _Selection | None) -> _Declaration | None:
    """What a TYPE line declares; None when it is malformed.

    The skip prefix is set when no wanted sample name starts with the declared name: then no
    sample of the family, nor a longer name written in its group, can be wanted, and the group
    may be skipped unread.
    """
    parts = line.split(None, 3)
    if len(parts) != 4 or parts[3].strip() not in _KNOWN_TYPES:
        return None
    name = parts[2]
    skip_prefix = None
    if selection is not None:
        wanted_sorted = selection.wanted_sorted
        after = bisect_left(wanted_sorted, name)
        if after == len(wanted_sorted) or not wanted_sorted[after].startswith(name):
            skip_prefix = "\n" + name
    entries = _declared_samples(name, parts[3].strip())
    resolutions = {sample: _resolution(sample, info, selection) for sample, info in entries}
    skips_empty_lines = skip_prefix is not None and _NAME.fullmatch(name) is not None
    return _Declaration(entries, skip_prefix, resolutions, skips_empty_lines)


def _only_lines_of(text: str, start: int, end: int, prefix: str) -> bool:
    """Whether every line in text[start:end] starts with `prefix` ("\n" + a family name).

    Two counts in C, no copy. Skipping a family's group is only safe when it really holds just
    that family: an untyped family written without a TYPE or HELP line of its own directly
    after another family's samples is valid text, and would otherwise be skipped with it.
    """
    return text.count("\n", start - 1, end - 1) == text.count(prefix, start - 1, end - 1)


Identity = tuple[str, frozenset[tuple[str, str]]]
# A series as written ("name{label text}") -> its identity (name, label set). Building a label
# set costs more than the rest of a line's parse; servers write the same series the same way
# on every scrape, so this cache makes it a lookup. Bounded: emptied when full.
_IDENTITIES: dict[str, Identity] = {}
_IDENTITIES_MAX = 100_000


def _identity(written: str, name: str, labels: dict[str, str]) -> Identity:
    if len(_IDENTITIES) >= _IDENTITIES_MAX:
        _IDENTITIES.clear()
    identity = _IDENTITIES[written] = (name, frozenset(labels.items()))
    return identity


def _slice_end(text: str, start: int, end: int) -> int:
    """Where the slice of sample lines text[start:end] is cut: after the first newline past
    `_SLICE` characters, or at `end`."""
    if end - start <= _SLICE:
        return end
    cut = text.find("\n", start + _SLICE, end - 1)
    return end if cut == -1 else cut + 1


def _line_number(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def parse_exposition(
    text: str,
    *,
    keep: Collection[str] | None = None,
    max_series: int = 200_000,
    max_labels: int = 64,
    max_label_bytes: int | None = None,
    deadline: float | None = None,
) -> dict[str, MetricFamily]:
    """Parse an exposition body into families keyed as described in the module docstring.

    `keep`: only these family keys are built. Both formats require a family's lines to form one
    group after its TYPE line, so the group of an unwanted family is skipped with one `find` for
    the next comment line, without parsing its samples (two counts check that every line of
    the group starts with the family's name: an untyped family may follow without a comment;
    empty lines at its end, which TGI writes after every family, are skipped with it).
    `max_series` caps the kept series, `max_labels` the labels of one sample and
    `max_label_bytes` the UTF-8 bytes of the label text of all kept series together.
    `deadline` (a `time.monotonic()` value): past it the parse stops with `TimeoutError`.
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
    selection = _selection(frozenset(keep)) if keep is not None else None
    parser = _SampleParser(selection, openmetrics, max_series, max_labels, max_label_bytes)
    length = len(text)
    position = 0
    # Where the next comment line starts ("\n#"), found once for all slices before it.
    comment_at = -1
    # While set: "\n" + the name of an unwanted family whose group may be skipped unread.
    skip_prefix: str | None = None
    skips_empty_lines = False
    while position < length:
        if text.startswith("#", position):
            end = text.find("\n", position)
            end = length if end == -1 else end
            if text.startswith("# HELP ", position):
                # A HELP line may start an untyped family: look at its lines.
                skip_prefix, skips_empty_lines = None, False
            elif text.startswith("# TYPE ", position):
                line = text[position:end].rstrip("\r")
                declaration = _type_line(line, selection)
                if declaration is None:
                    number = _line_number(text, position)
                    raise ExpositionError(f"line {number}: malformed TYPE line {_snippet(line)!r}")
                parser.declare(declaration)
                skip_prefix = declaration.skip_prefix
                skips_empty_lines = declaration.skips_empty_lines
            elif text.startswith("# EOF", position):
                if text[end:].strip():
                    raise ExpositionError(
                        f"line {_line_number(text, end) + 1}: content after '# EOF'"
                    )
                break
            else:
                skip_prefix, skips_empty_lines = None, False  # as for HELP
            position = end + 1
            continue
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError("the parse ran past its deadline")
        if comment_at < position:
            comment_at = text.find("\n#", position)
            comment_at = length if comment_at == -1 else comment_at
        region_end = _slice_end(text, position, min(comment_at + 1, length))
        lines_end = region_end
        if skips_empty_lines:
            while lines_end - 2 >= position and text[lines_end - 2] == "\n":
                lines_end -= 1
        if skip_prefix is None or not _only_lines_of(text, position, lines_end, skip_prefix):
            parser.parse_region(text, position, region_end)
        position = region_end
    return parser.families


class _LabelNames(dict[str, str]):
    """Label text before a value's opening quote ('name=' or ',name=') -> the label name.

    Filled on first sight of each piece after checking it: the same few label names recur on
    every line, so label text is validated and split with a str.split and dict lookups
    instead of a regex per line. An invalid piece raises KeyError.
    """

    def __missing__(self, piece: str) -> str:
        if _LABEL_PIECE.fullmatch(piece) is None:
            raise KeyError(piece)
        name = self[piece] = piece.lstrip(",")[:-1]
        return name


_LABEL_PIECE = re.compile(r",?[a-zA-Z_][a-zA-Z0-9_]*=")


class _Bucket(NamedTuple):
    """A histogram bucket's key cut around its `le` value: a later key with the same prefix
    and suffix and no quote between them has the same labels but for `le`.

    Only made from a key whose labels parsed with no repeated name, so that the cut-out value
    is the one and only `le`; any quote-free text in its place leaves the other labels as they
    are, which is what makes copying them exact.
    """

    prefix: str  # name{...le="
    suffix: str  # "...}
    min_length: int
    name: str
    family_info: tuple[str, str]
    labels: dict[str, str]


# The list `parse_region` appends to before its first sample (never: no family is _SKIP).
_NOWHERE: list[Sample] = []
# Matches no key (a line holds no newline): the bucket before the first one of a region.
_NO_BUCKET = _Bucket("\n", "", 0, "", _SKIP, {})


def _bucket_of(
    key: str, brace: int, name: str, family_info: tuple[str, str], labels: dict[str, str]
) -> _Bucket:
    label_text = key[brace + 1 : -1]
    if label_text.startswith('le="'):
        value_at = brace + 5
    else:
        found = label_text.find(',le="')
        if found == -1:
            return _NO_BUCKET
        value_at = brace + 1 + found + 5
    value_end = key.find('"', value_at)
    # The quote before the value must open one (an odd number of quotes up to it), and no
    # label name may repeat (one label per pair of quotes).
    if key.count('"', 0, value_at) % 2 == 0 or len(labels) * 2 != key.count('"'):
        return _NO_BUCKET
    prefix, suffix = key[:value_at], key[value_end:]
    return _Bucket(prefix, suffix, len(prefix) + len(suffix), name, family_info, labels)


class _SampleParser:
    """Parses the sample lines of the regions that are not skipped."""

    def __init__(
        self,
        selection: _Selection | None,
        openmetrics: bool,
        max_series: int,
        max_labels: int,
        max_label_bytes: int | None = None,
    ) -> None:
        self.selection = selection
        self.keep = selection.keep if selection is not None else None
        self.wanted = selection.wanted if selection is not None else None
        self.openmetrics = openmetrics
        self.max_series = max_series
        self.max_label_bytes = max_label_bytes
        self.label_bytes = 0
        # The family the last plain sample went to and its list's append (none yet: _SKIP).
        self._appending_to: tuple[str, str] = _SKIP
        self._append = _NOWHERE.append
        self.max_labels = max_labels
        self.types = _Types()
        self.families: dict[str, MetricFamily] = {}
        # A series' identity (its name and label set, see `_IDENTITIES`) -> its sample, to keep
        # the last of duplicate series, also of one written with its labels in another order.
        self.series: dict[Identity, Sample] = {}
        # Sample name -> (family key, type), _SKIP or _INVALID; valid until the next TYPE line.
        self.resolved: dict[str, tuple[str, str]] = {}
        self.label_names = _LabelNames()

    def declare(self, declaration: _Declaration) -> None:
        self.types.by_sample.update(declaration.entries)
        # Resolutions of other names may change with the TYPE line too: start afresh.
        self.resolved = declaration.resolutions.copy()

    def _resolve(self, name: str) -> tuple[str, str]:
        resolution = self.resolved[name] = _resolution(
            name, self.types.family_of(name), self.selection
        )
        return resolution

    def parse_region(self, text: str, start: int, end: int) -> None:
        """Parse the sample lines in text[start:end].

        Lines in the plain form servers write (`name{a="x",...} value [timestamp]`, single
        spaces, no escapes) are parsed with str.split and cached lookups: whether a sample name
        is kept is decided once per name, label names are checked once per region, and a
        histogram bucket that repeats the previous bucket's labels but for `le` copies them.
        Everything else (tabs, escapes, exemplars, blank-but-not-empty lines, anything invalid)
        goes to `_parse_line`, which defines the semantics; the plain path only takes lines for
        which it gives exactly the same result.
        """
        region = text[start:end]
        lines = region.split("\n")
        if "\\" in region or "\t" in region:
            # Escapes change label values; tabs can separate fields: only the line parser.
            self._parse_lines(lines, text, start, 0, len(lines))
            return
        # The last bucket of the region, in locals: this loop runs once per sample line.
        prefix, suffix, min_length, bucket_name, bucket_info, bucket_labels = _NO_BUCKET
        for index, line in enumerate(lines):
            if not line:
                continue
            parts = line.split(" ")
            if 2 <= len(parts) <= 3:
                key = parts[0]
                if key.startswith(prefix) and key.endswith(suffix) and len(key) >= min_length:
                    le = key[len(prefix) : len(key) - len(suffix)]
                    if '"' not in le:
                        copied = bucket_labels.copy()
                        copied["le"] = le
                        if self._store_plain(key, bucket_name, bucket_info, copied, parts):
                            continue
                        self._parse_lines(lines, text, start, index, index + 1)
                        continue
                name, family_info, labels, key, bucket = self._plain_series(key)
                if family_info is _SKIP:
                    continue
                if bucket is not None:
                    prefix, suffix, min_length, bucket_name, bucket_info, bucket_labels = bucket
                if labels is not None and self._store_plain(key, name, family_info, labels, parts):
                    continue
            self._parse_lines(lines, text, start, index, index + 1)

    def _plain_series(
        self, key: str
    ) -> tuple[str, tuple[str, str], dict[str, str] | None, str, _Bucket | None]:
        """Which series a plain line's key names: its sample name, family (or _SKIP when not
        kept), labels (None when only the line parser can tell), series identity, and the
        bucket shape that the next lines of a histogram will repeat."""
        brace = key.find("{")
        name = key if brace < 0 else key[:brace]
        family_info = self.resolved.get(name) or self._resolve(name)
        if family_info is _SKIP or family_info is _INVALID:
            return name, family_info, None, key, None
        if brace < 0:
            return name, family_info, {}, key + "{}", None  # the identity, as `_add` writes it
        if key[-1] != "}":
            return name, family_info, None, key, None
        labels = self._labels(key[brace + 1 : -1])
        bucket = None
        if labels is not None and "le" in labels:
            bucket = _bucket_of(key, brace, name, family_info, labels)
        return name, family_info, labels, key, bucket

    def _store_plain(
        self,
        key: str,
        name: str,
        family_info: tuple[str, str],
        labels: dict[str, str],
        parts: list[str],
    ) -> bool:
        """Store a plain line's value; False when only the line parser can judge the line (a bad
        value or timestamp, or a new series past the cap, which it reports)."""
        try:
            value = float(parts[1])
            timestamp = None if len(parts) == 2 else self._timestamp(parts[2])
        except ValueError:
            return False
        identity = _IDENTITIES.get(key) or _identity(key, name, labels)
        previous = self.series.get(identity)
        if previous is not None:
            previous.value = value
            previous.timestamp = timestamp
            return True
        if len(self.series) >= self.max_series:
            return False
        if self.max_label_bytes is not None:
            self._count_label_bytes(key[len(name) + 1 : -1], self.max_label_bytes)
        sample = self.series[identity] = Sample(name, labels, value, timestamp)
        if family_info is not self._appending_to:
            family = self.families.get(family_info[0])
            if family is None:
                family = self.families[family_info[0]] = MetricFamily(*family_info)
            self._appending_to, self._append = family_info, family.samples.append
        self._append(sample)
        return True

    def _count_label_bytes(self, label_text: str, limit: int) -> None:
        # The callers pass `max_label_bytes` when it is set: no call per series when it is not.
        self.label_bytes += (
            len(label_text) if label_text.isascii() else len(label_text.encode("utf-8", "replace"))
        )
        if self.label_bytes > limit:
            raise ExpositionLimitError("label_bytes", f"label text above {limit} bytes")

    def _timestamp(self, text: str) -> float:
        """A plain line's timestamp in seconds; ValueError where `_add` reports it."""
        stamp = float(text)
        if not math.isfinite(stamp):
            raise ValueError(text)
        # 0.0.4 timestamps are integer milliseconds; OpenMetrics uses seconds.
        return stamp if self.openmetrics else stamp / 1000.0

    def _labels(self, label_text: str) -> dict[str, str] | None:
        """The labels of a plain line's label text; None unless `_FAST_SAMPLE` would accept it
        (no backslashes: the caller checked) with at most `max_labels` labels."""
        pieces = label_text.split('"')
        # Well-formed: name=/,name= pieces alternate with values, the first without a comma,
        # and the text ends after a closing quote (or a comma after one).
        count, unclosed = divmod(len(pieces) - 1, 2)
        if (
            unclosed
            or count > self.max_labels
            or pieces[-1] not in ("", ",")
            or label_text.startswith(",")
        ):
            return None
        labels = {}
        label_names = self.label_names
        try:
            for i in range(0, 2 * count, 2):
                labels[label_names[pieces[i]]] = pieces[i + 1]
        except KeyError:
            return None
        return labels

    def _parse_lines(self, lines: list[str], text: str, start: int, first: int, stop: int) -> None:
        """Parse lines[first:stop] (text[start:] split at newlines) one by one."""
        for index in range(first, stop):
            raw = lines[index]
            line = raw[:-1] if raw.endswith("\r") else raw
            if not line or line.isspace():
                continue
            try:
                self._parse_line(line)
            except ExpositionLimitError:
                raise  # a cap is the body's, not one line's
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
        # The label text as written finds a series seen before cheaply; one string, as
        # `parse_region` finds it in the line (a name holds no "{"). Text not seen before is
        # looked up by the label set, so that the same series with its labels reordered (or
        # spaced differently) is one series.
        written = name + "{" + label_text + "}"
        identity = _IDENTITIES.get(written) or _identity(written, name, labels)
        previous = self.series.get(identity)
        if previous is not None:
            previous.value = value
            previous.timestamp = timestamp
            return
        if len(self.series) >= self.max_series:
            raise ExpositionLimitError("series", f"more than {self.max_series} series")
        if self.max_label_bytes is not None:
            self._count_label_bytes(label_text, self.max_label_bytes)
        sample = self.series[identity] = Sample(name, labels, value, timestamp)
        key, kind = family_info
        family = self.families.get(key)
        if family is None:
            family = self.families[key] = MetricFamily(key, kind)
        family.samples.append(sample)
