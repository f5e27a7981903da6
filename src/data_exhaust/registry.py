"""The conversation and device registry (api.md §7): who owns a bot, who may be contacted.

Conversations belong to one channel. Devices are global (a device UUID is one chat user) and
are linked to conversations; a key sees and changes only the links to conversations of its
own channels. Phones are sealed with :class:`~data_exhaust.secrets_box.SecretBox` before they
reach the database and are never returned by this module except through :meth:`phone_of`,
which only the private exhaust calls.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from data_exhaust.models import Base, Conversation, Device, DeviceConversation
from data_exhaust.secrets_box import PHONES, SecretBox

PHONE = re.compile(r"\+?[0-9]{6,15}")
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
BATCH_IDS = 5_000


class RegistryError(Exception):
    """A registry change refused; ``code`` is an API response code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class ConversationInfo:
    conversation_id: str
    name: str
    channel: str
    start_date: date | None = None
    end_date: date | None = None


@dataclass(frozen=True)
class DeviceInfo:
    """A device as callers may see it: never its phone, only whether it has one."""

    device_uuid: str
    conversations: list[str]
    consent: bool
    has_phone: bool


@dataclass(frozen=True)
class DeviceRecord:
    """What the private exhaust needs of a device (the phone still sealed)."""

    device_uuid: str
    consent: bool
    phone_sealed: str | None


def normalise_phone(raw: str) -> str:
    """The phone without spaces, dashes or brackets; ValueError (never echoing it) if odd."""
    phone = re.sub(r"[\s().-]", "", raw)
    if not PHONE.fullmatch(phone):
        raise ValueError("phone must have 6 to 15 digits, optionally after a '+'")
    return phone


def check_id(value: str, what: str) -> str:
    if not ID.fullmatch(value):
        raise ValueError(f"{what} must be 1-128 letters, digits, '_', '.', ':' or '-'")
    return value


def now() -> datetime:
    return datetime.now(UTC)


