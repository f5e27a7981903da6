"""Commands that run or administer the service on this machine (they read EXHAUST_* settings)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from data_exhaust.cli.tables import print_table
from data_exhaust.constants import SCOPES
from data_exhaust.heap import freeze_heap, keep_freed_memory

if TYPE_CHECKING:
    from data_exhaust.services import Services

console = Console(stderr=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
lake_app = typer.Typer(help="Look after the telemetry lake.", no_args_is_help=True)


def services() -> Services:
    from data_exhaust.db import migrate
    from data_exhaust.services import build_services
    from data_exhaust.settings import Settings

    settings = Settings()
    migrate(settings.resolved_database_url)
    return build_services(settings)


def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="TCP port."),
    processes: int = typer.Option(
        1,
        min=1,
        max=64,
        help="Server processes sharing the port (up to one per core). Each runs the API, its "
        "own EXHAUST_WORKERS embedded workers and the lake's maintenance, and listens on a "
        "socket of its own (SO_REUSEPORT), so new connections are spread over them; a "
        "supervisor restarts one that dies.",
    ),
    first_run: bool = typer.Option(
        False,
        "--first-run",
        help="Load demo data into an empty lake and print a fresh demo API key (make run).",
    ),
) -> None:
    """Run the API, with the embedded workers unless EXHAUST_WORKERS=0."""
    import uvicorn

    from data_exhaust.api.app import create_app

    svc = services()
    if first_run:
        _first_run(svc, host, port)
    if processes > 1:  # each process builds its own services from EXHAUST_* (no shared state)
        svc.close()
        _serve_processes(processes, host, port)
        return
    app = create_app(svc)
    freeze_heap()
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _serve_processes(processes: int, host: str, port: int) -> None:
    from data_exhaust.logs import configured_level
    from data_exhaust.serving import AddressInUse, serve_processes

    os.environ["EXHAUST_LOG_LEVEL"] = configured_level()  # `--log-level` reaches them too
    try:
        serve_processes(processes, host, port)
    except AddressInUse as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:  # the supervisor has stopped its processes
        pass


def _first_run(svc: Services, host: str, port: int) -> None:
    from data_exhaust.demo import DEMO_CHANNEL, demo_events

    stats = svc.lake.stats()
    if stats["raw_segments"] == 0 and stats["parquet_files"] == 0:
        result = svc.ingestor.ingest({"events": list(demo_events())})
        console.print(f"Loaded {result.accepted} demo events into the lake.")
    for key in svc.keys.list():
        if key.name == "make-run" and key.revoked_at is None:
            svc.keys.revoke(key.key_id)
    _, plain = svc.keys.create("make-run", [DEMO_CHANNEL], list(SCOPES))
    base = f"http://{host}:{port}"
    # Plain echo (not rich) so the key and the curl line are never wrapped: they get pasted.
    typer.echo(f"\nData Exhaust on {base}  (API docs: {base}/docs)")
    typer.echo("A demo API key for channel demo-channel (a new one at every `make run`):")
    typer.echo(f"  export KEY={plain}")
    typer.echo("Try:")
    typer.echo(
        f"  curl -s '{base}/dataset/v1/request/list/demo' "
        f"-H \"Authorization: Bearer $KEY\" -H 'X-Channel-ID: {DEMO_CHANNEL}'\n"
    )


def worker(
    threads: int = typer.Option(
        None,
        "--concurrency",
        "--threads",
        "-c",
        help="Concurrent jobs (default EXHAUST_WORKERS): threads, or Celery pool processes.",
    ),
) -> None:
    """Run jobs without the API, against the same database (Ctrl-C stops after the jobs).

    With EXHAUST_EXECUTOR=celery this is a Celery worker consuming EXHAUST_CELERY_QUEUE
    (default "exhaust") on EXHAUST_BROKER_URL; start one per machine.
    """
    svc = services()
    try:
        executor = svc.make_executor(threads)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    count = threads if threads is not None else svc.settings.workers
    console.print(f"{executor.name} worker running {count} job(s) at a time; Ctrl-C to stop")
    executor.serve()


def migrate_cmd() -> None:
    """Create or upgrade the database schema (idempotent)."""
    from data_exhaust.db import migrate
    from data_exhaust.settings import Settings

    settings = Settings()
    migrate(settings.resolved_database_url)
    console.print("database is up to date")


def keys_create(
    channel: list[str] = typer.Option([], "--channel", "-c", help="A channel (repeatable)."),
    scope: str = typer.Option("exhaust", help=f"Comma-separated scopes: {', '.join(SCOPES)}."),
    name: str = typer.Option("api-client", help="Who the key is for (shown in lists, logs)."),
) -> None:
    """Create a key. The key is printed once, on the last line; only its hash is stored."""
    from data_exhaust.keys import KeyError_

    scopes = [s.strip() for s in scope.split(",") if s.strip()]
    try:
        info, plain = services().keys.create(name, channel, scopes)
    except KeyError_ as exc:
        raise typer.BadParameter(str(exc)) from None
    console.print(f"created key {info.key_id} ({name}) channels={channel} scopes={scopes}")
    typer.echo(plain)


def keys_list() -> None:
    """List keys (ids, names, channels, scopes; never the keys themselves)."""
    rows = [
        [
            key.key_id,
            key.name,
            ",".join(key.channels),
            ",".join(key.scopes),
            key.created_at.strftime("%Y-%m-%d %H:%M"),
            key.revoked_at.strftime("%Y-%m-%d %H:%M") if key.revoked_at else "",
        ]
        for key in services().keys.list()
    ]
    print_table(("id", "name", "channels", "scopes", "created", "revoked"), rows)


def keys_revoke(key_id: str = typer.Argument(help="The id shown by `exhaust keys list`.")) -> None:
    """Revoke a key. A running server that verified it in the last EXHAUST_KEY_CACHE_SECONDS
    (default 5 s) still accepts it until that time is up; after that it is refused everywhere."""
    from data_exhaust.keys import KeyError_

    try:
        services().keys.revoke(key_id)
    except KeyError_ as exc:
        raise typer.BadParameter(str(exc)) from None
    console.print(f"revoked {key_id}")


def ingest(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON lines."),
) -> None:
    """Bulk-load telemetry events from a JSON-lines file (one event, or one batch, a line)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from data_exhaust.ingest import FileChanged, ingest_file
    from data_exhaust.lake import Lake
    from data_exhaust.settings import Settings

    # The lake alone: a bulk load touches no table, and building the services (their
    # database, its migration check, the executor's imports) was ~1 s of every run.
    lake = Lake.from_url(Settings().resolved_lake_url)
    keep_freed_memory()
    freeze_heap()
    columns = (
        TextColumn("ingest"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[events]} events"),
    )
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("ingest", total=path.stat().st_size, events=0)
            result = ingest_file(
                path,
                lake,
                on_progress=lambda done, n: progress.update(task, completed=done, events=n),
            )
    except FileChanged as exc:
        console.print(f"[red]error[/]: {exc}", highlight=False)
        raise typer.Exit(1) from None
    console.print(
        f"accepted {result.accepted}, rejected {result.rejected} (quarantined with "
        "their line numbers)"
    )


