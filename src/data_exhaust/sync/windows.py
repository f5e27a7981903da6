"""Date windows from a cron schedule: consecutive, never overlapping, never leaving a gap.

Exhausts are asked for by whole dates, so a schedule is read at the granularity of a day: the
*fire dates* of a crontab expression are the dates (in the sync's time zone) on which it fires at
least once. Consecutive fire dates ``d0 < d1`` give the window ``[d0, d1 - 1 day]`` (the
half-open interval ``[t0, t1)`` of the spec, as inclusive dates). A schedule that fires several
times a day (``* * * * *``) therefore yields daily windows. A window is *due* once it has ended,
that is when ``d1 <= today``.

Each new window starts the day after the previous one ended, so a schedule's windows tile the
calendar from its first fire date on, whatever happened in between (a changed schedule, a missed
run, a re-run): after a schedule change the first window runs from the day after the last one to
the day before the new schedule's next fire date.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from croniter import CroniterBadCronError, croniter

ONE_DAY = timedelta(days=1)


class BadSchedule(ValueError):
    """A crontab expression that cannot be read."""


@dataclass(frozen=True)
class Window:
    start_date: date
    end_date: date


def check_frequency(frequency: str) -> str:
    """``frequency`` if croniter reads it (five fields), else BadSchedule with a hint."""
    if len(frequency.split()) != 5 or not croniter.is_valid(frequency):
        raise BadSchedule(
            f"{frequency!r} is not a five-field crontab expression "
            '(minute hour day-of-month month day-of-week, e.g. "0 0 * * *" daily, '
            '"0 0 * * SUN" weekly)'
        )
    return frequency


def check_cron(expression: str) -> str:
    """A cron of 5 fields, or 6 with seconds last (for the daemon's own steps)."""
    if len(expression.split()) not in (5, 6) or not croniter.is_valid(expression):
        raise BadSchedule(
            f"{expression!r} is not a crontab expression (5 fields, or 6 with seconds last)"
        )
    return expression


def next_fire_date(frequency: str, on_or_after: date, tz: ZoneInfo) -> date:
    """The first date, ``on_or_after`` or later, on which ``frequency`` fires."""
    start = datetime.combine(on_or_after, time(), tz) - timedelta(microseconds=1)
    try:
        fired: datetime = croniter(frequency, start).get_next(datetime)
    except (CroniterBadCronError, ValueError) as exc:
        raise BadSchedule(str(exc)) from None
    return fired.astimezone(tz).date()


def first_start(frequency: str, since: date, last_end: date | None, tz: ZoneInfo) -> date:
    """Where a schedule's next window starts: the day after its last window, or the first fire
    date at or after ``since`` when that is later (a schedule re-added with a later ``since``
    skips the days in between on purpose)."""
    fresh = next_fire_date(frequency, since, tz)
    if last_end is None:
        return fresh
    return max(last_end + ONE_DAY, fresh)


def due_windows(frequency: str, start: date, today: date, tz: ZoneInfo) -> Iterator[Window]:
    """The windows from ``start`` on that have ended by ``today``, in order."""
    while True:
        following = next_fire_date(frequency, start + ONE_DAY, tz)
        if following > today:
            return
        yield Window(start, following - ONE_DAY)
        start = following
