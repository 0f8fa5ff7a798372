"""The longest gap between two firings of a 5-field cron expression, and when a scheduled run
is overdue.

The health checks call a scheduled job stale when its newest run is older than about two such
gaps: the job for the optimization cycle, the sidecar for `health_check` itself. That needs no
full cron engine, only the set of firing minutes over one week (or a year for monthly patterns).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}
_DAYS = {
    name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
}
# (low, high, names) for minute, hour, day of month, month, day of week
_FIELDS: tuple[tuple[int, int, dict[str, int]], ...] = (
    (0, 59, {}),
    (0, 23, {}),
    (1, 31, {}),
    (1, 12, _MONTHS),
    (0, 7, _DAYS),
)
_WINDOW_DAYS = 8
_SCAN_DAYS = 400
STALE_GAPS = 2  # a run may be missed once
STALE_GRACE_S = 120.0  # the daemon's loop and the run's own duration
STALE_FALLBACK_S = 3600.0  # when the expression cannot be read


def _value(text: str, names: dict[str, int]) -> int:
    return names[text.lower()] if text.lower() in names else int(text)


def _parse_field(text: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        spec, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"bad step in {part!r}")
        if spec in ("*", "?"):
            start, end = low, high
        elif "-" in spec:
            first, last = spec.split("-", 1)
            start, end = _value(first, names), _value(last, names)
        else:
            start = _value(spec, names)
            end = high if step_text else start
        if not (low <= start <= high and low <= end <= high and start <= end):
            raise ValueError(f"{part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return values


def max_gap_seconds(cron: str) -> float | None:
    """The longest wait between consecutive firings, or None when `cron` cannot be read."""
    fields = cron.split()
    if len(fields) != 5:
        return None
    try:
        minutes, hours, days, months, weekdays = (
            _parse_field(text, low, high, names)
            for text, (low, high, names) in zip(fields, _FIELDS, strict=True)
        )
    except (ValueError, KeyError):
        return None
    weekdays = {7 if d == 0 else d for d in weekdays} | {0 if d == 7 else d for d in weekdays}
    days_restricted, weekdays_restricted = fields[2] not in ("*", "?"), fields[4] not in ("*", "?")
    start = datetime(2024, 1, 1, tzinfo=UTC)
    matching: list[datetime] = []
    for offset in range(_SCAN_DAYS):
        day = start + timedelta(days=offset)
        if day.month not in months:
            continue
        cron_weekday = (day.weekday() + 1) % 7  # cron: 0 = Sunday
        day_ok, weekday_ok = day.day in days, cron_weekday in weekdays
        # Standard cron: when both day fields are restricted, either one matching is enough.
        if days_restricted and weekdays_restricted:
            matches = day_ok or weekday_ok
        else:
            matches = day_ok and weekday_ok
        if matches:
            matching.append(day)
    per_day = len(hours) * len(minutes)
    # A week and a day covers every daily and weekly pattern and its wrap-around; monthly and
    # yearly patterns need the whole scan (they fire on few days, so it stays small).
    week = [day for day in matching if day < start + timedelta(days=_WINDOW_DAYS)]
    firings = [
        day.replace(hour=h, minute=m)
        for day in (week if len(week) * per_day >= 2 else matching)
        for h in sorted(hours)
        for m in sorted(minutes)
    ]
    if len(firings) < 2:
        return None
    return max((b - a).total_seconds() for a, b in pairwise(firings))


def stale_after_seconds(cron: str) -> float:
    """How long after its newest run a job on `cron` counts as stale: two of its longest gaps
    plus two minutes (an hour when `cron` cannot be read)."""
    gap = max_gap_seconds(cron)
    return STALE_FALLBACK_S if gap is None else STALE_GAPS * gap + STALE_GRACE_S
