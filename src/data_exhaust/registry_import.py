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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, delete, or_, select
from sqlalchemy.orm import Session

from data_exhaust.csv_lines import ImportFormatError as ImportFormatError
from data_exhaust.csv_lines import Source, header_of, opened, records
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
MAX_ERRORS = 100
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

ProgressCallback = Callable[[int, int], None]
Parser = Callable[[list[str]], Any]


@dataclass(frozen=True)
class LineError:
    line: int
    message: str


@dataclass
class ImportResult:
    """What an import did. ``inserted``/``updated`` count conversations or devices,
    ``linked`` new device-conversation links; ``rows`` counts the data lines read."""

    kind: str
    task_id: str
    rows: int = 0
    accepted: int = 0
    inserted: int = 0
    updated: int = 0
    linked: int = 0
    rejected: int = 0
    rolled_back: int = 0
    errors: list[LineError] = field(default_factory=list)
    _pending: list[LineError] = field(default_factory=list, repr=False)

    def reject(self, line: int, message: str) -> None:
        self.rejected += 1
        self._pending.append(LineError(line, f"line {line}: {message}"))

    def settle(self) -> None:
        """Keep the first errors in line order (a batch finds some only when it is written)."""
        self._pending.sort(key=lambda e: e.line)
        self.errors.extend(self._pending[: MAX_ERRORS - len(self.errors)])
        self._pending.clear()

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "taskId": self.task_id,
            "rows": self.rows,
            "accepted": self.accepted,
            "inserted": self.inserted,
            "updated": self.updated,
            "linked": self.linked,
            "rejected": self.rejected,
            "rolledBack": self.rolled_back,
            "errors": [{"line": e.line, "message": e.message} for e in self.errors],
        }


class ImportFailed(Exception):
    """A strict import met a bad line; ``result.rolled_back`` rows were removed again."""

    def __init__(self, result: ImportResult) -> None:
        first = result.errors[0].message if result.errors else "the import failed"
        super().__init__(f"{first} (strict mode: nothing was imported)")
        self.result = result


Flush = Callable[[Registry, str, Session, list[tuple[int, Any]], ImportResult, bool], None]


@dataclass
class _Plan:
    kind: str
    registry: Registry
    task_id: str
    parser_for: Callable[[tuple[str, ...]], Parser]  # header -> row parser
    flush: Flush
    headers: tuple[tuple[str, ...], ...]
    batch_rows: int
    on_progress: ProgressCallback | None


def import_conversations(
    registry: Registry, source: Source, task_id: str, *, strict: bool = False,
    batch_rows: int = 1000, on_progress: ProgressCallback | None = None,
) -> ImportResult:  # fmt: skip
    """Load ``conversation_id,name,channel,start_date,end_date`` lines (insert or update)."""
    plan = _Plan(
        "conversations", registry, task_id, lambda _header: _conversation,
        _flush_conversations, (CONVERSATIONS,), batch_rows, on_progress,
    )  # fmt: skip
    return _run(plan, source, strict)


def import_devices(
    registry: Registry, source: Source, task_id: str, *, uci_secret: str | None = None,
    strict: bool = False, batch_rows: int = 1000, on_progress: ProgressCallback | None = None,
) -> ImportResult:  # fmt: skip
    """Load devices with a ``phone`` or a UCI ``encrypted_device_id`` column (the header says
    which); the conversations must be registered already."""
    plan = _Plan(
        "devices", registry, task_id, lambda header: _device_parser(header, uci_secret),
        _flush_devices, (DEVICES, UCI_DEVICES), batch_rows, on_progress,
    )  # fmt: skip
    return _run(plan, source, strict)


def import_csv(
    kind: str, registry: Registry, source: Source, task_id: str, *, uci_secret: str | None = None,
    strict: bool = False, batch_rows: int = 1000, on_progress: ProgressCallback | None = None,
) -> ImportResult:  # fmt: skip
    """Run the import of ``kind`` (``conversations`` or ``devices``), e.g. for a task."""
    if kind == "conversations":
        return import_conversations(
            registry, source, task_id, strict=strict, batch_rows=batch_rows,
            on_progress=on_progress,
        )  # fmt: skip
    if kind == "devices":
        return import_devices(
            registry, source, task_id, uci_secret=uci_secret, strict=strict,
            batch_rows=batch_rows, on_progress=on_progress,
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


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


# -- the two passes ------------------------------------------------------------------------


def _run(plan: _Plan, source: Source, strict: bool) -> ImportResult:
    if strict:
        checked = _pass(plan, source, write=False, strict=True)
        if checked.rejected:
            raise ImportFailed(checked)
    try:
        result = _pass(plan, source, write=True, strict=strict)
    except BaseException:
        if strict:
            rollback(plan.registry.engine, plan.task_id)
        raise
    if strict and result.rejected:  # the database changed between the passes
        result.rolled_back = rollback(plan.registry.engine, plan.task_id)
        raise ImportFailed(result)
    return result


def _pass(plan: _Plan, source: Source, *, write: bool, strict: bool) -> ImportResult:
    result = ImportResult(plan.kind, plan.task_id)
    with opened(source) as counted:
        lines = records(counted)
        header = header_of(lines, plan.headers)
        parse = plan.parser_for(header)
        batch: list[tuple[int, Any]] = []
        for line, fields, error in lines:
            result.rows += 1
            item = _parse(parse, header, line, fields, error, result)
            if item is not None:
                batch.append(item)
            if len(batch) >= plan.batch_rows or (strict and result.rejected):
                _flush(plan, batch, result, write, counted.count)
                batch = []
                if strict and result.rejected:
                    return result
        _flush(plan, batch, result, write, counted.count)
    return result


def _flush(
    plan: _Plan, batch: list[tuple[int, Any]], result: ImportResult, write: bool, done: int
) -> None:
    if batch:
        with Session(plan.registry.engine) as session, session.begin():
            plan.flush(plan.registry, plan.task_id, session, batch, result, write)
    result.settle()
    if plan.on_progress is not None:
        plan.on_progress(done, result.accepted if write else 0)


def _parse(
    parse: Parser, header: tuple[str, ...], line: int, fields: list[str] | None,
    error: str | None, result: ImportResult,
) -> tuple[int, Any] | None:  # fmt: skip
    if fields is None:
        result.reject(line, error or "unreadable line")
        return None
    if len(fields) != len(header):
        result.reject(
            line, f"expected {len(header)} columns ({','.join(header)}), found {len(fields)}"
        )
        return None
    values = [value.strip() for value in fields]
    for name, value in zip(header, values, strict=True):
        if len(value) > LIMITS[name]:
            result.reject(line, f"{name} is longer than {LIMITS[name]} characters")
            return None
    try:
        return line, parse(values)
    except ValueError as exc:
        result.reject(line, str(exc))
        return None


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
