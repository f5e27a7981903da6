"""``exhaust sync`` as an operator types it: schedules, and mistakes answered with a fix."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.acceptance.conftest import EXHAUST


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXHAUST_")}
    env["EXHAUST_SYNC_DB"] = f"sqlite:///{tmp_path / 'control.db'}"
    return subprocess.run(
        [EXHAUST, "sync", *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


def test_schedules_are_added_changed_listed_and_removed(tmp_path: Path) -> None:
    add = ("schedule", "add", "--state", "1", "--bot", "bot-a", "--since", "2026-10-05")
    assert "added" in run(tmp_path, *add, "--frequency", "0 0 * * *").stderr
    assert "updated" in run(tmp_path, *add, "--frequency", "0 0 * * SUN").stderr
    listed = run(tmp_path, "schedule", "list").stdout.splitlines()
    assert listed == [
        "state\tbot\tdataset\tfrequency\tsince",
        "1\tbot-a\tuci-response-exhaust\t0 0 * * SUN\t2026-10-05",
    ]
    assert run(tmp_path, "schedule", "remove", "--state", "1", "--bot", "bot-a").returncode == 0
    assert run(tmp_path, "schedule", "list").stdout.splitlines()[1:] == []
    again = run(tmp_path, "schedule", "remove", "--state", "1", "--bot", "bot-a")
    assert again.returncode == 1 and "no schedule for 1/bot-a" in again.stderr


def test_mistakes_get_a_clear_error_and_change_nothing(tmp_path: Path) -> None:
    bad = run(tmp_path, "schedule", "add", "--state", "1", "--bot", "b", "--frequency", "daily")
    assert bad.returncode == 2 and "is not a five-field crontab expression" in bad.stderr
    assert '"0 0 * * *" daily' in bad.stderr
    wrong = run(tmp_path, "schedule", "add", "--state", "1", "--bot", "b", "--frequency",
                "0 0 * * *", "--dataset", "everything")  # fmt: skip
    assert wrong.returncode == 2 and "uci-response-exhaust" in wrong.stderr
    assert run(tmp_path, "schedule", "list").stdout.splitlines()[1:] == []

    missing = run(tmp_path, "run-once", "--today", "2026-10-13")
    assert missing.returncode == 2
    assert "exhaust_config.py not found; create it" in missing.stderr


def test_a_bad_setting_is_named_without_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXHAUST_")}
    env["EXHAUST_TIMEZONE"] = "Mars/Olympus"
    answer = subprocess.run(
        [EXHAUST, "sync", "schedule", "list"], env=env, cwd=tmp_path, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert answer.returncode == 2 and "Traceback" not in answer.stderr
    assert (
        "EXHAUST_TIMEZONE" in answer.stderr and "unknown time zone 'Mars/Olympus'" in answer.stderr
    )
