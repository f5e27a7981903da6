"""``exhaust sync``: scheduled exhausts of a state's bots, loaded into the state's database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from data_exhaust.cli.tables import print_table
from data_exhaust.constants import SYNC_DATASETS as DATASETS

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from data_exhaust.sync.report import Summary
    from data_exhaust.sync.settings import SyncSettings

console = Console(stderr=True, soft_wrap=True)
sync_app = typer.Typer(
    help="Bring the exhausts of a state's bots into the state's own database, on a schedule.\n\n"
    "1. Write the states file (exhaust_config.py or .toml; see docs/howto/client-sync.md).\n"
    "2. exhaust sync schedule add --state 1 --bot <conversationId> --frequency '0 0 * * *'\n"
    "3. exhaust sync run-once   (or `exhaust sync daemon`, or the Airflow DAGs)",
    no_args_is_help=True,
)
schedule_app = typer.Typer(
    help="The cron_config table: which bot's exhaust to fetch, how often.", no_args_is_help=True
)
SUMMARY_HEADERS = (
    *("state", "bot", "dataset", "windows", "submitted", "loaded", "rows", "new rows"),
    *("failures", "waiting"),
)

ControlOpt = typer.Option(
    None, "--control-db", envvar="EXHAUST_SYNC_DB", help="Control database URL (SQLAlchemy)."
)
StatesOpt = typer.Option(
    None, "--states", envvar="EXHAUST_SYNC_STATES", help="States file (.py with STATES, or .toml)."
)
ServerOpt = typer.Option(None, "--server", envvar="EXHAUST_SERVER_URL", help="Server base URL.")
TodayOpt = typer.Option(
    None,
    "--today",
    formats=["%Y-%m-%d"],
    help="Act as if today were this date (YYYY-MM-DD), to backfill or replay.",
)
JsonOpt = typer.Option(False, "--json", help="Print the summary as JSON instead of a table.")


def _settings(**overrides: Any) -> SyncSettings:
    from pydantic import ValidationError

    from data_exhaust.sync.settings import SyncSettings

    try:
        settings = SyncSettings()
    except ValidationError as exc:  # a bad EXHAUST_* value: say which, no traceback
        for error in exc.errors():
            name = "EXHAUST_" + "_".join(map(str, error["loc"])).upper()
            console.print(f"[red]error[/]: {name}: {error['msg']}")
        raise typer.Exit(2) from None
    chosen = {k: v for k, v in overrides.items() if v is not None}
    return settings.model_copy(update=chosen) if chosen else settings


@contextmanager
def _fail_clearly() -> Iterator[None]:
    from data_exhaust.sync.states import StatesFileError
    from data_exhaust.sync.windows import BadSchedule

    try:
        yield
    except (StatesFileError, BadSchedule) as exc:
        console.print(f"[red]error[/]: {exc}")
        raise typer.Exit(2) from None


def _today(settings: SyncSettings, today: datetime | None) -> date:
    return today.date() if today else datetime.now(settings.tz).date()


# -- schedules --------------------------------------------------------------------------------


@schedule_app.command("add")
def schedule_add(
    state: str = typer.Option(..., "--state", help="state_id from the states file."),
    bot: str = typer.Option(..., "--bot", help="The bot's conversationId."),
    frequency: str = typer.Option(
        ..., "--frequency", help='Crontab: "0 0 * * *" daily, "0 0 * * SUN" weekly.'
    ),
    dataset: str = typer.Option("uci-response-exhaust", "--dataset", help=" or ".join(DATASETS)),
    since: datetime | None = typer.Option(
        None, "--since", formats=["%Y-%m-%d"], help="First window from here (default: today)."
    ),
    control_db: str | None = ControlOpt,
) -> None:
    """Add a schedule (or change the bot's existing one for that dataset)."""
    from data_exhaust.sync.control import ControlDB, Schedule
    from data_exhaust.sync.windows import check_frequency

    if dataset not in DATASETS:
        raise typer.BadParameter(f"--dataset must be one of {', '.join(DATASETS)}")
    settings = _settings(sync_db=control_db)
    with _fail_clearly():
        check_frequency(frequency)
    start = since.date() if since else datetime.now(settings.tz).date()
    control = ControlDB(settings.sync_db)
    new = control.add_schedule(Schedule(state, bot, dataset, frequency, start))
    control.close()
    console.print(f"{'added' if new else 'updated'}: {state}/{bot} {dataset} '{frequency}'")


@schedule_app.command("list")
def schedule_list(control_db: str | None = ControlOpt) -> None:
    """Print the schedules."""
    from data_exhaust.sync.control import ControlDB

    control = ControlDB(_settings(sync_db=control_db).sync_db)
    rows = [
        (s.state_id, s.bot_id, s.dataset, s.frequency, s.since.isoformat())
        for s in control.schedules()
    ]
    control.close()
    print_table(("state", "bot", "dataset", "frequency", "since"), rows)


@schedule_app.command("remove")
def schedule_remove(
    state: str = typer.Option(..., "--state"),
    bot: str = typer.Option(..., "--bot"),
    dataset: str | None = typer.Option(None, "--dataset", help="Only this dataset's schedule."),
    control_db: str | None = ControlOpt,
) -> None:
    """Remove a bot's schedules; windows already created are kept and still handled."""
    from data_exhaust.sync.control import ControlDB

    control = ControlDB(_settings(sync_db=control_db).sync_db)
    removed = control.remove_schedule(state, bot, dataset)
    control.close()
    if not removed:
        console.print(f"[yellow]no schedule for {state}/{bot}[/]; see `exhaust sync schedule list`")
        raise typer.Exit(1)
    console.print(f"removed {removed} schedule(s)")


# -- the steps --------------------------------------------------------------------------------


class RichObserver:
    """Bars for the steps and a byte counter for downloads, on stderr."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def begin(self, step: str, total: int) -> None:
        if step in self.tasks:
            self.progress.update(self.tasks[step], total=total, completed=0)
        else:
            self.tasks[step] = self.progress.add_task(step, total=total)

    def advance(self, step: str) -> None:
        self.progress.advance(self.tasks[step])

    def transferred(self, size: int) -> None:
        if "download" not in self.tasks:
            self.tasks["download"] = self.progress.add_task("download", total=None)
        self.progress.advance(self.tasks["download"], size)


def _progress() -> Progress:
    from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    return Progress(*columns, DownloadColumn(), console=console, transient=True)


def _run(
    step: str,
    states: Path | None,
    control_db: str | None,
    server: str | None,
    today: datetime | None,
    as_json: bool,
    wait: float = 0.0,
) -> None:
    from data_exhaust.sync import daemon
    from data_exhaust.sync.control import ControlDB
    from data_exhaust.sync.states import load_states
    from data_exhaust.sync.steps import Sync

    settings = _settings(sync_states=states, sync_db=control_db, server_url=server)
    with _fail_clearly():
        loaded = load_states(settings.sync_states)
    control = ControlDB(settings.sync_db)
    progress = _progress()
    observer = RichObserver(progress)
    with progress, Sync(settings, loaded, control, _today(settings, today), observer) as sync:
        summary = daemon.run_step(sync, step, wait)
    control.close()
    _report(summary, as_json)


def _report(summary: Summary, as_json: bool) -> None:
    from data_exhaust.sync.steps import rows_of

    if as_json:
        typer.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        print_table(SUMMARY_HEADERS, list(rows_of(summary)))
    for error in summary.errors:
        console.print(f"[red]failed[/] {error}")
    if summary.failures:
        raise typer.Exit(1)


@sync_app.command()
def request(
    states: Path | None = StatesOpt,
    control_db: str | None = ControlOpt,
    server: str | None = ServerOpt,
    today: datetime | None = TodayOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Create the windows that are due and submit every window not yet submitted."""
    _run("request", states, control_db, server, today, as_json)


@sync_app.command()
def handle(
    states: Path | None = StatesOpt,
    control_db: str | None = ControlOpt,
    server: str | None = ServerOpt,
    today: datetime | None = TodayOpt,
    wait: float = typer.Option(0.0, "--wait", min=0, help="Seconds to wait for unfinished jobs."),
    as_json: bool = JsonOpt,
) -> None:
    """Load every finished window into its state's database; resubmit failed ones."""
    _run("handle", states, control_db, server, today, as_json, wait)


@sync_app.command("run-once")
def run_once(
    states: Path | None = StatesOpt,
    control_db: str | None = ControlOpt,
    server: str | None = ServerOpt,
    today: datetime | None = TodayOpt,
    wait: float = typer.Option(600.0, "--wait", min=0, help="Seconds to wait for the jobs."),
    as_json: bool = JsonOpt,
) -> None:
    """Both steps: submit what is due, wait for the jobs, load them. Exit 1 if any failed."""
    _run("run-once", states, control_db, server, today, as_json, wait)


@sync_app.command("daemon")
def run_daemon(
    states: Path | None = StatesOpt,
    control_db: str | None = ControlOpt,
    server: str | None = ServerOpt,
    request_cron: str | None = typer.Option(
        None, "--request-cron", envvar="EXHAUST_SYNC_REQUEST_CRON", help="Default '0 6 * * *'."
    ),
    handle_cron: str | None = typer.Option(
        None, "--handle-cron", envvar="EXHAUST_SYNC_HANDLE_CRON", help="Default '0 18 * * *'."
    ),
) -> None:
    """Run the request step and the handle step on their own crons until stopped (SIGTERM)."""
    from data_exhaust.sync import daemon
    from data_exhaust.sync.states import load_states

    with _fail_clearly():
        settings = _settings(
            sync_states=states,
            sync_db=control_db,
            server_url=server,
            sync_request_cron=request_cron,
            sync_handle_cron=handle_cron,
        )
        load_states(settings.sync_states)
        daemon.check_cron(settings.sync_request_cron)
        daemon.check_cron(settings.sync_handle_cron)
    daemon.serve(settings)


@sync_app.command("status")
def status(
    state: str | None = typer.Option(None, "--state"),
    only: str | None = typer.Option(None, "--status", help="PENDING, SUBMITTED, LOADED, FAILED…"),
    control_db: str | None = ControlOpt,
) -> None:
    """List the windows (exhaust_requests) and where each one is."""
    from data_exhaust.sync.control import ControlDB

    control = ControlDB(_settings(sync_db=control_db).sync_db)
    rows = [
        (
            r.state_id,
            r.bot_id,
            r.dataset,
            f"{r.start_date}..{r.end_date}",
            r.status,
            str(r.attempts),
            str(r.rows_loaded if r.rows_loaded is not None else ""),
            r.last_error or "",
        )
        for r in control.requests(state, only)
    ]
    control.close()
    print_table(("state", "bot", "dataset", "window", "status", "attempts", "rows", "error"), rows)


def register(app: typer.Typer) -> None:
    sync_app.add_typer(schedule_app, name="schedule")
    app.add_typer(sync_app, name="sync")