class Registry:
    """Reads and writes conversations and devices; seals phones."""

    def __init__(self, engine: Engine, box: SecretBox) -> None:
        self.engine, self.box = engine, box
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    # -- conversations -----------------------------------------------------------------------

    def put_conversation(self, info: ConversationInfo, may_use: Collection[str] | None) -> bool:
        """Create or update; True when created. ``may_use`` None: any channel (admin)."""
        check_id(info.conversation_id, "conversationId")
        with Session(self.engine) as session, session.begin():
            row = session.get(Conversation, info.conversation_id)
            if row is not None and may_use is not None and row.channel not in may_use:
                raise RegistryError(
                    "CONFLICT",
                    "this conversationId is registered to another channel; choose another id",
                )
            self.upsert_conversations(session, [info], task_id=None)
            return row is None

    def upsert_conversations(
        self, session: Session, infos: Sequence[ConversationInfo], task_id: str | None
    ) -> None:
        """Insert or update a batch in the caller's transaction (imports use it too)."""
        at = now()
        values = [
            {
                "conversation_id": c.conversation_id,
                "name": c.name,
                "channel": c.channel,
                "start_date": c.start_date,
                "end_date": c.end_date,
                "task_id": task_id,
                "created_at": at,
                "updated_at": at,
            }
            for c in infos
        ]
        statement = self._insert(_table(Conversation))  # executemany: compiled once, cached
        excluded = statement.excluded
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["conversation_id"],
                set_={
                    "name": excluded.name,
                    "channel": excluded.channel,
                    "start_date": excluded.start_date,
                    "end_date": excluded.end_date,
                    "updated_at": excluded.updated_at,
                },
            ),
            values,
        )

    def get_conversation(
        self, conversation_id: str, channels: Collection[str] | None = None
    ) -> ConversationInfo | None:
        with Session(self.engine) as session:
            row = session.get(Conversation, conversation_id)
        if row is None or (channels is not None and row.channel not in channels):
            return None
        return _conversation(row)

    def list_conversations(
        self, channels: Collection[str] | None, limit: int, offset: int = 0
    ) -> tuple[int, list[ConversationInfo]]:
        where = [] if channels is None else [Conversation.channel.in_(list(channels))]
        with Session(self.engine) as session:
            total = session.scalar(select(func.count()).select_from(Conversation).where(*where))
            rows = session.scalars(
                select(Conversation)
                .where(*where)
                .order_by(Conversation.conversation_id)
                .limit(limit)
                .offset(offset)
            )
            return int(total or 0), [_conversation(r) for r in rows]

    def conversation_name(self, conversation_id: str) -> str | None:
        found = self.get_conversation(conversation_id)
        return found.name if found else None

    # -- devices ---------------------------------------------------------------------------

    def put_device(
        self,
        device_uuid: str,
        conversations: Sequence[str],
        phone: str | None,
        consent: bool,
        may_use: Collection[str] | None,
    ) -> DeviceInfo:
        """Replace the device's phone and consent, and its links to conversations the caller
        may use (links to other channels' conversations are kept)."""
        check_id(device_uuid, "deviceUuid")
        with Session(self.engine) as session, session.begin():
            self._check_conversations(session, conversations, may_use)
            sealed = self.box.seal(phone, PHONES) if phone else None
            self.upsert_devices(session, [(device_uuid, sealed, consent)], task_id=None)
            mine = select(Conversation.conversation_id)
            if may_use is not None:
                mine = mine.where(Conversation.channel.in_(list(may_use)))
            session.execute(
                delete(DeviceConversation).where(
                    DeviceConversation.device_uuid == device_uuid,
                    DeviceConversation.conversation_id.in_(mine),
                )
            )
            self.link(session, [(device_uuid, c) for c in dict.fromkeys(conversations)], None)
        return self._device_info(device_uuid, may_use)

    def upsert_devices(
        self,
        session: Session,
        rows: Sequence[tuple[str, str | None, bool]],
        task_id: str | None,
        keep_phone: bool = False,
    ) -> None:
        """Insert or update ``(uuid, sealed phone, consent)`` rows in one statement.

        ``keep_phone``: a row without a phone keeps the stored one (imports) instead of
        erasing it (PUT replaces)."""
        at = now()
        values = [
            {
                "device_uuid": uuid,
                "phone_sealed": sealed,
                "consent": consent,
                "task_id": task_id,
                "created_at": at,
                "updated_at": at,
            }
            for uuid, sealed, consent in rows
        ]
        statement = self._insert(_table(Device))
        excluded = statement.excluded
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["device_uuid"],
                set_={
                    "phone_sealed": (
                        func.coalesce(excluded.phone_sealed, Device.phone_sealed)
                        if keep_phone
                        else excluded.phone_sealed
                    ),
                    "consent": excluded.consent,
                    "updated_at": excluded.updated_at,
                },
            ),
            values,
        )

    def link(self, session: Session, pairs: Sequence[tuple[str, str]], task_id: str | None) -> int:
        """Link devices to conversations (existing links are kept); how many links are new."""
        if not pairs:
            return 0
        values = [{"device_uuid": d, "conversation_id": c, "task_id": task_id} for d, c in pairs]
        table = _table(DeviceConversation)
        statement = self._insert(table).on_conflict_do_nothing().returning(table.c.device_uuid)
        return len(session.execute(statement, values).all())

    def _check_conversations(
        self, session: Session, ids: Sequence[str], may_use: Collection[str] | None
    ) -> None:
        if not ids:
            raise RegistryError(
                "CLIENT_ERROR", "conversations must list at least one registered conversationId"
            )
        rows = session.execute(
            select(Conversation.conversation_id, Conversation.channel).where(
                Conversation.conversation_id.in_(list(ids))
            )
        ).all()
        known = {cid for cid, channel in rows if may_use is None or channel in may_use}
        missing = [cid for cid in ids if cid not in known]
        if missing:
            raise RegistryError(
                "CLIENT_ERROR",
                f"conversation(s) {', '.join(missing[:5])} are "
                "not registered in your channels; PUT /v1/conversations first",
            )

    def _device_info(self, device_uuid: str, may_use: Collection[str] | None) -> DeviceInfo:
        with Session(self.engine) as session:
            device = session.get(Device, device_uuid)
            assert device is not None
            links = (
                select(DeviceConversation.conversation_id)
                .join(Conversation)
                .where(DeviceConversation.device_uuid == device_uuid)
            )
            if may_use is not None:
                links = links.where(Conversation.channel.in_(list(may_use)))
            conversations = sorted(session.scalars(links))
            return DeviceInfo(
                device_uuid, conversations, device.consent, device.phone_sealed is not None
            )

    def get_device(self, device_uuid: str, may_use: Collection[str] | None) -> DeviceInfo | None:
        """The device if it is linked to a conversation the caller may see."""
        with Session(self.engine) as session:
            if session.get(Device, device_uuid) is None:
                return None
        info = self._device_info(device_uuid, may_use)
        return info if info.conversations or may_use is None else None

    # -- for datasets ------------------------------------------------------------------------

    def non_consenting(self) -> Iterator[str]:
        """UUIDs of devices whose consent is false (their responses are blanked)."""
        with Session(self.engine) as session:
            yield from session.scalars(
                select(Device.device_uuid)
                .where(Device.consent.is_(False))
                .execution_options(yield_per=BATCH_IDS)
            )

    def devices_of(self, conversation_id: str) -> Iterator[str]:
        """UUIDs of the devices registered to a conversation, in order."""
        with Session(self.engine) as session:
            yield from session.scalars(
                select(DeviceConversation.device_uuid)
                .where(DeviceConversation.conversation_id == conversation_id)
                .order_by(DeviceConversation.device_uuid)
                .execution_options(yield_per=BATCH_IDS)
            )

    def records(self, uuids: Sequence[str]) -> dict[str, DeviceRecord]:
        """Registry records of the given devices (missing ones are simply absent)."""
        found: dict[str, DeviceRecord] = {}
        with Session(self.engine) as session:
            for start in range(0, len(uuids), BATCH_IDS):
                chunk = list(uuids[start : start + BATCH_IDS])
                for row in session.scalars(select(Device).where(Device.device_uuid.in_(chunk))):
                    found[row.device_uuid] = DeviceRecord(
                        row.device_uuid, row.consent, row.phone_sealed
                    )
        return found

    def phone_of(self, record: DeviceRecord) -> str | None:
        """The clear phone of a record (the private exhaust only)."""
        return self.box.unseal(record.phone_sealed, PHONES) if record.phone_sealed else None

    def rotate(self) -> int:
        """Re-seal every phone under the current secret, a batch per transaction; how many."""
        changed, after = 0, ""
        while True:
            with Session(self.engine) as session, session.begin():
                rows = session.execute(
                    select(Device.device_uuid, Device.phone_sealed)
                    .where(Device.phone_sealed.is_not(None), Device.device_uuid > after)
                    .order_by(Device.device_uuid)
                    .limit(BATCH_IDS)
                ).all()
                if not rows:
                    return changed
                for uuid, sealed in rows:
                    if sealed is not None and not self.box.is_current(sealed, PHONES):
                        fresh = self.box.seal(self.box.unseal(sealed, PHONES), PHONES)
                        session.execute(
                            update(Device)
                            .where(Device.device_uuid == uuid)
                            .values(phone_sealed=fresh)
                        )
                        changed += 1
                after = rows[-1][0]


def _table(model: type[Base]) -> Table:
    return cast(Table, model.__table__)


def _conversation(row: Conversation) -> ConversationInfo:
    return ConversationInfo(
        row.conversation_id, row.name, row.channel, row.start_date, row.end_date
    )


def parse_day(value: Any, name: str) -> date | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be YYYY-MM-DD")
    try:
        return date.fromisoformat(value) if len(value) == 10 else _bad(name)
    except ValueError:
        return _bad(name)


def _bad(name: str) -> date:
    raise ValueError(f"{name} must be YYYY-MM-DD")
