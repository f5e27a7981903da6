"""Airflow 3 DAGs for the client sync, built from the same functions as ``exhaust sync``.

``build_dags()`` returns two DAGs:

* ``exhaust_requester`` (default ``0 6 * * *``): the request step, one task per state;
* ``exhaust_request_handler`` (default ``0 18 * * *``): the handle step, one task per state.

Settings come from the same ``EXHAUST_*`` variables as the CLI (``EXHAUST_SYNC_STATES``,
``EXHAUST_SYNC_DB``, ``EXHAUST_SERVER_URL``, ``EXHAUST_TIMEZONE``…), read by the task when it
runs; the DAG file only reads the states file's ``state_id`` values to name the tasks, so the
DAG processor needs neither the tokens nor the databases. A run's "today" is its logical date
in ``EXHAUST_TIMEZONE`` (``airflow dags test exhaust_requester 2026-10-13`` backfills that day).
Both steps are idempotent, so Airflow's retries are safe. A task fails, after doing all it
could, when any window met an error; its XCom is the summary.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, CronTriggerTimetable, get_current_context

from data_exhaust.sync.control import ControlDB
from data_exhaust.sync.daemon import run_step
from data_exhaust.sync.settings import SyncSettings
from data_exhaust.sync.states import load_states, state_ids
from data_exhaust.sync.steps import Sync

START = datetime(2026, 1, 1)


def run_for_state(step: str, state_id: str, today: date, wait: float = 0.0) -> dict[str, Any]:
    """One step for one state, as the CLI runs it; RuntimeError listing the errors, if any."""
    settings = SyncSettings()
    states = load_states(settings.sync_states)
    control = ControlDB(settings.sync_db)
    try:
        with Sync(settings, states, control, today, state_ids=[state_id]) as sync:
            summary = run_step(sync, step, wait)
    finally:
        control.close()
    if summary.failures:
        raise RuntimeError("; ".join(summary.errors))
    return summary.as_dict()


def _today(settings: SyncSettings) -> date:
    context: Any = get_current_context()
    moment = context.get("logical_date") or context["dag_run"].run_after
    return datetime.fromisoformat(str(moment)).astimezone(settings.tz).date()


def _dag(dag_id: str, step: str, cron: str, settings: SyncSettings, wait: float) -> DAG:
    with DAG(
        dag_id=dag_id,
        schedule=CronTriggerTimetable(cron, timezone=settings.timezone),
        start_date=START,
        catchup=False,
        max_active_runs=1,
        tags=["data-exhaust"],
        doc_md=__doc__,
    ) as dag:
        for state_id in state_ids(settings.sync_states):
            PythonOperator(
                task_id=f"{step}_{state_id}",
                python_callable=_task,
                op_kwargs={"step": step, "state_id": state_id, "wait": wait},
                retries=2,
            )
    return dag


def _task(step: str, state_id: str, wait: float) -> dict[str, Any]:
    return run_for_state(step, state_id, _today(SyncSettings()), wait)


def build_dags(
    states_file: Path | None = None,
    request_cron: str | None = None,
    handle_cron: str | None = None,
    handle_wait: float = 0.0,
) -> tuple[DAG, DAG]:
    """The ``exhaust_requester`` and ``exhaust_request_handler`` DAGs."""
    settings = SyncSettings()
    if states_file is not None:
        settings = settings.model_copy(update={"sync_states": states_file})
    requester = _dag(
        "exhaust_requester", "request", request_cron or settings.sync_request_cron, settings, 0.0
    )
    handler = _dag(
        "exhaust_request_handler",
        "handle",
        handle_cron or settings.sync_handle_cron,
        settings,
        handle_wait,
    )
    return requester, handler
