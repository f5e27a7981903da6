"""API keys: created once, shown once, stored as a SHA-256 hash, bound to channels and scopes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from data_exhaust.models import ApiKey

SCOPES = ("exhaust", "pii", "ingest", "admin")
PREFIX = "dx"


class KeyError_(ValueError):
    """A key cannot be created or revoked as asked."""


@dataclass(frozen=True)
class Caller:
    """Who is calling: a key's id, name, channels and scopes."""

    key_id: str
    name: str
    channels: tuple[str, ...]
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def may_use(self, channel: str) -> bool:
        return self.is_admin or channel in self.channels


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    name: str
    channels: list[str]
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    """Creates, checks, lists and revokes API keys."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, name: str, channels: list[str], scopes: list[str]) -> tuple[KeyInfo, str]:
        """A new key; the plain key is returned here and never again."""
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown:
            raise KeyError_(f"unknown scope(s) {', '.join(unknown)}; use {', '.join(SCOPES)}")
        if not scopes:
            raise KeyError_("give at least one scope, e.g. --scope exhaust")
        if not channels and "admin" not in scopes:
            raise KeyError_("give at least one --channel (only admin keys may have none)")
        key_id = secrets.token_hex(6)
        plain = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        row = ApiKey(
            key_id=key_id,
            name=name,
            key_hash=_digest(plain),
            channels=channels,
            scopes=sorted(set(scopes)),
            created_at=datetime.now(UTC),
            revoked_at=None,
        )
        with Session(self.engine) as session, session.begin():
            session.add(row)
            info = _info(row)
        return info, plain

    def authenticate(self, plain: str) -> Caller | None:
        """The caller behind ``plain``, or None for an unknown, malformed or revoked key."""
        parts = plain.split("_", 2)
        if len(parts) != 3 or parts[0] != PREFIX:
            return None
        with Session(self.engine) as session:
            row = session.get(ApiKey, parts[1])
            if row is None or row.revoked_at is not None:
                return None
            if not hmac.compare_digest(row.key_hash, _digest(plain)):
                return None
            return Caller(row.key_id, row.name, tuple(row.channels), frozenset(row.scopes))

    def list(self) -> list[KeyInfo]:
        with Session(self.engine) as session:
            return [_info(r) for r in session.scalars(select(ApiKey).order_by(ApiKey.created_at))]

    def revoke(self, key_id: str) -> KeyInfo:
        with Session(self.engine) as session, session.begin():
            row = session.get(ApiKey, key_id)
            if row is None:
                raise KeyError_(f"no key with id {key_id!r}; see `exhaust keys list`")
            row.revoked_at = row.revoked_at or datetime.now(UTC)
            return _info(row)


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(
        row.key_id, row.name, list(row.channels), list(row.scopes), row.created_at, row.revoked_at
    )
