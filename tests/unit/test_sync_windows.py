"""Cron windows: consecutive fire dates make windows that tile the calendar, due once ended."""

from __future__ import annotations

from datetime import date, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from data_exhaust.sync.windows import (
    BadSchedule,
    Window,
    check_frequency,
    due_windows,
    first_start,
    next_fire_date,
)

UTC = ZoneInfo("UTC")
KOLKATA = ZoneInfo("Asia/Kolkata")
CRONS = ["0 0 * * *", "0 0 * * SUN", "30 2 * * 1,4", "0 0 1 * *", "* * * * *", "0 18 */3 * *"]


def windows(frequency: str, since: date, today: date, last_end: date | None = None) -> list[Window]:
    return list(due_windows(frequency, first_start(frequency, since, last_end, UTC), today, UTC))


def test_daily_windows_are_single_days_and_due_the_day_after() -> None:
    found = windows("0 0 * * *", date(2026, 10, 5), today=date(2026, 10, 8))
    assert found == [Window(date(2026, 10, d), date(2026, 10, d)) for d in (5, 6, 7)]


def test_weekly_windows_run_from_fire_date_to_the_day_before_the_next() -> None:
    found = windows("0 0 * * SUN", date(2026, 10, 1), today=date(2026, 10, 25))
    # 2026-10-04 and 10-11 are Sundays; the week from 10-18 ends 10-24, due on 10-25
    assert found == [
        Window(date(2026, 10, 4), date(2026, 10, 10)),
        Window(date(2026, 10, 11), date(2026, 10, 17)),
        Window(date(2026, 10, 18), date(2026, 10, 24)),
    ]


def test_a_schedule_firing_every_minute_gives_daily_windows() -> None:
    assert windows("* * * * *", date(2026, 1, 1), date(2026, 1, 3)) == [
        Window(date(2026, 1, 1), date(2026, 1, 1)),
        Window(date(2026, 1, 2), date(2026, 1, 2)),
    ]


def test_fire_dates_are_taken_in_the_configured_time_zone() -> None:
    # 20:00 UTC on the 4th is 01:30 on the 5th in Kolkata
    assert next_fire_date("0 20 * * *", date(2026, 10, 4), UTC) == date(2026, 10, 4)
    assert next_fire_date("30 1 * * *", date(2026, 10, 5), KOLKATA) == date(2026, 10, 5)


def test_continuing_after_a_schedule_change_leaves_no_gap() -> None:
    # daily windows ended on Wednesday 10-07; the new weekly schedule fires on Sundays
    found = windows("0 0 * * SUN", date(2026, 10, 1), date(2026, 10, 19), date(2026, 10, 7))
    assert found[0] == Window(date(2026, 10, 8), date(2026, 10, 10))
    assert found[1] == Window(date(2026, 10, 11), date(2026, 10, 17))


@pytest.mark.parametrize("bad", ["", "0 0 * *", "61 0 * * *", "0 0 * * NOPE", "0 0 0 * * * *"])
def test_bad_frequencies_are_refused_with_an_example(bad: str) -> None:
    with pytest.raises(BadSchedule, match="crontab expression"):
        check_frequency(bad)


@given(
    frequency=st.sampled_from(CRONS),
    since=st.dates(date(2025, 1, 1), date(2027, 1, 1)),
    steps=st.lists(st.integers(0, 40), min_size=1, max_size=6),
)
def test_windows_from_repeated_runs_never_overlap_or_gap(
    frequency: str, since: date, steps: list[int]
) -> None:
    """However often and whenever the step runs, the windows tile the calendar exactly."""
    made: list[Window] = []
    today = since
    for step in steps:
        today += timedelta(days=step)
        last_end = made[-1].end_date if made else None
        made += windows(frequency, since, today, last_end)
    assert made == windows(frequency, since, today)  # as if run once at the end
    for earlier, later in pairwise(made):
        assert later.start_date == earlier.end_date + timedelta(days=1)
    assert all(w.start_date <= w.end_date < today for w in made)
