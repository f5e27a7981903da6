"""The two steps of the sync (the seed's ``exhaust_requester`` and ``exhaust_request_handler``).

* **request**: create the windows that are due for every schedule, then submit every window
  not yet submitted. A window's row (with its UUID ``tag``) is committed before it is submitted,
  and the server derives the requestId from tag and config, so a crash between the submit and
  the storing of its requestId is healed by the next run: the same submit returns the same job.
* **handle**: read every submitted window's job; load the finished ones, resubmit failed ones
  while attempts remain, record a window without events as NO_DATA.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import date
from typing import Any

import httpx
import sqlalchemy as sa
import structlog

from data_exhaust.client import ClientError, ExhaustClient
from data_exhaust.sync import files, loader
from data_exhaust.sync.control import ControlDB, ExhaustRequest, RequestStatus, Schedule
from data_exhaust.sync.report import Observer, Quiet, Summary
from data_exhaust.sync.settings import SyncSettings
from data_exhaust.sync.states import State
from data_exhaust.sync.windows import due_windows, first_start

log = structlog.get_logger(__name__)
NO_DATA = "No data found"
REQUESTED_BY = "exhaust-sync"


class Sync:
    """One run of the sync over ``states`` as of ``today``; close() when done."""

    def __init__(
        self,
        settings: SyncSettings,
        states: dict[str, State],
        control: ControlDB,
        today: date,
        observer: Observer | None = None,
        *,
        state_ids: Sequence[str] | None = None,
    ) -> None:
        """``state_ids`` limits the run to those states (default: every state of the file)."""
        self.settings, self.control, self.today = settings, control, today
        self.known, self.everyone = set(states), state_ids is None
        self.states = {k: v for k, v in states.items() if state_ids is None or k in state_ids}
        self.observer: Observer = observer or Quiet()
        self.summary = Summary()
        self._clients: dict[str, ExhaustClient] = {}
        self._engines: dict[str, sa.Engine] = {}

    def close(self) -> None:
        for client in self._clients.values():
            client.http.close()
        for engine in self._engines.values():
            engine.dispose()

    def __enter__(self) -> Sync:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def client(self, state_id: str) -> ExhaustClient:
        if state_id not in self._clients:
            state = self.states[state_id]
            self._clients[state_id] = ExhaustClient(
                self.settings.server_url,
                state.state_token.get_secret_value(),
                state.x_channel_id,
            )
        return self._clients[state_id]

    def engine(self, state_id: str) -> sa.Engine:
        if state_id not in self._engines:
            uri = self.states[state_id].db_credentials.uri.get_secret_value()
            engine = sa.create_engine(uri)
            loader.ensure_tables(engine)
            self._engines[state_id] = engine
        return self._engines[state_id]

    # -- request ------------------------------------------------------------------------------

    def request(self) -> Summary:
        schedules = self.control.schedules()
        self.observer.begin("windows", len(schedules))
        for schedule in schedules:
            self._create_windows(schedule)
            self.observer.advance("windows")
        rows = self.control.to_submit(self.today, list(self.states))
        self.observer.begin("submit", len(rows))
        for row in rows:
            self._submit(row)
            self.observer.advance("submit")
        return self.summary

    def _create_windows(self, schedule: Schedule) -> None:
        key = (schedule.state_id, schedule.bot_id, schedule.dataset)
        if schedule.state_id not in self.known and self.everyone:
            self.summary.fail(key, "state not in the states file; its windows wait")
            return
        if schedule.state_id not in self.states:
            return  # another run's state
        last_end = self.control.last_end(*key)
        start = first_start(schedule.frequency, schedule.since, last_end, self.settings.tz)
        windows = list(due_windows(schedule.frequency, start, self.today, self.settings.tz))
        created = self.control.add_windows(schedule, windows)
        self.summary[key].windows += created
        if created:
            log.info("sync.windows.created", state_id=key[0], bot_id=key[1], count=created)

    def _config(self, row: ExhaustRequest) -> dict[str, Any]:
        return {
            "type": row.dataset,
            "conversationId": row.bot_id,
            "startDate": row.start_date.isoformat(),
            "endDate": row.end_date.isoformat(),
        }

    def _submit(self, row: ExhaustRequest) -> None:
        state = self.states[row.state_id]
        password = state.encryption_key.get_secret_value() if state.encryption_key else None
        if row.dataset == "uci-private-exhaust" and not password:
            self._error(row, "no encryption_key for this state in the states file", attempt=False)
            return
        try:
            job = self.client(row.state_id).submit(
                row.dataset,
                row.tag,
                self._config(row),
                requested_by=REQUESTED_BY,
                encryption_key=password if row.dataset == "uci-private-exhaust" else None,
            )
        except (ClientError, httpx.TransportError) as exc:
            self._error(row, _describe(exc), attempt=isinstance(exc, ClientError))
            return
        self.control.record_submitted(row, job["requestId"], job["status"])
        self.summary[row.key].submitted += 1
        log.info("sync.submitted", tag=row.tag, request_id=job["requestId"], status=job["status"])

    def _error(self, row: ExhaustRequest, error: str, *, attempt: bool) -> None:
        final = attempt and row.attempts + 1 >= self.settings.sync_max_attempts
        self.control.record_error(row, error, final=final, attempt=attempt)
        self.summary.fail(row.key, f"{row.start_date}..{row.end_date}: {error}")
        log.warning("sync.error", tag=row.tag, error=error, final=final)

    # -- handle -------------------------------------------------------------------------------

    def handle(self, wait: float = 0.0) -> Summary:
        """Handle every submitted window; with ``wait``, poll until all are done or time is up."""
        deadline, delay = time.monotonic() + wait, 0.5
        rows = self.control.in_flight(list(self.states))
        self.observer.begin("handle", len(rows))
        while True:
            for row in rows:
                self._handle(row)
            rows = self.control.in_flight(list(self.states))
            if not rows or time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
            delay = min(delay * 1.5, 10.0)
        for row in rows:
            self.summary[row.key].waiting += 1
        return self.summary

    def _handle(self, row: ExhaustRequest) -> None:
        assert row.request_id is not None  # in flight means submitted
        try:
            job = self.client(row.state_id).read(row.tag, row.request_id)
        except ClientError as exc:
            if exc.status == 404:  # the server lost or purged it: ask again
                self._resubmit(row, "the server no longer knows this request")
            else:
                self._error(row, _describe(exc), attempt=False)
            return
        except httpx.TransportError as exc:
            self._error(row, _describe(exc), attempt=False)
            return
        status = job["status"]
        if status in (RequestStatus.SUBMITTED, RequestStatus.PROCESSING):
            self.control.record_status(row, status)
            return
        self.observer.advance("handle")
        if status == "SUCCESS" and not job.get("downloadUrls"):  # past the server's retention
            self._resubmit(row, "the server no longer has the files")
        elif status == "SUCCESS":
            self._load(row, job)
        elif NO_DATA in (job.get("statusMessage") or ""):
            self.control.record_no_data(row, job["statusMessage"])
            self.summary[row.key].loaded += 1
        else:
            self._resubmit(row, f"{status}: {job.get('statusMessage')}")

    def _resubmit(self, row: ExhaustRequest, reason: str) -> None:
        if row.attempts >= self.settings.sync_max_attempts:
            self.control.record_error(row, reason, final=True, attempt=False)
            self.summary.fail(row.key, f"{row.start_date}..{row.end_date}: {reason}; gave up")
            log.warning("sync.error", tag=row.tag, error=reason, final=True)
            return
        self.control.record_error(row, reason, final=False, attempt=False)
        self._submit(self.control.get(row.id))

    def _load(self, row: ExhaustRequest, job: dict[str, Any]) -> None:
        assert row.request_id is not None
        state = self.states[row.state_id]
        target = loader.target_for(row.dataset, row.state_id, row.bot_id, row.request_id)
        try:
            load = files.loader_for(
                self.engine(row.state_id),
                target,
                self.settings.sync_batch_rows,
                self.settings.sync_copy_chunk_bytes,
            )
            done = files.fetch_and_load(
                self.client(row.state_id),
                job,
                self.settings.sync_work_dir / row.request_id,
                load,
                state.encryption_key.get_secret_value() if state.encryption_key else None,
                self.observer.transferred,
            )
        except (ClientError, httpx.TransportError, loader.LoadError, sa.exc.SQLAlchemyError) as exc:
            unreachable = isinstance(exc, httpx.TransportError)  # nobody's fault: no try used
            self._error(row, _describe(exc), attempt=not unreachable)
            return
        self.control.record_loaded(row, done.sha256, done.rows)
        tally = self.summary[row.key]
        tally.loaded, tally.rows, tally.new_rows = (
            tally.loaded + 1,
            tally.rows + done.rows,
            tally.new_rows + done.written,
        )

    # -- both -----------------------------------------------------------------------------------

    def run_once(self, wait: float) -> Summary:
        self.request()
        return self.handle(wait)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, httpx.TransportError):
        return f"server unreachable ({type(exc).__name__}: {exc})"
    if isinstance(exc, sa.exc.SQLAlchemyError):
        return f"state database: {str(exc).splitlines()[0]}"
    return str(exc)


def rows_of(summary: Summary) -> Iterator[Sequence[str]]:
    """The summary as table rows (state, bot, dataset, then the counters)."""
    for (state_id, bot_id, dataset), t in sorted(summary.tallies.items()):
        yield (
            state_id,
            bot_id,
            dataset,
            *map(
                str, (t.windows, t.submitted, t.loaded, t.rows, t.new_rows, t.failures, t.waiting)
            ),
        )
