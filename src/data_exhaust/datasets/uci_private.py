"""``uci-private-exhaust``: who is behind a conversation's device ids (datasets.md §4). PII.

The config is the response exhaust's (:func:`validate_conversation_config`: conversationId
required, dates defaulting to the registered dates, else yesterday). Submitting needs the
``pii`` scope and an ``encryptionKey`` (checked by the API before :meth:`validate`).

Rows, one per device of the conversation, ordered by Device UUID (byte order):

* the devices **registered** to the conversation — always, whatever the dates: the registry
  keeps no per-device dates, and as every config carries a range after validation, reading
  "with dates given" as excluding them would mean a registered device that has not spoken
  yet could never be listed;
* the devices that **sent** the conversation ASSESS events of the job's channel **in the
  range** (the same events the response exhaust exports, so every ``Device ID`` of a response
  file for the same range joins with a ``Device UUID`` here).

Registered devices count only when the conversation is registered to the job's channel:
another channel's registration never leaks into this channel's file. ``Decrypted Device ID``
is ``phone:<number>`` for a device registered to this conversation that consented and has a
phone, else the device UUID; ``Encrypted Device ID`` is that registration's stored ciphertext
(base64 AES-GCM under the server secret; opaque to the client), empty when there is none. A
device that only sent events is listed by its UUID alone, even if it was registered elsewhere
with a phone: a phone is exported only for the conversations it was registered for.

Delivery: the CSV ``<conversationId>_userinfo_<yyyymmdd>.csv`` (the usual CSV rules of
:mod:`data_exhaust.output`, formula guard included) is written into a private temp directory
(mode 0700, under ``<data dir>/tmp``), zipped with WinZip AES-256 under the job's
``encryptionKey`` into ``<conversationId>_userinfo_<yyyymmdd>.zip``, and only that zip is
published. Both temp files are deleted whatever happens. A missing or unreadable key, or any
failure while encrypting, fails the job permanently with a message that holds no secret;
a plain CSV never reaches the blob store. Neither the key nor a phone is ever logged.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import duckdb
import orjson
import pyarrow as pa
import pyzipper
import structlog

from data_exhaust.datasets.base import (
    Dataset,
    PermanentError,
    RunContext,
    StopRequested,
    SubmitContext,
)
from data_exhaust.datasets.uci_common import (
    config_bounds_ms,
    non_empty,
    utc_day,
    validate_conversation_config,
)
from data_exhaust.jobs import OutputFile
from data_exhaust.output import write_output
from data_exhaust.registry import DeviceRecord, Registry
from data_exhaust.secrets_box import JOB_SECRETS, SealError

log = structlog.get_logger(__name__)

HEADER = (
    "Conversation ID",
    "Conversation Name",
    "Decrypted Device ID",
    "Encrypted Device ID",
    "Device UUID",
)
#: Devices per batch: one registry query, one checkpoint, one Arrow batch each.
DEVICES_PER_BATCH = 5_000
#: Private work directories live in ``<data dir>/tmp``; a crash's leftovers go after a day.
TEMP_DIR = "tmp"
WORKDIR_PREFIX = "private-exhaust-"
STALE_SECONDS = 24 * 3600
#: WinZip AES key strength 3 = AES-256.
AES_256 = 3

_SCHEMA = pa.schema([(name, pa.string()) for name in HEADER])
_WHERE = (
    "eid = 'ASSESS' AND channel = $channel AND conversation_id = $conversation_id"
    " AND ets >= $from_ms AND ets < $to_ms AND device_id IS NOT NULL AND device_id <> ''"
)
_DEVICES = """
SELECT device_id, bool_or(registered) AS registered
FROM (
    SELECT device_uuid AS device_id, true AS registered FROM registered_devices
    UNION ALL
    SELECT DISTINCT device_id, false AS registered FROM {events} AS e
) AS devices
GROUP BY device_id
ORDER BY device_id
"""
_NO_KEY = (
    "this request has no readable encryptionKey; submit it again with an encryptionKey"
    " (the zip password, 8 to 128 characters)"
)


class PrivateExhaustError(RuntimeError):
    """An unexpected failure, described without its original message (see ``run``)."""


def _describe(exc: Exception) -> str:
    """The error's type, and for OS errors their reason (never a file's content)."""
    reason = f" ({exc.strerror})" if isinstance(exc, OSError) and exc.strerror else ""
    return (
        f"the private exhaust failed with {type(exc).__name__}{reason}"
        " (details withheld: they could hold personal data)"
    )


class _Secret:
    """A password that never shows itself in a repr, a log line or a traceback's locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> bytes:
        return self._value.encode()

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


