"""``exhaust sync daemon``: the request step and the handle step, each on its own cron.

By default requests go out in the morning (``0 6 * * *``) and are handled in the evening
(``0 18 * * *``), in ``EXHAUST_TIMEZONE``; a six-field expression (seconds last) is accepted too.
SIGTERM or SIGINT stops the daemon between two steps, never in the middle of one.
"""

from __future__ import annotations

import signal
import threading
from datetime import datetime
from types import FrameType

import structlog
from croniter import croniter

from data_exhaust.sync.control import ControlDB
from data_exhaust.sync.report import Summary
from data_exhaust.sync.settings import SyncSettings
from data_exhaust.sync.states import load_states
from data_exhaust.sync.steps import Sync
from data_exhaust.sync.windows import check_cron

log = structlog.get_logger(__name__)


__all__ = ["check_cron", "run_step", "serve"]


def run_step(sync: Sync, step: str, wait: float = 0.0) -> Summary:
    if step == "request":
        return sync.request()
    if step == "handle":
        return sync.handle(wait)
    return sync.run_once(wait)


def _next(expression: str, now: datetime) -> datetime:
    fired: datetime = croniter(expression, now).get_next(datetime)
    return fired


def _once(settings: SyncSettings, step: str) -> None:
    """One step with fresh states and control DB, so edits between runs are picked up."""
    control = ControlDB(settings.sync_db)
    try:
        states = load_states(settings.sync_states)
        today = datetime.now(settings.tz).date()
        with Sync(settings, states, control, today) as sync:
            summary = run_step(sync, step)
        log.info("sync.step.done", step=step, failures=summary.failures, **_totals(summary))
    finally:
        control.close()


def _totals(summary: Summary) -> dict[str, int]:
    tallies = summary.tallies.values()
    return {
        "windows": sum(t.windows for t in tallies),
        "submitted": sum(t.submitted for t in tallies),
        "loaded": sum(t.loaded for t in tallies),
        "rows": sum(t.rows for t in tallies),
    }


def serve(settings: SyncSettings) -> None:
    stopping = threading.Event()

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("sync.daemon.stopping", signal=signum)
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    crons = {"request": settings.sync_request_cron, "handle": settings.sync_handle_cron}
    log.info("sync.daemon.started", **crons, timezone=settings.timezone)
    now = datetime.now(settings.tz)
    due = {step: _next(cron, now) for step, cron in crons.items()}
    while not stopping.is_set():
        step = min(due, key=lambda s: due[s])
        delay = (due[step] - datetime.now(settings.tz)).total_seconds()
        if delay > 0 and stopping.wait(delay):
            break
        try:
            _once(settings, step)
        except Exception:  # a bad run (states file, database down) must not end the daemon
            log.exception("sync.step.failed", step=step)
        due[step] = _next(crons[step], datetime.now(settings.tz))
    log.info("sync.daemon.stopped")
