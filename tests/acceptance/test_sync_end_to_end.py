"""Client sync against the real server process: two states (Postgres and SQLite databases),
daily and weekly schedules, three weeks of telemetry, ``exhaust sync run-once`` on simulated
dates across those weeks. Every event must land exactly once, in its own state's table."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import Deployment
from tests.acceptance.sync_world import BOTS, REGISTERED, TITLES, World, make_world, rows
from tests.factories import PHONES

RUN_DATES = ["2026-10-08", "2026-10-13", "2026-10-20", "2026-10-27"]


@pytest.fixture
def world(tmp_path: Path, sqlite_url: str, empty_postgres_url: str) -> Iterator[World]:
    deployment = Deployment(tmp_path / "var", sqlite_url)
    made = make_world(deployment, tmp_path, empty_postgres_url)
    yield made
    deployment.stop_all()


def summary(world: World, today: str) -> dict[str, Any]:
    result = world.sync("run-once", "--today", today, "--wait", "120", "--json")
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def test_run_once_across_three_weeks_loads_every_event_once(world: World) -> None:
    summaries = [summary(world, day) for day in RUN_DATES]
    assert all(s["errors"] == [] for s in summaries)

    for state, url in (("up", world.up_db), ("br", world.br_db)):
        loaded = rows(url, "exhaust_report_response")
        mids = Counter(r["message_id"] for r in loaded)
        sent = {
            e["mid"]: (bot.bot_id, e)
            for bot in BOTS
            if bot.state == state
            for e in world.sent[(state, bot.bot_id)]
        }
        assert mids == Counter(list(sent)), f"state {state}: every event exactly once, no other"
        for row in loaded:
            bot_id, event = sent[row["message_id"]]
            assert (row["state_id"], row["bot_id"]) == (state, bot_id)
            assert row["conversation_id"] == bot_id
            assert row["question_title"] == event["edata"]["item"]["title"]
            stamp = row["timestamp"]
            if isinstance(stamp, str):  # SQLite keeps the UTC time as text
                stamp = datetime.fromisoformat(stamp).replace(tzinfo=UTC)
            assert stamp == datetime.fromtimestamp(event["ets"] / 1000, UTC)
            assert row["eof"] in (False, 0)
            options = row["question_options"]
            assert (json.loads(options) if isinstance(options, str) else options) == (
                event["edata"]["item"]["params"]
            )
    br_titles = {r["question_title"] for r in rows(world.br_db, "exhaust_report_response")}
    assert set(TITLES) <= br_titles

    private = rows(world.up_db, "exhaust_report_private")
    senders = {e["context"]["did"] for e in world.sent[("up", "bot-up-weekly")]}
    devices = senders | set(REGISTERED)  # registered devices are listed in every window
    assert Counter(r["device_uuid"] for r in private) == Counter(devices)  # one row per device
    by_device = {r["device_uuid"]: r["decrypted_device_id"] for r in private}
    assert by_device["up-dev-1"] == f"phone:{PHONES[0]}"  # registered, consented
    assert by_device["up-dev-3"] == "up-dev-3"  # registered, refused consent
    assert by_device["up-dev-4"] == "up-dev-4"  # only sent events

    windows = rows(world.control_db, "exhaust_requests")
    # daily: 22 windows (Oct 5..26) per state, Oct 26 and the quiet days without events;
    # weekly: 3 windows for each of the two datasets
    assert Counter(w["status"] for w in windows) == {"LOADED": 19 + 20 + 6, "NO_DATA": 3 + 2}
    assert all(w["attempts"] == 1 for w in windows)  # one submit each, nothing resubmitted

    again = summary(world, RUN_DATES[-1])
    assert sum(r["windows"] + r["submitted"] + r["new_rows"] for r in again["rows"]) == 0
