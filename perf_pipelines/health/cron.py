"""The longest gap between two firings of a 5-field cron expression, and when a scheduled run
is overdue.

The health checks call a scheduled job stale when its newest run is older than about two such
gaps: the job for the optimization cycle, the sidecar for `health_check` itself.

croniter (the library Dagster's scheduler is built on, which Dagster vendors) reads the
expression. A cron expression is a cross product of the firing days and the firing times of a
day (schedules run in UTC, no daylight-saving shifts), so the longest gap is found from two
short iterations instead of every firing over years: the times of one day (at most 1,440) and
the days over four years and two months (at most ~1,500, enough for a 29 February rule).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

from croniter import CroniterError, croniter

_START = datetime(2024, 1, 1, tzinfo=UTC)  # a leap year: 29 February is in the scan
_DAYS_END = datetime(2028, 3, 1, tzinfo=UTC)  # past the next 29 February
STALE_GAPS = 2  # a run may be missed once
STALE_GRACE_S = 120.0  # the daemon's loop and the run's own duration
STALE_FALLBACK_S = 3600.0  # when the expression cannot be read


def _firings(expression: str, end: datetime) -> list[datetime]:
    """Every firing of `expression` from _START (included) up to `end` (excluded)."""
    iterator = croniter(expression, _START - timedelta(seconds=1))
    firings: list[datetime] = []
    while (moment := iterator.get_next(datetime)) < end:
        firings.append(moment)
    return firings


def max_gap_seconds(cron: str) -> float | None:
    """The longest wait between consecutive firings, or None when `cron` cannot be read or
    fires fewer than twice in four years."""
    fields = cron.split()
    if len(fields) != 5 or not croniter.is_valid(cron):
        return None
    minute, hour, day, month, weekday = fields
    try:
        times = _firings(f"{minute} {hour} * * *", _START + timedelta(days=1))
        days = _firings(f"0 0 {day} {month} {weekday}", _DAYS_END)
    except CroniterError:  # no firing at all, e.g. 30 February
        return None
    if not times or not days or len(times) * len(days) < 2:
        return None
    # Within a firing day; then from a day's last firing to the next firing day's first one.
    offsets = [moment - _START for moment in times]
    gaps = [b - a for a, b in pairwise(offsets)]
    gaps += [(b - a) - (offsets[-1] - offsets[0]) for a, b in pairwise(days)]
    return max(gaps).total_seconds()


def stale_after_seconds(cron: str) -> float:
    """How long after its newest run a job on `cron` counts as stale: two of its longest gaps
    plus two minutes (an hour when `cron` cannot be read)."""
    gap = max_gap_seconds(cron)
    return STALE_FALLBACK_S if gap is None else STALE_GAPS * gap + STALE_GRACE_S
