import contextlib
import math
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from perf_pipelines.engines import wanted_families
from perf_pipelines.engines.exposition import (
    ExpositionError,
    ExpositionLimitError,
    parse_exposition,
)

EXPOSITIONS = Path(__file__).parent.parent / "fixtures" / "expositions"
ALL_FIXTURES = sorted(p.name for p in EXPOSITIONS.glob("*.txt"))


def test_escaped_label_values_and_special_characters() -> None:
    text = (
        "# TYPE m gauge\n"
        'm{a="x\\"y",b="back\\\\slash",c="new\\nline",d="comma, brace} eq=",e=""} 1\n'
    )
    (sample,) = parse_exposition(text)["m"].samples
    assert sample.labels == {
        "a": 'x"y',
        "b": "back\\slash",
        "c": "new\nline",
        "d": "comma, brace} eq=",
        "e": "",
    }


@pytest.mark.parametrize(
    ("literal", "check"),
    [
        ("NaN", math.isnan),
        ("+Inf", lambda v: v == math.inf),
        ("-Inf", lambda v: v == -math.inf),
        ("1e-05", lambda v: v == 1e-05),
        ("-0.5", lambda v: v == -0.5),
        ("12", lambda v: v == 12),
    ],
)
def test_special_values(literal: str, check) -> None:  # type: ignore[no-untyped-def]
    (sample,) = parse_exposition(f"g {literal}\n")["g"].samples
    assert check(sample.value)


def test_timestamps_are_seconds_in_both_formats() -> None:
    classic = parse_exposition("# TYPE g gauge\ng 1 1764000000123\n")
    assert classic["g"].samples[0].timestamp == pytest.approx(1764000000.123)
    openmetrics = parse_exposition("# TYPE g gauge\ng 1 1764000000.5\n# EOF\n")
    assert openmetrics["g"].samples[0].timestamp == pytest.approx(1764000000.5)


def test_counter_keys_agree_between_text_and_openmetrics() -> None:
    classic = "# TYPE c_total counter\nc_total 3\n# TYPE c_created gauge\nc_created 1.7e9\n"
    openmetrics = '# TYPE c counter\nc_total 3\nc_created 1.7e9 # {trace_id="x"} 1\n# EOF\n'
    assert parse_exposition(classic, keep={"c_total"})["c_total"].samples[0].value == 3
    families = parse_exposition(openmetrics)
    assert list(families) == ["c_total"]  # the _created series is dropped
    assert families["c_total"].type == "counter"


def test_histogram_named_like_a_counter() -> None:
    text = (
        "# TYPE vllm:iteration_tokens_total histogram\n"
        'vllm:iteration_tokens_total_bucket{le="1.0"} 2\n'
        'vllm:iteration_tokens_total_bucket{le="+Inf"} 5\n'
        "vllm:iteration_tokens_total_sum 40\n"
        "vllm:iteration_tokens_total_count 5\n"
    )
    family = parse_exposition(text)["vllm:iteration_tokens_total"]
    assert family.type == "histogram"
    assert len(family.samples) == 4


def test_keep_skips_other_families() -> None:
    text = (EXPOSITIONS / "vllm_v1_0_33.txt").read_text()
    families = parse_exposition(text, keep={"vllm:num_requests_running"})
    assert list(families) == ["vllm:num_requests_running"]
    assert len(families["vllm:num_requests_running"].samples) == 2


def test_duplicate_series_keep_the_last_value() -> None:
    families = parse_exposition('g{a="1"} 1\ng{a="1"} 2\ng{a="2"} 3\n')
    assert [s.value for s in families["g"].samples] == [2, 3]


def test_crlf_line_endings() -> None:
    assert parse_exposition("# TYPE g gauge\r\ng 4\r\n")["g"].samples[0].value == 4


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_agrees_with_prometheus_client_on_kept_families(name: str) -> None:
    text = (EXPOSITIONS / name).read_text()
    ours = parse_exposition(text, keep=wanted_families(None))
    # prometheus_client appends _total to counter samples that lack it (TGI, llama.cpp).
    kept_samples = {s.name.removesuffix("_total") for f in ours.values() for s in f.samples}
    theirs = {
        (s.name.removesuffix("_total"), tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.removesuffix("_total") in kept_samples
    }
    mine = {
        (s.name.removesuffix("_total"), tuple(sorted(s.labels.items()))): s.value
        for family in ours.values()
        for s in family.samples
    }
    assert mine.keys() == theirs.keys()
    for key, value in mine.items():
        assert value == theirs[key] or (math.isnan(value) and math.isnan(theirs[key])), key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!DOCTYPE html>\n<html><body>502</body></html>\n", "line 1: expected a metric name"),
        ('vllm:num_requests_running{model_name="x\n', "line 1"),
        ('vllm:num_requests_running{model_name="x"} 1\nvllm:num_requests_waiting{mo', "truncated"),
        ("g 1\ng 12", "truncated"),
        ("g one\n", "is not a number"),
        ("g 1 2 3\n", r"expected 'value \[timestamp\]'"),
        ("g 1 NaN\n", "not finite"),
        ("# TYPE g weird\ng 1\n", "malformed TYPE line"),
        ("g 1\n# EOF\ng 2\n", "content after '# EOF'"),
        ("g\x00 1\n", "NUL"),
        ("{} 1\n", "expected a metric name"),
    ],
)
def test_bad_input_raises_exposition_error(text: str, message: str) -> None:
    with pytest.raises(ExpositionError, match=message):
        parse_exposition(text)