def compact() -> None:
    """Rewrite raw telemetry segments into date-partitioned Parquet, then merge each finished
    day's files into one (EXHAUST_LAKE_MERGE_FILES)."""
    count = services().compact_lake()
    if count is None:
        console.print("another process is compacting the lake; try again later")
    else:
        console.print(f"compacted {count} events")


def replay(dataset: str = typer.Option(None, help="Only jobs of this dataset.")) -> None:
    """Run every waiting job (of a dataset) now instead of at the EXHAUST_RUN_SCHEDULE window."""
    count = services().jobs.release(dataset)
    console.print(f"{count} waiting job(s) released; running workers pick them up now")


def demo() -> None:
    """Write realistic demo telemetry (3 bots, 40 devices, 7 days) into the lake."""
    from data_exhaust.demo import DEMO_CHANNEL, demo_events

    result = services().ingestor.ingest({"events": list(demo_events())})
    console.print(f"ingested {result.accepted} demo events for channel {DEMO_CHANNEL}")


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(worker)
    app.command("migrate")(migrate_cmd)
    app.command()(ingest)
    app.command()(replay)
    app.command()(demo)
    keys_app.command("create")(keys_create)
    keys_app.command("list")(keys_list)
    keys_app.command("revoke")(keys_revoke)
    lake_app.command("compact")(compact)
    app.add_typer(keys_app, name="keys")
    app.add_typer(lake_app, name="lake")
