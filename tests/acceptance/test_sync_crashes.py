"""A sync process killed at the worst moments, then simply run again: no duplicate request,
no duplicate row, nothing lost.

1. Killed after the server accepted a submit but before the requestId was stored: a proxy
   between the client and the server forwards the submit, then kills the client instead of
   answering it.
2. Killed half-way through loading a file into the state's database (Postgres and SQLite): the
   test reads the client's debug log and kills it at the first chunk loaded.

And the long-running process itself: ``exhaust sync daemon`` runs both steps on their crons and
stops cleanly on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from data_exhaust.sync.control import ControlDB, Schedule
from tests.acceptance.conftest import EXHAUST, Deployment, wait_until
from tests.acceptance.sync_world import (
    BOTS,
    FIRST_DAY,
    Bot,
    World,
    headers,
    rows,
    start_server,
    with_client,
)

BIG = [  # one busy day (Oct 6): a file large enough to be killed half-way through
    Bot("up", "state-up", "bot-big", devices=("big-1", "big-2"), per_day=6000, days=2),
    Bot("br", "state-br", "bot-big", devices=("big-3",), per_day=6000, days=2),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("sync-crash-server")
    deployment = Deployment(root / "var", f"sqlite:///{root / 'exhaust.db'}")
    deployment.run("migrate")
    yield start_server(deployment, tuple(BIG))
    deployment.stop_all()


@pytest.fixture
def world(server: World, tmp_path: Path, empty_postgres_url: str) -> World:
    return with_client(server, tmp_path, empty_postgres_url)


class KillingProxy(ThreadingHTTPServer):
    """Forwards to the server; after forwarding the first submit it kills ``victim``."""

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.upstream, self.victim, self.submits = upstream, 0, 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ProxyHandler(BaseHTTPRequestHandler):
    server: KillingProxy

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        kept = {
            k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
        }
        answer = httpx.request(
            self.command, self.server.upstream + self.path, content=body, headers=kept, timeout=30
        )
        if self.path.startswith("/dataset/v1/request/submit"):
            self.server.submits += 1
            if self.server.submits == 1:  # the server has the job; the client never hears it
                os.kill(self.server.victim, signal.SIGKILL)
                return
        self.send_response(answer.status_code)
        for name in ("content-type",):
            self.send_header(name, answer.headers[name])
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_POST = _forward

    def log_message(self, *_: Any) -> None:
        pass


def sync_process(
    world: World, server_url: str, *args: str, output: Any = subprocess.PIPE, **env: str
) -> subprocess.Popen[str]:
    command = [EXHAUST, "sync", *args, "--states", str(world.states_file)]
    command += ["--control-db", world.control_db, "--server", server_url]
    return subprocess.Popen(
        command,
        env={**world.deployment.env, "EXHAUST_SYNC_WORK_DIR": str(world.work_dir), **env},
        cwd=world.states_file.parent,
        stdout=output,
        stderr=output,
        text=True,
    )


def tags_on_server(world: World, state: str, tag: str) -> list[dict[str, Any]]:
    channel = "state-up" if state == "up" else "state-br"
    answer = httpx.get(
        f"{world.base}/dataset/v1/request/list/{tag}", headers=headers(world.keys[state], channel)
    )
    jobs: list[dict[str, Any]] = answer.json()["result"]["jobs"]
    return jobs


def test_killed_between_submit_and_storing_the_request_id(world: World) -> None:
    control = ControlDB(world.control_db)
    control.add_schedule(
        Schedule("up", "bot-shared", "uci-response-exhaust", "0 0 * * *", FIRST_DAY)
    )
    control.add_schedule(
        Schedule("br", "bot-shared", "uci-response-exhaust", "0 0 * * *", FIRST_DAY)
    )
    today = "2026-10-09"  # windows Oct 5..8 for each state

    proxy = KillingProxy(world.base)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    process = sync_process(world, proxy.url, "request", "--today", today)
    proxy.victim = process.pid
    process.communicate(timeout=120)
    proxy.shutdown()
    proxy.server_close()
    assert process.returncode == -signal.SIGKILL
    windows = control.requests()
    first = windows[0]
    assert first.request_id is None  # the crash came before the requestId was stored
    assert len(tags_on_server(world, first.state_id, first.tag)) == 1  # but the server has it

    world.sync("run-once", "--today", today, "--wait", "120")
    windows = control.requests()
    control.close()
    assert len(windows) == 8
    for window in windows:
        assert window.status in ("LOADED", "NO_DATA") and window.attempts == 1
        assert len(tags_on_server(world, window.state_id, window.tag)) == 1  # no duplicate
    for state, url in (("up", world.up_db), ("br", world.br_db)):
        mids = Counter(r["message_id"] for r in rows(url, "exhaust_report_response"))
        expected = [
            e["mid"]
            for bot in BOTS
            if (bot.state, bot.bot_id) == (state, "bot-shared")
            for e in world.sent[(state, "bot-shared")]
            if e["mid"].split("-")[-2] < "04"  # days 0..3 = Oct 5..8
        ]
        assert mids == Counter(expected)


@pytest.mark.parametrize("state", ["up", "br"])
def test_killed_half_way_through_a_load(world: World, state: str) -> None:
    control = ControlDB(world.control_db)
    control.add_schedule(
        Schedule(state, "bot-big", "uci-response-exhaust", "0 0 * * *", date(2026, 10, 6))
    )
    world.sync("request", "--today", "2026-10-07")  # one window: Oct 6, 6000 events
    (window,) = control.requests()

    debug = {"EXHAUST_LOG_LEVEL": "DEBUG", "EXHAUST_LOG_JSON": "1"}
    small = {"EXHAUST_SYNC_BATCH_ROWS": "100", "EXHAUST_SYNC_COPY_CHUNK_BYTES": "16384"}
    process = sync_process(world, world.base, "handle", "--wait", "120", **debug, **small)
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith("{") and json.loads(line)["event"] == "sync.load.progress":
            process.kill()  # rows are on their way into the state's database
            break
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    url = world.up_db if state == "up" else world.br_db
    assert control.get(window.id).status != "LOADED"
    assert rows(url, "exhaust_report_response") == []  # nothing half-loaded
    assert list(world.work_dir.glob("*/*.csv"))  # the download, left for the re-run

    world.sync("handle", "--wait", "120")
    assert control.get(window.id).status == "LOADED"
    assert not any(world.work_dir.iterdir())  # loaded: its download is removed
    control.close()
    mids = Counter(r["message_id"] for r in rows(url, "exhaust_report_response"))
    sent = [e["mid"] for e in world.sent[(state, "bot-big")] if e["mid"].split("-")[-2] == "01"]
    assert len(sent) == 6000 and mids == Counter(sent)


def test_daemon_runs_both_steps_on_their_crons_and_stops_on_sigterm(
    world: World, tmp_path: Path
) -> None:
    control = ControlDB(world.control_db)
    weekly = ("up", "bot-up-weekly", "uci-response-exhaust", "0 0 * * MON", FIRST_DAY)
    control.add_schedule(Schedule(*weekly))
    every = ["--request-cron", "* * * * * */2", "--handle-cron", "* * * * * */3"]  # seconds
    with (tmp_path / "daemon.log").open("w") as log:
        process = sync_process(world, world.base, "daemon", *every, output=log)

        def all_done() -> bool:
            windows = control.requests()
            return len(windows) >= 3 and all(w.status in ("LOADED", "NO_DATA") for w in windows)

        wait_until(all_done, timeout=120)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert process.returncode == 0
    assert "sync.daemon.stopped" in (tmp_path / "daemon.log").read_text()
    loaded = Counter(r["message_id"] for r in rows(world.up_db, "exhaust_report_response"))
    assert loaded == Counter(e["mid"] for e in world.sent[("up", "bot-up-weekly")])
    control.close()


def test_files_purged_by_the_server_are_asked_for_again(world: World) -> None:
    control = ControlDB(world.control_db)
    daily = ("br", "bot-shared", "uci-response-exhaust", "0 0 * * *", FIRST_DAY)
    control.add_schedule(Schedule(*daily))
    world.sync("request", "--today", "2026-10-07")  # Oct 5 and 6
    windows = control.requests()
    for w in windows:
        wait_until(lambda w=w: tags_on_server(world, "br", w.tag)[0]["status"] == "SUCCESS")
    purged = windows[0].request_id
    server_db = sa.create_engine(world.deployment.database_url)
    with server_db.begin() as conn:  # what the server's retention purge does to a job
        conn.execute(
            sa.text("UPDATE job_request SET files_purged = true WHERE request_id = :r"),
            {"r": purged},
        )
    server_db.dispose()

    world.sync("handle", "--wait", "120")
    assert [(w.status, w.attempts) for w in control.requests()] == [("LOADED", 2), ("LOADED", 1)]
    control.close()
    mids = Counter(r["message_id"] for r in rows(world.br_db, "exhaust_report_response"))
    days = ("00", "01")
    assert mids == Counter(
        e["mid"] for e in world.sent[("br", "bot-shared")] if e["mid"].split("-")[-2] in days
    )