class UciPrivateExhaust(Dataset):
    """The chatbot private exhaust: device UUIDs with the phones of consenting users."""

    id: ClassVar[str] = "uci-private-exhaust"
    title: ClassVar[str] = "UCI conversation devices and phones (personal data)"
    pii: ClassVar[bool] = True
    #: Only ``csv``: the deliverable is an encrypted zip holding one CSV file (datasets.md §4).
    formats: ClassVar[tuple[str, ...]] = ("csv",)

    def validate(self, config: dict[str, Any], submit: SubmitContext) -> dict[str, Any]:
        """The shared UCI config rules (:func:`validate_conversation_config`)."""
        return validate_conversation_config(self.id, config, submit)

    def run(self, ctx: RunContext) -> list[OutputFile]:
        """Write the CSV privately, encrypt it, publish only the zip.

        An unexpected error is re-raised as :class:`PrivateExhaustError` (transient, so
        retried) naming only its type: its message or traceback could quote personal data,
        and job messages and error logs must never hold any."""
        try:
            return self._run(ctx)
        except (PermanentError, StopRequested, duckdb.InterruptException):
            raise
        except Exception as exc:
            failure = _describe(exc)
        # Raised outside the handler: no chained context, no ``exc`` among the frame's locals.
        raise PrivateExhaustError(failure)

    def _run(self, ctx: RunContext) -> list[OutputFile]:
        password = job_password(ctx)  # before any personal data is read
        conversation_id = ctx.job.config["conversationId"]
        ctx.checkpoint(0)
        stem = f"{conversation_id}_userinfo_{ctx.today:%Y%m%d}"
        with private_workdir(ctx.settings.data_dir) as work:
            written = write_output(
                _PrivateFiles(work),
                "",
                stem,
                "csv",
                HEADER,
                non_empty(self.rows(ctx, conversation_id)),
                bom=ctx.settings.csv_bom,
                formula_guard=ctx.settings.csv_formula_guard,
                on_batch=ctx.checkpoint,
            )
            archive = work / f"{stem}.zip"
            encrypt(work / written.name, archive, password)
            ctx.checkpoint(written.rows)
            return [ctx.publish_file(archive.name, archive, written.rows)]

    def rows(self, ctx: RunContext, conversation_id: str) -> pa.RecordBatchReader:
        """The output rows, :data:`DEVICES_PER_BATCH` devices per batch, by Device UUID."""
        found = ctx.registry.get_conversation(conversation_id, [ctx.job.channel])
        connection = ctx.duckdb()
        _load_registered(connection, ctx.registry, conversation_id if found else None)
        from_ms, to_ms = config_bounds_ms(ctx.job.config, ctx.settings.tz)
        events = ctx.lake.events_sql(utc_day(from_ms), utc_day(to_ms - 1), _WHERE)
        params = {
            "channel": ctx.job.channel,
            "conversation_id": conversation_id,
            "from_ms": from_ms,
            "to_ms": to_ms,
        }
        devices = connection.sql(_DEVICES.format(events=events), params=params)
        name = found.name if found else None
        batches = (
            _rows(ctx.registry, conversation_id, name, batch)
            for batch in devices.to_arrow_reader(DEVICES_PER_BATCH)
        )
        return pa.RecordBatchReader.from_batches(_SCHEMA, batches)


def job_password(ctx: RunContext) -> _Secret:
    """The job's ``encryptionKey``, unsealed; :class:`PermanentError` if absent or unreadable."""
    if not ctx.job.secret_data:
        raise PermanentError(_NO_KEY)
    try:
        secrets = orjson.loads(ctx.settings.secret_box.unseal(ctx.job.secret_data, JOB_SECRETS))
    except (SealError, orjson.JSONDecodeError, UnicodeDecodeError):
        raise PermanentError(_NO_KEY) from None
    key = secrets.get("encryptionKey") if isinstance(secrets, dict) else None
    if not isinstance(key, str) or not key:
        raise PermanentError(_NO_KEY)
    return _Secret(key)


def _load_registered(
    connection: duckdb.DuckDBPyConnection, registry: Registry, conversation_id: str | None
) -> None:
    """The devices registered to the conversation into a DuckDB temp table, a batch at a time
    (DuckDB sorts and merges them with the event senders, spilling to disk if it must)."""
    connection.execute("CREATE TEMP TABLE registered_devices (device_uuid VARCHAR)")
    if conversation_id is None:
        return
    chunk: list[str] = []
    for device_uuid in registry.devices_of(conversation_id):
        chunk.append(device_uuid)
        if len(chunk) == DEVICES_PER_BATCH:
            _insert(connection, chunk)
            chunk = []
    _insert(connection, chunk)


