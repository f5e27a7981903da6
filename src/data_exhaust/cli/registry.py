"""Registry commands: conversations, devices, CSV imports and key rotation.

They open the database named by the EXHAUST_* settings directly and act for every channel
(an administrator's tool; over HTTP a key sees only its own channels). A phone is never
printed: not by `devices put`, not in import errors.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from data_exhaust.cli.tables import print_table

if TYPE_CHECKING:
    from rich.progress import Progress

    from data_exhaust.registry import Registry
    from data_exhaust.registry_import import ImportResult
    from data_exhaust.settings import Settings

console = Console(stderr=True, soft_wrap=True)
SHOWN_ERRORS = 10

conversations_app = typer.Typer(
    help="Register conversations (bots) and the channel that owns each.\n\n"
    "Example: exhaust conversations put bot-42 --name 'Math quiz' --channel state-up",
    no_args_is_help=True,
)
devices_app = typer.Typer(
    help="Register devices (chat users): their conversations, consent and phone (stored "
    "encrypted, never printed).\n\n"
    "Example: exhaust devices put 7f6c…-uuid --conversation bot-42 --phone - --no-consent",
    no_args_is_help=True,
)
registry_app = typer.Typer(
    help="Look after the registry: key rotation, undoing an import.", no_args_is_help=True
)

FileArg = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="A CSV file.")
StrictOpt = typer.Option(
    False, "--strict", help="Any bad line fails the import and nothing is changed."
)
JsonOpt = typer.Option(False, "--json", help="Also print the result as JSON on stdout.")


def _open() -> tuple[Settings, Registry]:
    from data_exhaust.db import make_engine, migrate
    from data_exhaust.registry import Registry
    from data_exhaust.settings import Settings

    settings = Settings()
    migrate(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    return settings, Registry(engine, settings.secret_box)


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]error[/]: {message}", highlight=False)
    return typer.Exit(code)


# -- conversations ---------------------------------------------------------------------------


def conversation_put(
    conversation_id: str = typer.Argument(..., help="1-128 letters, digits, _ . : -"),
    name: str = typer.Option(..., "--name", help="Shown in exhaust files (Conversation Name)."),
    channel: str = typer.Option(..., "--channel", help="The channel that owns it."),
    start: str = typer.Option("", "--start", help="First day, YYYY-MM-DD (optional)."),
    end: str = typer.Option("", "--end", help="Last day, YYYY-MM-DD (optional)."),
) -> None:
    """Register a conversation, or update it (name, channel, dates).

    Example: exhaust conversations put bot-42 --name "Math quiz" --channel state-up
    --start 2024-06-01 --end 2024-06-30
    """
    from data_exhaust.registry import ConversationInfo, check_id, parse_day

    try:
        check_id(conversation_id, "conversation id")
        if not name.strip() or len(name.strip()) > 300:
            raise ValueError("--name must be 1 to 300 characters")
        if not channel.strip():
            raise ValueError("--channel is required")
        first, last = parse_day(start, "--start"), parse_day(end, "--end")
        if first and last and last < first:
            raise ValueError("--end must not be before --start")
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    info = ConversationInfo(conversation_id, name.strip(), channel.strip(), first, last)
    created = _open()[1].put_conversation(info, None)
    console.print(f"{'created' if created else 'updated'} conversation {conversation_id}")


def conversation_list(
    channel: list[str] = typer.Option([], "--channel", "-c", help="Only these (repeatable)."),
    limit: int = typer.Option(100, "--limit", min=1, max=10_000, help="At most this many."),
) -> None:
    """List conversations by id (a table; tab-separated when piped).

    Example: exhaust conversations list --channel state-up | cut -f1
    """
    total, found = _open()[1].list_conversations(channel or None, limit)
    rows = [
        [c.conversation_id, c.name, c.channel, _day(c.start_date), _day(c.end_date)] for c in found
    ]
    print_table(("id", "name", "channel", "start", "end"), rows)
    console.print(f"{len(rows)} of {total} conversation(s)")


def _day(value: object) -> str:
    return "" if value is None else str(value)


def conversation_import(
    path: Path = FileArg, strict: bool = StrictOpt, as_json: bool = JsonOpt
) -> None:
    """Load conversations from CSV: header conversation_id,name,channel,start_date,end_date.

    Existing conversations are updated. Bad lines are skipped and reported with their line
    numbers (--strict: any bad line fails the import, nothing changes).

    Example: exhaust conversations import bots.csv --strict
    """
    _import("conversations", path, strict, as_json)


# -- devices ---------------------------------------------------------------------------------


def device_put(
    device_uuid: str = typer.Argument(..., help="The device id of the telemetry (actor id)."),
    conversation: list[str] = typer.Option(
        ..., "--conversation", help="A registered conversation id (repeatable)."
    ),
    phone: str = typer.Option(
        "", "--phone", help="The phone, or '-' to type it hidden (or pipe it on stdin)."
    ),
    consent: bool = typer.Option(True, "--consent/--no-consent", help="Consented to contact."),
) -> None:
    """Register a device: its conversations, consent and phone (encrypted, never printed).

    Without --phone the device has no phone. Prefer --phone - : the number is then read
    without echo (or from stdin) and stays out of the shell history.

    Example: exhaust devices put 6f1e… --conversation bot-42 --phone -
    """
    from data_exhaust.registry import RegistryError, check_id
    from data_exhaust.registry import normalise_phone as _normalise

    clear = _read_phone() if phone == "-" else phone
    try:
        number = _normalise(clear) if clear else None
        check_id(device_uuid, "device uuid")
        info = _open()[1].put_device(device_uuid, conversation, number, consent, None)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    except RegistryError as exc:
        raise _fail(exc.message) from None
    console.print(
        f"device {info.device_uuid}: conversations {', '.join(info.conversations)}; "
        f"consent {'yes' if info.consent else 'no'}; "
        f"{'phone stored encrypted' if info.has_phone else 'no phone'}"
    )


def _read_phone() -> str:
    if sys.stdin.isatty():
        return str(typer.prompt("Phone", hide_input=True, err=True))
    return sys.stdin.readline().strip()


def device_import(path: Path = FileArg, strict: bool = StrictOpt, as_json: bool = JsonOpt) -> None:
    """Load devices from CSV, one line per device and conversation.

    Header device_uuid,conversation_id,phone,consent, or, with UCI's encrypted device ids,
    device_uuid,conversation_id,encrypted_device_id,consent (needs EXHAUST_UCI_SECRET).
    consent: true/false, yes/no, 1/0, empty = true. An empty phone keeps the stored one.

    Example: exhaust devices import devices.csv
    """
    _import("devices", path, strict, as_json)


# -- imports ---------------------------------------------------------------------------------


def _progress() -> Progress:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[rows]} rows"),
    )
    return Progress(*columns, console=console, transient=True)


def _import(kind: str, path: Path, strict: bool, as_json: bool) -> None:
    from data_exhaust.registry_import import ImportFailed, ImportFormatError, import_csv, rollback

    settings, registry = _open()
    task_id = uuid.uuid4().hex
    try:
        with _progress() as progress:
            bar = progress.add_task(
                "checking" if strict else kind, total=path.stat().st_size, rows=0
            )

            def on_progress(done: int, rows: int) -> None:
                if rows:
                    progress.update(bar, description=kind)
                progress.update(bar, completed=done, rows=rows)

            result = import_csv(
                kind, registry, path, task_id, uci_secret=settings.uci_secret, strict=strict,
                batch_rows=settings.import_batch_rows, on_progress=on_progress,
            )  # fmt: skip
    except ImportFormatError as exc:
        raise _fail(str(exc), 2) from None
    except ImportFailed as exc:
        _errors(exc.result)
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        undone = rollback(registry.engine, task_id)
        raise _fail(f"interrupted; rolled back {undone} row(s) of import {task_id}", 130) from None
    _summary(result, as_json)


def _summary(result: ImportResult, as_json: bool) -> None:
    console.print(
        f"import {result.task_id}: {result.rows} row(s) read, {result.accepted} accepted, "
        f"{result.rejected} rejected; {result.kind} inserted {result.inserted}, "
        f"updated {result.updated}"
        + (f"; {result.linked} new link(s)" if result.kind == "devices" else ""),
        highlight=False,
    )
    _errors(result)
    if (result.inserted or result.linked) and not result.rolled_back:
        console.print(f"undo with: exhaust registry rollback {result.task_id}", highlight=False)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))


def _errors(result: ImportResult) -> None:
    for error in result.errors[:SHOWN_ERRORS]:
        console.print(f"  {error.message}", highlight=False, markup=False)
    if result.rejected > SHOWN_ERRORS:
        console.print(f"  … {result.rejected - SHOWN_ERRORS} more (--json lists the first 100)")


# -- registry --------------------------------------------------------------------------------


def rotate_key() -> None:
    """Re-seal every phone and job secret under the current EXHAUST_SECRET_KEY.

    Steps: 1. put the old secret in EXHAUST_PREVIOUS_SECRET_KEYS (a JSON list) and the new
    one in EXHAUST_SECRET_KEY, for every process; 2. run this; 3. remove the old secret.
    Safe to run again; values already under the current secret are left alone.

    Example: EXHAUST_PREVIOUS_SECRET_KEYS='["old"]' EXHAUST_SECRET_KEY=new
    exhaust registry rotate-key
    """
    from data_exhaust.rotation import rotate_all
    from data_exhaust.secrets_box import SealError

    try:
        done = rotate_all(_open()[1])
    except SealError as exc:
        raise _fail(
            f"{exc}: add the secret it was sealed with to EXHAUST_PREVIOUS_SECRET_KEYS and run "
            "again (what was re-sealed so far is kept)"
        ) from None
    console.print(
        f"re-sealed {done.phones} phone(s) and {done.job_secrets} job secret(s) under the "
        "current secret; the previous secret(s) can now be removed"
    )


def rollback_cmd(
    task_id: str = typer.Argument(..., help="The id an import printed ('import <id>: …')."),
) -> None:
    """Undo an import: delete the conversations, devices and links it created.

    Rows that existed before the import stay, with the values the import gave them.

    Example: exhaust registry rollback 3f2a9c0e7b5d4e1f8a6b2c9d0e1f2a3b
    """
    from data_exhaust.registry_import import rollback

    count = rollback(_open()[1].engine, task_id)
    console.print(f"rolled back {count} row(s) of import {task_id}")


def register(app: typer.Typer) -> None:
    conversations_app.command("put")(conversation_put)
    conversations_app.command("list")(conversation_list)
    conversations_app.command("import")(conversation_import)
    devices_app.command("put")(device_put)
    devices_app.command("import")(device_import)
    registry_app.command("rotate-key")(rotate_key)
    registry_app.command("rollback")(rollback_cmd)
    app.add_typer(conversations_app, name="conversations")
    app.add_typer(devices_app, name="devices")
    app.add_typer(registry_app, name="registry")
