"""API keys: created once, shown once, stored as a SHA-256 hash, bound to channels and scopes.

Verified keys are remembered for a few seconds (:class:`KeyCache`, ``EXHAUST_KEY_CACHE_SECONDS``)
so that a busy client does not cost a database lookup per request. The cache holds only the
SHA-256 digest of a key, never the key. A revocation through this process's :class:`KeyStore`
takes effect at once; one made by another process (``exhaust keys revoke``) within the TTL.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from data_exhaust.constants import SCOPES
from data_exhaust.models import ApiKey

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


def _well_formed(plain: str) -> bool:
    parts = plain.split("_", 2)
    return len(parts) == 3 and parts[0] == PREFIX


class KeyCache:
    """Callers of recently verified keys for ``ttl`` seconds, by the SHA-256 digest of the key.

    ``ttl`` 0 disables it. :meth:`forget` drops a key at once; a lookup that started before a
    :meth:`forget` cannot store its (possibly stale) answer afterwards, because :meth:`put` is
    refused when the generation it read has changed. At most ``size`` entries are kept.
    """

    def __init__(
        self, ttl: float, clock: Callable[[], float] = time.monotonic, size: int = 1024
    ) -> None:
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[Caller, float]] = {}
        self.generation = 0

    def get(self, digest: str) -> Caller | None:
        entry = self._entries.get(digest)
        if entry is None or self._clock() >= entry[1]:
            return None
        return entry[0]

    def put(self, digest: str, caller: Caller, generation: int) -> None:
        """Remember ``caller``, unless a key was forgotten since ``generation`` was read."""
        if self.ttl <= 0:
            return
        with self._lock:
            if generation != self.generation:
                return
            if len(self._entries) >= self.size:
                self._drop_expired()
            self._entries[digest] = (caller, self._clock() + self.ttl)

    def forget(self, key_id: str) -> None:
        with self._lock:
            self.generation += 1
            for digest, (caller, _) in list(self._entries.items()):
                if caller.key_id == key_id:
                    del self._entries[digest]

    def _drop_expired(self) -> None:
        now = self._clock()
        self._entries = {d: e for d, e in self._entries.items() if e[1] > now}
        if len(self._entries) >= self.size:
            self._entries = {}


class KeyStore:
    """Creates, checks, lists and revokes API keys.

    ``cache_seconds`` > 0 keeps verified keys in a :class:`KeyCache` for that long; ``clock``
    is its time source (monotonic seconds).
    """

    def __init__(
        self,
        engine: Engine,
        cache_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.cache = KeyCache(cache_seconds, clock)

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

    def cached(self, plain: str) -> Caller | None:
        """The caller behind ``plain`` if it was verified within the TTL (no I/O), else None."""
        return self.cache.get(_digest(plain)) if _well_formed(plain) else None

    def authenticate(self, plain: str) -> Caller | None:
        """The caller behind ``plain``, or None for an unknown, malformed or revoked key."""
        if not _well_formed(plain):
            return None
        digest = _digest(plain)
        caller = self.cache.get(digest)
        if caller is None:
            generation = self.cache.generation
            caller = self._lookup(plain.split("_", 2)[1], digest)
            if caller is not None:
                self.cache.put(digest, caller, generation)
        return caller

    def _lookup(self, key_id: str, digest: str) -> Caller | None:
        with Session(self.engine) as session:
            row = session.get(ApiKey, key_id)
            if row is None or row.revoked_at is not None:
                return None
            if not hmac.compare_digest(row.key_hash, digest):
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
            info = _info(row)
        self.cache.forget(key_id)  # after the commit: a lookup in between sees the revocation
        return info


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(
        row.key_id, row.name, list(row.channels), list(row.scopes), row.created_at, row.revoked_at
    )
