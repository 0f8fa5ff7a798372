"""Property tests of the exposition parser: whatever a server sends, the parser returns what a
correct reader would, or raises `ExpositionError` — never another exception — and its output
stays within the series and label caps.

tests/collection/test_exposition.py has the example-based cases and a first fuzz over short
random text; these go further: arbitrary bytes as the collector decodes them, structured
expositions with a model of the expected values, mutations of valid bodies, the caps, and
the `keep` fast path against a full parse.
"""

from __future__ import annotations

import contextlib
import math
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from perf_pipelines.engines import snapshots_from_text
from perf_pipelines.engines.canonical import Engine
from perf_pipelines.engines.exposition import ExpositionError, MetricFamily, parse_exposition
from tests.fuzz.strategies import (
    Exposition,
    SeriesKey,
    escape_label_value,
    expositions,
    label_values,
    same_value,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HINTS: tuple[Engine | None, ...] = (None, *Engine)


def flatten(families: dict[str, MetricFamily]) -> dict[SeriesKey, tuple[float, float | None]]:
    flat: dict[SeriesKey, tuple[float, float | None]] = {}
    for family in families.values():
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in flat, f"series {key} returned twice"
            flat[key] = (sample.value, sample.timestamp)
    return flat


def assert_same(
    got: dict[SeriesKey, tuple[float, float | None]],
    expected: dict[SeriesKey, tuple[float, float | None]],
) -> None:
    assert got.keys() == expected.keys()
    for key, (value, stamp) in expected.items():
        got_value, got_stamp = got[key]
        assert same_value(got_value, value), (key, got_value, value)
        assert got_stamp == stamp, (key, got_stamp, stamp)


def decode_like_the_collector(body: bytes) -> str:
    """UTF-8 as the collector decodes; other bytes via latin-1 so that they reach the parser too."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body.decode("latin-1")


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_nothing_but_exposition_error(body: bytes) -> None:
    text = decode_like_the_collector(body)
    with contextlib.suppress(ExpositionError):
        parse_exposition(text)
    for hint in HINTS:
        with contextlib.suppress(ExpositionError):
            snapshots_from_text(text, hint)


@FUZZ
@given(expositions())
def test_generated_expositions_parse_to_the_expected_values(exposition: Exposition) -> None:
    families = parse_exposition(exposition.text)
    assert_same(flatten(families), exposition.expected)
    for family in families.values():
        for sample in family.samples:
            assert exposition.family_of[sample.name] == (family.name, family.type), sample.name
            assert isinstance(sample.value, float)
            assert sample.timestamp is None or math.isfinite(sample.timestamp)


@FUZZ
@given(expositions(), st.data())
def test_keep_returns_exactly_the_kept_families_of_a_full_parse(
    exposition: Exposition, data: st.DataObject
) -> None:
    everything = parse_exposition(exposition.text)
    keys = sorted({key for key, _kind in exposition.family_of.values()})
    keep = set(data.draw(st.lists(st.sampled_from(keys), unique=True) if keys else st.just([])))
    keep.add("not_in_the_page")
    kept = parse_exposition(exposition.text, keep=keep)
    assert set(kept) == set(everything) & keep
    assert_same(flatten(kept), flatten({k: v for k, v in everything.items() if k in keep}))


def test_keep_does_not_skip_an_untyped_family_written_right_after_an_unwanted_one() -> None:
    # Found by test_keep_returns_exactly_the_kept_families_of_a_full_parse: the group after an
    # unwanted family's TYPE line was skipped whole, with the samples of an untyped family
    # that followed without a comment line of its own (valid in both formats).
    text = "# TYPE other gauge\nother 1\nwanted 2\n# TYPE last gauge\nlast 3\n"
    families = parse_exposition(text, keep={"wanted"})
    assert [s.value for s in families["wanted"].samples] == [2.0]
    # A prefix of a wanted name is not enough to skip either.
    text = "# TYPE vllm:num gauge\nvllm:num 1\nvllm:num_requests_running 2\n"
    families = parse_exposition(text, keep={"vllm:num_requests_running"})
    assert [s.value for s in families["vllm:num_requests_running"].samples] == [2.0]


@FUZZ
@given(expositions(), st.integers(0, 40))
def test_series_cap_is_enforced_with_a_clear_error(exposition: Exposition, cap: int) -> None:
    series = len(exposition.expected)
    if series > cap:
        with pytest.raises(ExpositionError, match=f"more than {cap} series"):
            parse_exposition(exposition.text, max_series=cap)
    else:
        families = parse_exposition(exposition.text, max_series=cap)
        assert sum(len(f.samples) for f in families.values()) <= cap


@FUZZ
@given(
    st.integers(0, 150),
    st.integers(1, 100),
    st.booleans(),
    label_values,
)
def test_label_cap_is_enforced_on_both_paths(
    count: int, cap: int, escaped: bool, value: str
) -> None:
    # An escaped value sends the line down the slow path; a plain one takes the fast regex.
    text_value = escape_label_value(value) if escaped else "v"
    labels = ",".join(f'l{i}="{text_value}"' for i in range(count))
    body = f"g{{{labels}}} 1\n"
    if count > cap:
        with pytest.raises(ExpositionError, match=f"{count} labels exceed the cap of {cap}"):
            parse_exposition(body, max_labels=cap)
    else:
        (family,) = parse_exposition(body, max_labels=cap).values()
        assert len(family.samples[0].labels) == count


def test_collector_entry_point_applies_the_label_cap() -> None:
    labels = ",".join(f'l{i}="v"' for i in range(65))
    body = f'vllm:num_requests_running{{model_name="m",{labels}}} 1\n'
    with pytest.raises(ExpositionError, match="labels exceed the cap of 64"):
        snapshots_from_text(body, None)


@pytest.mark.parametrize("count", [10_000, 200_000])
def test_huge_label_counts_are_refused_quickly(count: int) -> None:
    for value in ("v", 'v\\"'):  # fast and slow path
        body = "g{" + ",".join(f'l{i}="{value}"' for i in range(count)) + "} 1\n"
        started = time.perf_counter()
        with pytest.raises(ExpositionError, match="exceed the cap"):
            parse_exposition(body)
        assert time.perf_counter() - started < 2.0


_MUTATIONS = st.sampled_from(["delete", "insert", "truncate", "duplicate", "swap"])


@FUZZ
@given(expositions(), st.lists(st.tuples(_MUTATIONS, st.integers(0, 10**6), st.text(max_size=6))))
def test_mutated_expositions_raise_nothing_but_exposition_error(
    exposition: Exposition, mutations: list[tuple[str, int, str]]
) -> None:
    text = exposition.text
    assume(text)
    for kind, where, insert in mutations:
        at = where % (len(text) + 1)
        if kind == "delete":
            text = text[:at] + text[at + 1 + len(insert) :]
        elif kind == "insert":
            text = text[:at] + insert + text[at:]
        elif kind == "truncate":
            text = text[:at]
        elif kind == "duplicate":
            text = text[:at] + text[at : at + 40] + text[at:]
        else:
            text = text[at:] + text[:at]
    with contextlib.suppress(ExpositionError):
        parse_exposition(text, max_series=50)
    for hint in HINTS:
        with contextlib.suppress(ExpositionError):
            snapshots_from_text(text, hint, max_series=50)
