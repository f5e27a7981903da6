"""Bulk loading of the registry from CSV files: conversations and devices (tasks.md "Imports").

Files are streamed (never held whole in memory) and written in batches of
``EXHAUST_IMPORT_BATCH_ROWS`` lines, one transaction per batch. Every row and link an import
creates carries its ``task_id``.

Formats (a header line, then one record per line; RFC 4180 quoting; UTF-8, a BOM is allowed):

- conversations: ``conversation_id,name,channel,start_date,end_date`` (dates ``YYYY-MM-DD``
  or empty);
- devices: ``device_uuid,conversation_id,phone,consent``, one line per device-conversation
  pair, or ``device_uuid,conversation_id,encrypted_device_id,consent`` where the third column
  is UCI's encrypted device id (:mod:`data_exhaust.uci`, key ``EXHAUST_UCI_SECRET``). ``consent``
  is ``true/false``, ``yes/no`` or ``1/0`` (empty: true). An empty phone keeps the phone
  already stored; for a device on several lines the last phone given and the last consent win.

Bad lines are counted and reported with their 1-based line numbers (the first 100) and
skipped; messages never contain a field's value. ``strict=True`` first checks the whole file
without writing, so a bad line fails the import with nothing changed.

:func:`rollback` deletes what an import *created* (conversations, devices and links carrying
its task id, and the links that depend on them). Changes an import made to rows that existed
before it (a name, a phone, a consent) are not undone.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import Engine, delete, or_, select
from sqlalchemy.orm import Session

from data_exhaust.csv_lines import ImportFormatError as ImportFormatError
from data_exhaust.csv_lines import Source
from data_exhaust.import_core import MAX_ERRORS as MAX_ERRORS
from data_exhaust.import_core import BatchCallback, Parser, Plan, ProgressCallback, run_plan
from data_exhaust.import_core import ImportFailed as ImportFailed
from data_exhaust.import_core import ImportResult as ImportResult
from data_exhaust.import_core import LineError as LineError
from data_exhaust.import_core import rowcount as _rowcount
from data_exhaust.models import Conversation, Device, DeviceConversation
from data_exhaust.registry import (
    ConversationInfo,
    Registry,
    check_id,
    normalise_phone,
    parse_day,
)
from data_exhaust.secrets_box import PHONES
from data_exhaust.uci import UciError, phone_of, uci_key

CONVERSATIONS = ("conversation_id", "name", "channel", "start_date", "end_date")
DEVICES = ("device_uuid", "conversation_id", "phone", "consent")
UCI_DEVICES = ("device_uuid", "conversation_id", "encrypted_device_id", "consent")
KINDS = ("conversations", "devices")
LIMITS = {
    "conversation_id": 128,
    "device_uuid": 128,
    "name": 300,
    "channel": 100,
    "start_date": 10,
    "end_date": 10,
    "phone": 32,
    "encrypted_device_id": 1024,
    "consent": 5,
}
TRUE, FALSE = frozenset({"", "true", "yes", "1"}), frozenset({"false", "no", "0"})


def import_conversations(
    registry: Registry, source: Source, task_id: str, *, strict: bool = False,
    batch_rows: int = 1000, on_progress: ProgressCallback | None = None,
    on_batch: BatchCallback | None = None,
) -> ImportResult:  # fmt: skip
    """Load ``conversation_id,name,channel,start_date,end_date`` lines (insert or update)."""
    plan = Plan(
        "conversations", registry.engine, task_id, lambda _header: _conversation,
        partial(_flush_conversations, registry, task_id), (CONVERSATIONS,), LIMITS, rollback,
        batch_rows, on_progress, on_batch,
    )  # fmt: skip
    return run_plan(plan, source, strict)


def import_devices(
    registry: Registry, source: Source, task_id: str, *, uci_secret: str | None = None,
    strict: bool = False, batch_rows: int = 1000, on_progress: ProgressCallback | None = None,
    on_batch: BatchCallback | None = None,
) -> ImportResult:  # fmt: skip
    """Load devices with a ``phone`` or a UCI ``encrypted_device_id`` column (the header says
    which); the conversations must be registered already."""
    plan = Plan(
        "devices", registry.engine, task_id, lambda header: _device_parser(header, uci_secret),
        partial(_flush_devices, registry, task_id), (DEVICES, UCI_DEVICES), LIMITS, rollback,
        batch_rows, on_progress, on_batch,
    )  # fmt: skip
    return run_plan(plan, source, strict)


def import_csv(
    kind: str, registry: Registry, source: Source, task_id: str, *, uci_secret: str | None = None,
    strict: bool = False, batch_rows: int = 1000, on_progress: ProgressCallback | None = None,
    on_batch: BatchCallback | None = None,
) -> ImportResult:  # fmt: skip
    """Run the import of ``kind`` (``conversations`` or ``devices``), e.g. for a task."""
    if kind == "conversations":
        return import_conversations(
            registry, source, task_id, strict=strict, batch_rows=batch_rows,
            on_progress=on_progress, on_batch=on_batch,
        )  # fmt: skip
    if kind == "devices":
        return import_devices(
            registry, source, task_id, uci_secret=uci_secret, strict=strict,
            batch_rows=batch_rows, on_progress=on_progress, on_batch=on_batch,
        )  # fmt: skip
    raise ValueError(f"unknown import kind {kind!r}; use one of {', '.join(KINDS)}")


def rollback(engine: Engine, task_id: str) -> int:
    """Delete the conversations, devices and links an import created; how many rows.

    Links to a deleted conversation or device go too, whoever made them. Updates the import
    made to rows that existed before it are not undone."""
    if not task_id:
        raise ValueError("task_id is required")
    devices = select(Device.device_uuid).where(Device.task_id == task_id)
    conversations = select(Conversation.conversation_id).where(Conversation.task_id == task_id)
    links = delete(DeviceConversation).where(
        or_(
            DeviceConversation.task_id == task_id,
            DeviceConversation.device_uuid.in_(devices),
            DeviceConversation.conversation_id.in_(conversations),
        )
    )
    with Session(engine) as session, session.begin():
        count = _rowcount(session.execute(links))
        count += _rowcount(session.execute(delete(Device).where(Device.task_id == task_id)))
        return count + _rowcount(
            session.execute(delete(Conversation).where(Conversation.task_id == task_id))
        )


# -- conversations -------------------------------------------------------------------------


def _conversation(values: list[str]) -> ConversationInfo:
    conversation_id, name, channel, start, end = values
    check_id(conversation_id, "conversation_id")
    if not name:
        raise ValueError("name is required (1 to 300 characters)")
    if not channel:
        raise ValueError("channel is required: the channel that owns the conversation")
    start_date, end_date = parse_day(start, "start_date"), parse_day(end, "end_date")
    if start_date and end_date and end_date < start_date:
        raise ValueError("end_date must not be before start_date")
    return ConversationInfo(conversation_id, name, channel, start_date, end_date)


def _flush_conversations(
    registry: Registry, task_id: str, session: Session, batch: list[tuple[int, Any]],
    result: ImportResult, write: bool,
) -> None:  # fmt: skip
    latest: dict[str, ConversationInfo] = {info.conversation_id: info for _, info in batch}
    result.accepted += len(batch)
    if not write:
        return
    existing = _existing(session, Conversation.conversation_id, latest)
    registry.upsert_conversations(session, list(latest.values()), task_id)
    result.inserted += len(latest) - len(existing)
    result.updated += len(existing)


def _existing(session: Session, column: Any, ids: Any) -> set[str]:
    return set(session.scalars(select(column).where(column.in_(list(ids)))))


# -- devices -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _DeviceLine:
    device_uuid: str
    conversation_id: str
    phone: str | None
    consent: bool


def _device_parser(header: tuple[str, ...], uci_secret: str | None) -> Parser:
    key: bytes | None = None
    if header == UCI_DEVICES:
        try:
            key = uci_key(uci_secret)
        except UciError as exc:
            raise ImportFormatError(str(exc)) from None

    def parse(values: list[str]) -> _DeviceLine:
        device_uuid, conversation_id, who, consent = values
        check_id(device_uuid, "device_uuid")
        check_id(conversation_id, "conversation_id")
        if not who:
            phone = None
        else:
            phone = phone_of(who, key) if key is not None else normalise_phone(who)
        return _DeviceLine(device_uuid, conversation_id, phone, _consent(consent))

    return parse


def _consent(value: str) -> bool:
    lowered = value.lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise ValueError("consent must be true/false, yes/no, 1/0 or empty (true)")


def _flush_devices(
    registry: Registry, task_id: str, session: Session, batch: list[tuple[int, Any]],
    result: ImportResult, write: bool,
) -> None:  # fmt: skip
    known = _existing(session, Conversation.conversation_id, {d.conversation_id for _, d in batch})
    good: list[_DeviceLine] = []
    for line, device in batch:
        if device.conversation_id in known:
            good.append(device)
        else:
            result.reject(line, "conversation_id is not registered; import the conversations first")
    result.accepted += len(good)
    if not write or not good:
        return
    latest: dict[str, tuple[str | None, bool]] = {}
    for d in good:
        previous = latest.get(d.device_uuid, (None, True))[0]
        latest[d.device_uuid] = (d.phone or previous, d.consent)
    existing = _existing(session, Device.device_uuid, latest)
    rows = [
        (uuid, registry.box.seal(phone, PHONES) if phone else None, consent)
        for uuid, (phone, consent) in latest.items()
    ]
    registry.upsert_devices(session, rows, task_id, keep_phone=True)
    pairs = list(dict.fromkeys((d.device_uuid, d.conversation_id) for d in good))
    result.linked += registry.link(session, pairs, task_id)
    result.inserted += len(latest) - len(existing)
    result.updated += len(existing)