def test_series_cap() -> None:
    text = "".join(f'g{{i="{i}"}} 1\n' for i in range(101))
    with pytest.raises(ExpositionError, match="more than 100 series"):
        parse_exposition(text, max_series=100)


def test_label_cap() -> None:
    labels = ",".join(f'l{i}="v"' for i in range(65))
    with pytest.raises(ExpositionError, match="65 labels exceed the cap of 64"):
        parse_exposition(f"g{{{labels}}} 1\n")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=400))
def test_arbitrary_text_raises_nothing_but_exposition_error(text: str) -> None:
    with contextlib.suppress(ExpositionError):
        parse_exposition(text)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "# TYPE vllm:num_requests_running gauge\n",
                'vllm:num_requests_running{engine="0",model_name="m"} 3\n',
                "# TYPE h histogram\n",
                'h_bucket{le="0.1"} 1\n',
                'h_bucket{le="+Inf"} 2\n',
                "h_sum 0.3\n",
                "# EOF\n",
                'x{a="\\"} 1\n',
                "{\n",
                " \n",
                "g NaN\n",
            ]
        ),
        max_size=30,
    ),
    st.integers(min_value=0, max_value=5),
)
def test_truncated_fragments_raise_nothing_but_exposition_error(lines: list[str], cut: int) -> None:
    text = "".join(lines)
    with contextlib.suppress(ExpositionError):
        parse_exposition(text[: max(0, len(text) - cut)], keep={"vllm:num_requests_running", "h"})


@pytest.mark.parametrize(
    "second",
    [
        'm{b="2",a="1"} 5\n',  # the plain path
        'm{b="2", a="1"} 5\n',  # the line parser (a space after the comma)
        'm{b="2",a="1",} 5\n',  # a trailing comma
    ],
    ids=["plain", "spaced", "trailing-comma"],
)
def test_a_series_with_its_labels_reordered_is_the_same_series(second: str) -> None:
    (sample,) = parse_exposition('# TYPE m counter\nm{a="1",b="2"} 3\n' + second)["m"].samples
    assert sample.labels == {"a": "1", "b": "2"} and sample.value == 5  # the last, not 3 + 5


def test_reordered_histogram_buckets_are_the_same_buckets() -> None:
    text = (
        "# TYPE h histogram\n"
        'h_bucket{m="x",le="1"} 1\nh_bucket{m="x",le="+Inf"} 2\n'
        'h_bucket{le="1",m="x"} 3\nh_bucket{le="+Inf",m="x"} 4\n'
        'h_sum{m="x"} 1\nh_count{m="x"} 4\n'
    )
    buckets = [s for s in parse_exposition(text)["h"].samples if s.name == "h_bucket"]
    assert [(s.labels["le"], s.value) for s in buckets] == [("1", 3), ("+Inf", 4)]


def test_the_series_cap_counts_a_reordered_series_once() -> None:
    text = 'm{a="1",b="2"} 1\nm{b="2",a="1"} 2\n'
    assert parse_exposition(text, max_series=1)["m"].samples[0].value == 2


def test_label_text_cap() -> None:
    text = "".join(f'g{{i="{i:04d}"}} 1\n' for i in range(100))  # 8 bytes of label text each
    assert len(parse_exposition(text, max_label_bytes=800)["g"].samples) == 100
    with pytest.raises(ExpositionLimitError, match="label text above 799 bytes") as caught:
        parse_exposition(text, max_label_bytes=799)
    assert caught.value.limit == "label_bytes"


def test_label_text_cap_counts_utf8_bytes() -> None:
    text = 'g{i="ééé"} 1\n'  # `i="ééé"`: 7 characters, 10 bytes
    parse_exposition(text, max_label_bytes=10)
    with pytest.raises(ExpositionLimitError):
        parse_exposition(text, max_label_bytes=9)


def test_series_cap_is_a_limit_error() -> None:
    with pytest.raises(ExpositionLimitError) as caught:
        parse_exposition('g{i="1"} 1\ng{i="2"} 1\n', max_series=1)
    assert caught.value.limit == "series"


def test_a_parse_past_its_deadline_stops() -> None:
    # 2 MiB of lines, in slices of 256 KiB: the deadline is looked at between two.
    text = 'm{a="\\\\x"} 1\n' * (2 * 1024 * 1024 // 14)
    with pytest.raises(TimeoutError):
        parse_exposition(text, deadline=time.monotonic() - 1)
    assert parse_exposition(text, deadline=time.monotonic() + 600)["m"].samples[0].value == 1


def test_slices_give_the_same_result_as_one_region() -> None:
    """A family far longer than one slice, an unwanted one skipped across slices, and an
    untyped family right after the last slice, without a comment line of its own."""
    kept = "".join(f'k{{i="{i}"}} {i}\n' for i in range(30_000))
    skipped = "".join(f's{{i="{i}"}} 1\n' for i in range(30_000))
    text = f"# TYPE s gauge\n{skipped}# TYPE k gauge\n{kept}u 7\n"
    assert len(text) > 3 * 256 * 1024
    families = parse_exposition(text, keep={"k", "u"})
    assert set(families) == {"k", "u"}
    assert [s.value for s in families["k"].samples] == list(range(30_000))
    assert families["u"].samples[0].value == 7
