import pytest

from perf_pipelines.health.cron import max_gap_seconds, stale_after_seconds


@pytest.mark.parametrize(
    ("cron", "gap"),
    [
        ("* * * * *", 60),
        ("*/5 * * * *", 300),
        ("*/7 * * * *", 420),  # :56 to :00 is shorter than the steps
        ("0 * * * *", 3600),
        ("0,10 * * * *", 3000),
        ("15 2 * * *", 86400),
        ("0 8-17 * * 1-5", 63 * 3600),  # Friday 17:00 to Monday 08:00
        ("0 9,17 * * *", 16 * 3600),
        ("30 2 * * mon-fri", 3 * 86400),  # Friday to Monday
        ("0 0 * * 1", 7 * 86400),
        ("0 0 * * 7", 7 * 86400),  # 7 is Sunday too
        ("0 0 1 * *", 31 * 86400),
        ("0 0 1 * mon", 7 * 86400),  # both day fields restricted: either one fires
        ("0-30/15 */6 * JAN-DEC *", 6 * 3600 - 30 * 60),
        ("5-1 * * * *", 240),  # croniter (and so Dagster) reads a reversed range as wrapping
        ("0 0 * 1-6 *", 185 * 86400),  # 30 June to 1 January
        ("0 0 29 2 *", 1461 * 86400),  # leap days only
    ],
)
def test_longest_gap(cron: str, gap: int) -> None:
    assert max_gap_seconds(cron) == gap


@pytest.mark.parametrize(
    "cron", ["", "* * * *", "61 * * * *", "*/0 * * * *", "x * * * *", "0 0 * * * 5", "0 0 30 2 *"]
)
def test_unreadable_expressions(cron: str) -> None:
    assert max_gap_seconds(cron) is None


@pytest.mark.parametrize(
    ("cron", "stale_after"),
    [("* * * * *", 240.0), ("*/5 * * * *", 720.0), ("0 * * * *", 7320.0), ("nope", 3600.0)],
)
def test_stale_after(cron: str, stale_after: float) -> None:
    assert stale_after_seconds(cron) == stale_after
