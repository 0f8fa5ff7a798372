"""Round trips through prometheus_client itself: whatever registry it renders, in the classic
text format and in OpenMetrics, our parser reads back the samples prometheus_client holds —
same names, same labels, same values (NaN for NaN), same timestamps.

vLLM and SGLang export through prometheus_client, so this is the closest thing to "every page a
real server can produce". The registries are random: every metric type, random names, label
values with quotes, backslashes, newlines and any Unicode, values including NaN and ±Inf.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector

from perf_pipelines.engines.exposition import parse_exposition
from tests.fuzz.strategies import label_names

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# NUL is the one character left out: prometheus_client writes it raw, and the collector refuses
# any body with a NUL byte as binary garbage (a deliberate guard, see exposition.py).
values_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=16)
# prometheus_client's OpenMetrics writer (0.26) escapes sample names with the *label* name
# rules: 'vllm:x' is written 'vllm_x' under '# TYPE vllm:x'. That is its bug, not the format's,
# and the reason the collector asks for the classic text format first (collector.ACCEPT).
# The OpenMetrics round trip therefore uses names without ':'.
metric_names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,24}", fullmatch=True)
om_metric_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,24}", fullmatch=True)
any_float = st.floats(allow_nan=True, allow_infinity=True)
counts = st.floats(min_value=0, max_value=1e15, allow_nan=False)
timestamps = st.none() | st.floats(min_value=0, max_value=4e9, allow_nan=False)


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


@st.composite
def families(draw: st.DrawFn, names: st.SearchStrategy[str] = metric_names) -> list[Metric]:
    result: list[Metric] = []
    for index in range(draw(st.integers(1, 5))):
        kind = draw(
            st.sampled_from(
                ["gauge", "counter", "histogram", "summary", "info", "unknown", "gaugehistogram"]
            )
        )
        name = f"{draw(names)}_{index}"
        labels = draw(st.lists(label_names, max_size=4, unique=True))
        doc = draw(values_text)
        family: Any
        if kind == "gauge":
            family = GaugeMetricFamily(name, doc, labels=labels)
        elif kind == "counter":
            family = CounterMetricFamily(name, doc, labels=labels)
        elif kind == "histogram":
            family = HistogramMetricFamily(name, doc, labels=labels)
        elif kind == "gaugehistogram":
            family = GaugeHistogramMetricFamily(name, doc, labels=labels)
        elif kind == "summary":
            family = SummaryMetricFamily(name, doc, labels=labels)
        elif kind == "info":
            family = InfoMetricFamily(name, doc, labels=labels)
        else:
            family = UnknownMetricFamily(name, doc, labels=labels)
        label_sets = draw(
            st.lists(st.tuples(*[values_text for _ in labels]), min_size=1, max_size=3, unique=True)
        )
        for values in label_sets:
            stamp = draw(timestamps)
            if kind in ("gauge", "unknown"):
                family.add_metric(list(values), draw(any_float), timestamp=stamp)
            elif kind == "counter":
                family.add_metric(list(values), draw(counts), timestamp=stamp)
            elif kind in ("histogram", "gaugehistogram"):
                bounds = sorted(draw(st.lists(st.floats(-1e6, 1e6), max_size=4, unique=True)))
                running, buckets = 0.0, []
                for bound in [*bounds, math.inf]:
                    running += draw(st.integers(0, 1000))
                    buckets.append(("+Inf" if bound == math.inf else repr(bound), running))
                total = draw(st.floats(-1e9, 1e9))
                family.add_metric(list(values), buckets, total, timestamp=stamp)
            elif kind == "summary":
                family.add_metric(list(values), draw(counts), draw(any_float), timestamp=stamp)
            else:
                info_names = [
                    n
                    for n in draw(st.lists(label_names, max_size=3, unique=True))
                    if n not in labels
                ]
                info = {n: draw(values_text) for n in info_names}
                family.add_metric(list(values), info, timestamp=stamp)
        result.append(family)
    return result


Flat = dict[tuple[str, tuple[tuple[str, str], ...]], tuple[float, float | None]]


def truth(metric_families: list[Metric]) -> Flat:
    flat: Flat = {}
    for family in metric_families:
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            stamp = None if sample.timestamp is None else float(sample.timestamp)
            flat[(sample.name, tuple(sorted(sample.labels.items())))] = (sample.value, stamp)
    return flat


def parsed(text: str) -> Flat:
    flat: Flat = {}
    for family in parse_exposition(text).values():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in flat
            flat[key] = (sample.value, sample.timestamp)
    return flat


def assert_round_trip(expected: Flat, got: Flat, stamp_tolerance: float) -> None:
    assert got.keys() == expected.keys()
    for key, (value, stamp) in expected.items():
        got_value, got_stamp = got[key]
        assert got_value == value or (math.isnan(got_value) and math.isnan(value)), key
        if stamp is None:
            assert got_stamp is None, key
        else:
            assert got_stamp is not None and abs(got_stamp - stamp) <= stamp_tolerance, key


@FUZZ
@given(families())
def test_classic_text_format_round_trips(metric_families: list[Metric]) -> None:
    registry = CollectorRegistry()
    registry.register(_Fixed(metric_families))
    text = generate_latest(registry).decode("utf-8")
    # 0.0.4 timestamps are whole milliseconds: prometheus_client truncates.
    assert_round_trip(truth(metric_families), parsed(text), stamp_tolerance=1e-3 + 1e-9)


@FUZZ
@given(families(om_metric_names))
def test_openmetrics_round_trips(metric_families: list[Metric]) -> None:
    registry = CollectorRegistry()
    registry.register(_Fixed(metric_families))
    text = generate_openmetrics(registry).decode("utf-8")
    assert_round_trip(truth(metric_families), parsed(text), stamp_tolerance=0.0)