def _insert(connection: duckdb.DuckDBPyConnection, uuids: list[str]) -> None:
    if not uuids:
        return
    connection.register("registered_chunk", pa.table({"device_uuid": pa.array(uuids, pa.string())}))
    connection.execute("INSERT INTO registered_devices SELECT device_uuid FROM registered_chunk")
    connection.unregister("registered_chunk")


def _rows(
    registry: Registry, conversation_id: str, name: str | None, devices: pa.RecordBatch
) -> pa.RecordBatch:
    """One output batch for a batch of ``(device_id, registered)``."""
    uuids: list[str] = devices.column(0).to_pylist()
    registered: list[bool] = devices.column(1).to_pylist()
    records = registry.records([u for u, linked in zip(uuids, registered, strict=True) if linked])
    decrypted: list[str] = []
    encrypted: list[str | None] = []
    for device_uuid in uuids:
        record = records.get(device_uuid)
        decrypted.append(_decrypted_id(registry, record) or device_uuid)
        encrypted.append(record.phone_sealed if record else None)
    count = len(uuids)
    columns = [
        pa.array([conversation_id] * count, pa.string()),
        pa.array([name] * count, pa.string()),
        pa.array(decrypted, pa.string()),
        pa.array(encrypted, pa.string()),
        pa.array(uuids, pa.string()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=_SCHEMA)


def _decrypted_id(registry: Registry, record: DeviceRecord | None) -> str | None:
    """``phone:<number>`` for a consenting device with a phone, else None."""
    if record is None or not record.consent or not record.phone_sealed:
        return None
    try:
        phone = registry.phone_of(record)
    except SealError:
        raise PermanentError(
            "a device's phone cannot be decrypted: it was sealed under a server secret this"
            " server does not know (see key rotation in docs/howto)"
        ) from None
    return f"phone:{phone}" if phone else None


def encrypt(source: Path, target: Path, password: _Secret) -> None:
    """Zip ``source`` into ``target`` with WinZip AES-256 under ``password``, and check that
    the entry really is AES-256 encrypted. Any failure: :class:`PermanentError`, no zip."""
    try:
        with (
            _private_file(target) as out,
            pyzipper.AESZipFile(
                out, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES
            ) as archive,
        ):
            archive.setpassword(password.reveal())
            archive.setencryption(pyzipper.WZ_AES, nbits=256)
            archive.write(source, arcname=source.name)
        _check_encrypted(target, source.name)
    except Exception as exc:
        target.unlink(missing_ok=True)
        raise PermanentError(
            f"the private exhaust could not be encrypted ({type(exc).__name__});"
            " no file was published"
        ) from None


def _check_encrypted(archive: Path, name: str) -> None:
    with pyzipper.AESZipFile(archive) as opened:
        entries = opened.infolist()
    if [e.filename for e in entries] != [name]:
        raise ValueError("the zip does not hold exactly the CSV file")
    entry = entries[0]
    if not (entry.flag_bits & 0x1 and getattr(entry, "wz_aes_strength", None) == AES_256):
        raise ValueError("the zip entry is not AES-256 encrypted")


@contextmanager
def _private_file(path: Path) -> Iterator[BinaryIO]:
    """A new file only the service's user may read (0600), created exclusively."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        yield handle


class _PrivateFiles:
    """The :class:`~data_exhaust.output.BlobWriter` of :func:`write_output` over a private
    directory: the CSV is written there with mode 0600, never into the blob store."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def writer(self, key: str) -> AbstractContextManager[BinaryIO]:
        return _private_file(self.directory / key)


@contextmanager
def private_workdir(data_dir: Path) -> Iterator[Path]:
    """A fresh 0700 directory under ``<data dir>/tmp``, removed with its files at the end."""
    parent = data_dir / TEMP_DIR
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _remove_stale(parent)
    work = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if work.exists():
            log.warning("private_exhaust.workdir_left", path=str(work))


def _remove_stale(parent: Path) -> None:
    """Work directories a crashed run left behind (older than a day: no run lasts that long)."""
    cutoff = time.time() - STALE_SECONDS
    for entry in parent.glob(f"{WORKDIR_PREFIX}*"):
        try:
            if entry.is_dir() and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
        except FileNotFoundError:  # another worker removed it first
            continue
