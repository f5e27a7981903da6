"""Client commands: talk to a running server with an API key (EXHAUST_SERVER_URL,
EXHAUST_API_KEY, EXHAUST_CHANNEL, or the options)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import typer
from rich.console import Console

from data_exhaust.cli.tables import print_table

if TYPE_CHECKING:
    from data_exhaust.client import ExhaustClient

console = Console(stderr=True)
ServerOpt = typer.Option(
    "http://127.0.0.1:8000", "--server", envvar="EXHAUST_SERVER_URL", help="Base URL of the server."
)
KeyOpt = typer.Option(
    ..., "--key", envvar="EXHAUST_API_KEY", help="API key (from `exhaust keys create`)."
)
ChannelOpt = typer.Option(..., "--channel", envvar="EXHAUST_CHANNEL", help="X-Channel-ID.")


@contextmanager
def _client(server: str, key: str, channel: str) -> Iterator[ExhaustClient]:
    """A client whose refusals end the command with the server's message and exit code 1."""
    import httpx

    from data_exhaust.client import ClientError, ExhaustClient

    with ExhaustClient(server, key, channel) as client:
        try:
            yield client
        except ClientError as exc:
            console.print(f"[red]{exc.code}[/]: {exc.message}")
            raise typer.Exit(1) from None
        except httpx.TransportError as exc:
            console.print(
                f"[red]cannot reach the server at {server}[/] ({type(exc).__name__}: {exc}); "
                "is it running? Set --server or EXHAUST_SERVER_URL"
            )
            raise typer.Exit(1) from None
        except TimeoutError as exc:
            console.print(f"[yellow]{exc}[/]; check later with `exhaust status`")
            raise typer.Exit(2) from None


def _show(job: dict[str, Any]) -> None:
    typer.echo(json.dumps(job, indent=2, ensure_ascii=False))


def submit(
    dataset: str = typer.Option("uci-response-exhaust", help="Dataset id."),
    tag: str = typer.Option(..., help="Your grouping key (no '/' or ':')."),
    config: str = typer.Option(..., help='datasetConfig as JSON, e.g. \'{"conversationId": "…"}\''),
    output_format: str = typer.Option("csv", "--format", help="csv, csv.gz, jsonl or parquet."),
    wait: bool = typer.Option(False, help="Wait until the job finishes."),
    server: str = ServerOpt,
    key: str = KeyOpt,
    channel: str = ChannelOpt,
) -> None:
    """Submit a request and print the job (its requestId identifies it)."""
    try:
        parsed = json.loads(config)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--config is not JSON: {exc}") from None
    with _client(server, key, channel) as client:
        job = client.submit(dataset, tag, parsed, output_format=output_format)
        if wait:
            job = client.wait(tag, job["requestId"])
    _show(job)


def status(
    tag: str = typer.Argument(help="The tag you submitted with."),
    request_id: str = typer.Argument(help="The requestId from submit."),
    server: str = ServerOpt,
    key: str = KeyOpt,
    channel: str = ChannelOpt,
) -> None:
    """Show one job."""
    with _client(server, key, channel) as client:
        _show(client.read(tag, request_id))


def list_jobs(
    tag: str = typer.Argument(help="The tag to list."),
    limit: int = typer.Option(20, min=1, max=1000),
    server: str = ServerOpt,
    key: str = KeyOpt,
    channel: str = ChannelOpt,
) -> None:
    """List a tag's jobs, newest first."""
    with _client(server, key, channel) as client:
        jobs = client.list_jobs(tag, limit)
    rows = [
        [
            j["requestId"],
            j["dataset"],
            j["status"],
            str(j["progress"]["rowsWritten"]),
            j["statusMessage"],
        ]
        for j in jobs
    ]
    print_table(("requestId", "dataset", "status", "rows", "message"), rows)


def stop(
    tag: str = typer.Argument(),
    request_id: str = typer.Argument(),
    server: str = ServerOpt,
    key: str = KeyOpt,
    channel: str = ChannelOpt,
) -> None:
    """Stop a job (a running one stops within seconds and leaves no file)."""
    with _client(server, key, channel) as client:
        _show(client.stop(tag, request_id))


def download(
    tag: str = typer.Argument(),
    request_id: str = typer.Argument(),
    dest: Path = typer.Option(Path("."), help="Directory to write the files into."),
    server: str = ServerOpt,
    key: str = KeyOpt,
    channel: str = ChannelOpt,
) -> None:
    """Download a finished job's files (sha256 checked) into --dest."""
    with _client(server, key, channel) as client:
        job = client.read(tag, request_id)
        if job["status"] != "SUCCESS":
            raise typer.BadParameter(f"the job is {job['status']}, not SUCCESS")
        _fetch_all(client, job, dest)


def _fetch_all(client: ExhaustClient, job: dict[str, Any], dest: Path) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    dest.mkdir(parents=True, exist_ok=True)
    files = job["files"]
    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=console
    ) as progress:
        for url, meta in zip(job["downloadUrls"], files, strict=True):
            name = unquote(urlparse(url).path.rsplit("/", 1)[-1])
            task = progress.add_task(name, total=meta["size"])
            client.download(
                url,
                dest / name,
                sha256=meta["sha256"],
                on_chunk=partial(progress.advance, task),
            )
            console.print(f"{dest / name}  ({meta['rows']} rows, sha256 ok)")


def register(app: typer.Typer) -> None:
    app.command()(submit)
    app.command()(status)
    app.command("list")(list_jobs)
    app.command()(stop)
    app.command()(download)
