"""The plain-line fast path of `parse_exposition` against the line-by-line parser.

`_SampleParser.parse_region` takes lines in the form servers write with str.split, cached name
resolutions and, for histogram buckets, the previous bucket's labels; everything else goes to
`_parse_line`, which defines the semantics. These tests pin the two together: the same body
parsed with the fast path and with `_parse_line` alone gives the same families, in the same
order, with the same label order, values and errors.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perf_pipelines.engines import exposition, wanted_families
from perf_pipelines.engines.exposition import ExpositionError, MetricFamily, parse_exposition

EXPOSITIONS = Path(__file__).parent.parent / "fixtures" / "expositions"
ALL_FIXTURES = sorted(p.name for p in EXPOSITIONS.glob("*.txt"))
KEEPS: list[frozenset[str] | None] = [
    None,
    wanted_families(None),
    frozenset({"g", "h", "x_total", "m", "vllm:num_requests_running"}),
]

Outcome = tuple[str, object]


def _outcome(text: str, **kwargs: object) -> Outcome:
    """Everything observable: keys, types, samples (label order included) or the error."""
    try:
        families: dict[str, MetricFamily] = parse_exposition(text, **kwargs)  # type: ignore[arg-type]
    except ExpositionError as exc:
        return "error", str(exc)
    return "ok", [
        (
            key,
            family.name,
            family.type,
            [
                (s.name, list(s.labels.items()), repr(s.value), repr(s.timestamp))
                for s in family.samples
            ],
        )
        for key, family in families.items()
    ]


def _line_by_line(self: exposition._SampleParser, text: str, start: int, end: int) -> None:
    lines = text[start:end].split("\n")
    self._parse_lines(lines, text, start, 0, len(lines))


def _both(text: str, monkeypatch: pytest.MonkeyPatch, **kwargs: object) -> tuple[Outcome, Outcome]:
    fast = _outcome(text, **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(exposition._SampleParser, "parse_region", _line_by_line)
        reference = _outcome(text, **kwargs)
    return fast, reference


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_fixtures_parse_the_same_on_both_paths(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (EXPOSITIONS / name).read_text()
    for body in (text, text.replace("\n", "\r\n")):
        for keep in KEEPS:
            fast, reference = _both(body, monkeypatch, keep=keep)
            assert fast == reference
            assert fast[0] == "ok"


# Lines that are valid, or nearly: the pieces the fast path takes apart, and ways to break them.
_names = st.sampled_from(
    [
        *("g", "h_bucket", "h_sum", "h_count", "h_created", "x", "x_total", "x_created", "m"),
        *("m_count", "vllm:num_requests_running", "9g", "g}", "", "h"),
    ]
)
_label_names = st.sampled_from(["a", "le", "le", "b_2", "", "1a", " a", "handle", "xle"])
_label_values = st.sampled_from(
    [
        *("", "0.1", "+Inf", "x y", 'q"', "\\", '\\"', "\\n", "}", "{", ",", "=", "#", " # ", "\r"),
        *("\t", ",le=", "le=", "a,le=", "é"),
    ]
)
_values = st.sampled_from(
    ["1", "0", "-1.5e3", "NaN", "+Inf", "-Inf", "1_0", "", "x", "1\r", "\x0b1", "1\x0b", "1#"]
)
_stamps = st.sampled_from([None, "1700000000000", "1.5", "NaN", "inf", "x", ""])
_seps = st.sampled_from([" ", " ", " ", "  ", "\t", ""])


@st.composite
def _sample_lines(draw: st.DrawFn) -> str:
    labels = draw(st.lists(st.tuples(_label_names, _label_values), max_size=4))
    style = draw(st.integers(0, 9))  # 0-4: a deliberate defect in the label block
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    inner = {0: inner + ",", 1: "," + inner, 2: inner.replace('"', "", 1), 3: inner + '"'}.get(
        style, inner
    )
    block = "" if not labels and style > 5 else "{" + inner + ("" if style == 4 else "}")
    line = draw(_names) + block + draw(_seps) + draw(_values)
    stamp = draw(_stamps)
    if stamp is not None:
        line += draw(_seps) + stamp
    if draw(st.integers(0, 8)) == 0:
        line += ' # {trace_id="a"} 1'
    return line


@st.composite
def _bucket_groups(draw: st.DrawFn) -> list[str]:
    """Buckets that share every label but `le` (where the fast path copies labels), with `le`
    anywhere among them and now and then a line that only looks like the one before."""
    base = draw(st.lists(st.tuples(_label_names, _label_values), max_size=3))
    at = draw(st.integers(0, 3))
    lines = []
    for le in draw(st.lists(_label_values, min_size=1, max_size=6)):
        labels = list(base)
        labels.insert(min(at, len(labels)), ("le", le))
        if draw(st.integers(0, 5)) == 0:
            labels.append(draw(st.tuples(_label_names, _label_values)))
        inner = ",".join(f'{k}="{v}"' for k, v in labels)
        lines.append("h_bucket{" + inner + "}" + draw(_seps) + draw(_values))
    return lines


_comments = st.sampled_from(
    [
        *("# TYPE g gauge", "# TYPE h histogram", "# TYPE x counter", "# TYPE m summary"),
        *("# TYPE x_total counter", "# TYPE g untyped", "# TYPE h bogus", "# HELP g text"),
        *("# TYPE vllm:num_requests_running gauge", "# comment", "", " ", "\r"),
        *("# TYPE 9g gauge", "# TYPE g} gauge"),
    ]
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(_sample_lines(), _comments, _bucket_groups().map("\n".join)), max_size=12),
    st.sampled_from(["\n", "\r\n"]),
    st.booleans(),
    st.sampled_from(KEEPS),
    st.sampled_from([{}, {"max_series": 3}, {"max_labels": 2}]),
)
def test_near_valid_bodies_parse_the_same_on_both_paths(
    lines: list[str], newline: str, eof: bool, keep: frozenset[str] | None, caps: dict[str, int]
) -> None:
    text = newline.join(lines) + newline + ("# EOF\n" if eof else "")
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast, reference = _both(text, monkeypatch, keep=keep, **caps)
    assert fast == reference


# Each body probes one check of the fast path: without it, the fast path would accept the line
# (or reuse a bucket's labels) where `_parse_line` reads something else or raises.
@pytest.mark.parametrize(
    "text",
    [
        'g{a=",} 1\n',  # an unclosed quote
        "g{,} 1\n",  # a comma and no label
        'g{,a="1"} 1\n',  # a leading comma
        'g{a="1",,b="2"} 1\n',  # two commas
        'g{a = "1"} 1\n',  # spaces around '='
        'g{a="1"}} 1\n',  # a stray brace
        "g 1\t\x0b\n",  # a tab: then "\x0b" is a timestamp
        "g 1 2 3\n",  # too many fields
        "g 1 NaN\n",  # a timestamp that is not finite
        "g 1 2\r\n",  # CRLF after a timestamp
        "g-x 1\n",  # not a metric name
        "# TYPE g-x gauge\ng-x 1\n",  # not a metric name, even when declared
        'h_bucket{le="1",le="2"} 1\nh_bucket{le="3",le="2"} 1\n',  # `le` twice
        'h_bucket{a=",le=",le="1"} 1\nh_bucket{a=",le=",b="1"} 2\n',  # `,le="` in a value
        'h_bucket{le="1",a="x"} 1\nh_bucket{le="2",a="y"} 2\n',  # same prefix, other suffix
        'h_bucket{le="1"} 1\nh_bucket{le="2"x"} 2\n',  # a quote where `le` was
        'h_bucket{a="1",le="0.5"} 1\nh_bucket{a="1",le="0.5",b="2"} 2\n',  # one more label
        "x{} 1\nx 2\n",  # one series
        "# TYPE x counter\nx_total 1\nx_created 2\nx_total{} 3\n",
        "# TYPE 9g gauge\n9g 1\n\n",  # a skippable group, but of no metric name
        '# TYPE h histogram\nh_bucket{le="1"} 1\n\n\nx 1\n',  # empty lines, then another
    ],
)
def test_each_check_of_the_fast_path(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for keep in KEEPS:
        for caps in ({}, {"max_series": 1}, {"max_labels": 1}):
            fast, reference = _both(text, monkeypatch, keep=keep, **caps)
            assert fast == reference


def test_special_values_and_timestamps_on_the_fast_path() -> None:
    text = (
        '# TYPE g gauge\ng{a="1"} +Inf\ng{a="2"} -Inf\ng{a="3"} NaN\ng{a="4"} 1e-05 1764000000123\n'
    )
    values = [s.value for s in parse_exposition(text)["g"].samples]
    assert values[:2] == [math.inf, -math.inf]
    assert math.isnan(values[2]) and values[3] == 1e-05
    assert parse_exposition(text)["g"].samples[3].timestamp == pytest.approx(1764000000.123)
    with pytest.raises(ExpositionError, match="line 2: timestamp 'NaN' is not finite"):
        parse_exposition('# TYPE g gauge\ng{a="1"} 1 NaN\n')


def test_empty_label_set_is_the_same_series_as_no_labels() -> None:
    (sample,) = parse_exposition("x{} 1\nx 2\n")["x"].samples
    assert sample.labels == {} and sample.value == 2


def test_buckets_copy_every_label_but_le() -> None:
    text = (
        "# TYPE h histogram\n"
        'h_bucket{handle="a",le="0.1",model="m"} 1\n'
        'h_bucket{handle="a",le="+Inf",model="m"} 2\n'
        'h_bucket{handle="b",le="+Inf",model="m"} 3\n'
        'h_bucket{handle="b",le="+Inf",le="5",model="m"} 4\n'  # a repeated name: last wins
        'h_bucket{handle=",le=",le="1",model="m"} 5\n'  # a value that looks like a label
    )
    samples = parse_exposition(text)["h"].samples
    assert [list(s.labels.items()) for s in samples] == [
        [("handle", "a"), ("le", "0.1"), ("model", "m")],
        [("handle", "a"), ("le", "+Inf"), ("model", "m")],
        [("handle", "b"), ("le", "+Inf"), ("model", "m")],
        [("handle", "b"), ("le", "5"), ("model", "m")],
        [("handle", ",le="), ("le", "1"), ("model", "m")],
    ]
    # Every sample owns its labels: changing one changes no other, nor the next parse.
    samples[0].labels["model"] = "changed"
    assert samples[1].labels["model"] == "m"
    assert parse_exposition(text)["h"].samples[0].labels["model"] == "m"


def test_lines_the_fast_path_leaves_to_the_line_parser() -> None:
    text = (
        "# TYPE g gauge\n"
        'g{a="x\\"y"} 1\n'  # an escape
        'g{a="tab"}\t2\n'  # a tab separator
        'g{a="two  spaces"}  3\n'  # a space in a value, two spaces
        "  \n"  # a blank line of spaces
        'g{a="ex"} 4 # {trace_id="t"} 1\n'  # an exemplar
    )
    labels = [s.labels["a"] for s in parse_exposition(text)["g"].samples]
    assert labels == ['x"y', "tab", "two  spaces", "ex"]


def test_repeated_parses_with_the_same_keep_agree() -> None:
    text = (EXPOSITIONS / "tgi_3_3.txt").read_text()
    keep = wanted_families(None)
    assert _outcome(text, keep=keep) == _outcome(text, keep=keep) == _outcome(text, keep=set(keep))


def test_unwanted_groups_are_skipped_with_their_empty_lines_only_for_metric_names() -> None:
    keep = wanted_families(None)
    text = '# TYPE tgi_x histogram\ntgi_x_bucket{le="1"} 1\n\n# TYPE tgi_queue_size gauge\n'
    assert parse_exposition(text + "tgi_queue_size 3\n", keep=keep)["tgi_queue_size"].samples
    # A group is skipped unread only when all of its lines are the family's; "9g" is no metric
    # name, and the empty line makes the group one that is read: its line is an error.
    with pytest.raises(ExpositionError, match="line 2: expected a metric name"):
        parse_exposition("# TYPE 9g gauge\n9g 1\n\n", keep=keep)
