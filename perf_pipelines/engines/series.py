"""Aggregation helpers shared by the engine adapters: sums, means and histograms per model."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping

from perf_pipelines.engines.canonical import Histogram
from perf_pipelines.engines.exposition import MetricFamily, Sample

Families = Mapping[str, MetricFamily]
LabelFilter = Callable[[dict[str, str]], bool]
ModelKey = str | None


def _accept_all(_labels: dict[str, str]) -> bool:
    return True


def model_names(families: Families, names: tuple[str, ...], label: str) -> set[ModelKey]:
    """Every value of the model label seen in the given families (None when unlabelled)."""
    models: set[ModelKey] = set()
    for name in names:
        family = families.get(name)
        if family is not None:
            models.update(sample.labels.get(label) for sample in family.samples)
    return models


def _values(
    family: MetricFamily | None, model_label: str | None, where: LabelFilter
) -> dict[ModelKey, list[Sample]]:
    grouped: dict[ModelKey, list[Sample]] = defaultdict(list)
    if family is None:
        return grouped
    for sample in family.samples:
        if sample.name != family.name or not where(sample.labels):
            continue
        grouped[sample.labels.get(model_label) if model_label else None].append(sample)
    return grouped


def first_present(families: Families, *names: str) -> MetricFamily | None:
    """The first family that exists: engines renamed metrics across versions."""
    for name in names:
        family = families.get(name)
        if family is not None:
            return family
    return None


def sum_by_model(
    family: MetricFamily | None, model_label: str | None, where: LabelFilter = _accept_all
) -> dict[ModelKey, float]:
    """Sum of finite sample values per model; NaN samples are ignored."""
    sums: dict[ModelKey, float] = {}
    for model, samples in _values(family, model_label, where).items():
        finite = [s.value for s in samples if not math.isnan(s.value)]
        if finite:
            sums[model] = sum(finite)
    return sums


def mean_by_model(
    family: MetricFamily | None, model_label: str | None, where: LabelFilter = _accept_all
) -> dict[ModelKey, float]:
    means: dict[ModelKey, float] = {}
    for model, samples in _values(family, model_label, where).items():
        finite = [s.value for s in samples if math.isfinite(s.value)]
        if finite:
            means[model] = sum(finite) / len(finite)
    return means


def histogram_by_model(
    family: MetricFamily | None, model_label: str | None, where: LabelFilter = _accept_all
) -> dict[ModelKey, Histogram]:
    """Cumulative histograms per model, summed over every other label (e.g. DP engines).

    Series with different bucket layouts cannot be summed; the layout seen first wins and the
    others are left out rather than mixed into wrong counts.
    """
    if family is None or family.type not in ("histogram", "gaugehistogram"):
        return {}
    buckets: dict[ModelKey, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    sums: dict[ModelKey, float] = defaultdict(float)
    counts: dict[ModelKey, float] = defaultdict(float)
    bucket_name, sum_name, count_name = (family.name + s for s in ("_bucket", "_sum", "_count"))
    for sample in family.samples:
        if not where(sample.labels):
            continue
        model = sample.labels.get(model_label) if model_label else None
        if sample.name == bucket_name:
            bound_text = sample.labels.get("le")
            if bound_text is None:
                continue
            try:
                bound = float(bound_text)
            except ValueError:
                continue
            buckets[model][bound] += sample.value
        elif sample.name == sum_name:
            sums[model] += sample.value
        elif sample.name == count_name:
            counts[model] += sample.value
    result: dict[ModelKey, Histogram] = {}
    for model, by_bound in buckets.items():
        finite = sorted(b for b in by_bound if math.isfinite(b))
        total = by_bound.get(math.inf, counts.get(model, by_bound[finite[-1]] if finite else 0.0))
        result[model] = Histogram(
            bounds=tuple(finite),
            cumulative=(*(by_bound[b] for b in finite), total),
            sum=sums.get(model),
            count=counts.get(model, total),
        )
    return result


def single_value(family: MetricFamily | None, where: LabelFilter = _accept_all) -> float | None:
    """Sum over all series of an unlabelled-by-model family (None when absent or NaN only)."""
    return sum_by_model(family, None, where).get(None)


def info_labels(family: MetricFamily | None) -> list[dict[str, str]]:
    """Label sets of an info-style gauge (payload in the labels), one per series."""
    if family is None:
        return []
    return [dict(sample.labels) for sample in family.samples]


def typed_setting(text: str) -> object:
    """Info-metric labels are strings ('None', 'True', '0.9'); turn them back into values."""
    lowered = text.strip()
    if lowered in ("None", "none", ""):
        return None
    if lowered in ("True", "true"):
        return True
    if lowered in ("False", "false"):
        return False
    try:
        number = float(lowered)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    return (
        int(number) if number.is_integer() and "." not in lowered and "e" not in lowered else number
    )
