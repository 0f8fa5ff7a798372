import pytest

from perf_pipelines.analysis.promql import (
    counter_increase,
    histogram_delta,
    histogram_quantile,
    interval_increases,
)


def test_increase_handles_resets_like_promql() -> None:
    assert counter_increase([10, 15, 30]) == 20
    # restart after 30: the new value 4 counts from zero
    assert counter_increase([10, 30, 4, 9]) == 20 + 4 + 5
    assert interval_increases([10, 30, 4, 9]) == [20, 4, 5]


def test_increase_of_a_missing_counter_is_none_not_zero() -> None:
    assert counter_increase([None, None, None]) is None
    assert counter_increase([5.0]) is None
    assert counter_increase([None, 3.0, None, 7.0]) == 4


def test_quantile_interpolates_within_the_bucket() -> None:
    bounds = [0.1, 0.5, 1.0]
    cumulative = [10, 60, 90, 100]  # last: +Inf
    # rank 95 falls in the +Inf bucket -> highest finite bound
    assert histogram_quantile(0.95, bounds, cumulative) == 1.0
    # rank 50 in (0.1, 0.5]: 0.1 + 0.4 * (50 - 10) / 50
    assert histogram_quantile(0.5, bounds, cumulative) == pytest.approx(0.42)
    # rank 5 in the first bucket interpolates from 0
    assert histogram_quantile(0.05, bounds, cumulative) == pytest.approx(0.05)
    # rank 75 in (0.5, 1.0]: 0.5 + 0.5 * (75 - 60) / 30
    assert histogram_quantile(0.75, bounds, cumulative) == pytest.approx(0.75)


def test_quantile_edge_cases() -> None:
    assert histogram_quantile(0.95, [0.1], [0, 0]) is None  # nothing observed
    assert histogram_quantile(0.5, [0.0, 1.0], [5, 8, 10]) == 0.0  # first bound <= 0
    with pytest.raises(ValueError):
        histogram_quantile(1.5, [1.0], [1, 1])


def test_delta_uses_the_later_histogram_after_a_restart() -> None:
    first = {"bounds": [0.1, 1.0], "cumulative": [5, 9, 10]}
    later = {"bounds": [0.1, 1.0], "cumulative": [7, 15, 20]}
    assert histogram_delta(first, later) == [2, 6, 10]
    restarted = {"bounds": [0.1, 1.0], "cumulative": [1, 2, 2]}
    assert histogram_delta(later, restarted) == [1, 2, 2]
    relayout = {"bounds": [0.2, 1.0], "cumulative": [1, 2, 3]}
    assert histogram_delta(first, relayout) == [1, 2, 3]
    assert histogram_delta(first, None) is None
