"""API keys and the short-lived cache of verified keys (``EXHAUST_KEY_CACHE_SECONDS``), over
real databases: a revocation in the serving process is seen at once, one made by another process
once the TTL has passed, and the cache never holds a plain key."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from data_exhaust.api.app import create_app
from data_exhaust.db import make_engine
from data_exhaust.keys import Caller, KeyCache, KeyStore
from data_exhaust.services import Services, build_services
from data_exhaust.settings import Settings

ROUTE = "/dataset/v1/request/list/t1"


class Clock:
    """A monotonic clock the test moves by hand (no sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services, run_executor=False)) as test_client:
        yield test_client


def status_with(client: TestClient, key: str) -> int:
    answer = client.get(ROUTE, headers={"Authorization": f"Bearer {key}", "X-Channel-ID": "c1"})
    return answer.status_code


def test_a_key_revoked_in_the_serving_process_is_refused_at_once(
    client: TestClient, services: Services
) -> None:
    assert services.settings.key_cache_seconds == 5.0  # the default: the cache is on
    info, key = services.keys.create("state", ["c1"], ["exhaust"])
    assert status_with(client, key) == 200
    assert status_with(client, key) == 200  # now answered from the cache
    forged = key[: key.rindex("_") + 1] + "x" * 43  # the cached key's id, another secret
    assert status_with(client, forged) == 401
    services.keys.revoke(info.key_id)
    assert status_with(client, key) == 401


def test_a_key_revoked_by_another_process_works_until_the_ttl_has_passed(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    clock = Clock()
    server = KeyStore(engine, cache_seconds=5.0, clock=clock)
    cli = KeyStore(engine)  # `exhaust keys revoke` in another process: its own store
    info, key = cli.create("state", ["c1"], ["exhaust"])
    assert server.authenticate(key) == Caller(info.key_id, "state", ("c1",), frozenset({"exhaust"}))
    cli.revoke(info.key_id)
    clock.now += 4.9
    assert server.authenticate(key) is not None  # the documented trade-off: at most the TTL
    clock.now += 0.1
    assert server.authenticate(key) is None
    assert server.authenticate(key) is None  # a refused key is not cached either
    engine.dispose()


def test_a_zero_ttl_looks_every_key_up(database_url: str) -> None:
    engine = make_engine(database_url)
    server = KeyStore(engine, cache_seconds=0)
    cli = KeyStore(engine)
    info, key = cli.create("state", ["c1"], ["exhaust"])
    assert server.authenticate(key) is not None and server.cached(key) is None
    cli.revoke(info.key_id)
    assert server.authenticate(key) is None
    engine.dispose()


def test_the_cache_keeps_digests_never_plain_keys(services: Services) -> None:
    _, key = services.keys.create("state", ["c1"], ["exhaust"])
    assert services.keys.cached(key) is None
    caller = services.keys.authenticate(key)
    assert caller is not None and services.keys.cached(key) == caller
    state = repr(vars(services.keys.cache))
    assert key not in state and key.rsplit("_", 1)[1] not in state
    assert hashlib.sha256(key.encode()).hexdigest() in state
    assert services.keys.cached(key.replace("dx_", "xx_", 1)) is None  # malformed: never


def test_a_lookup_that_raced_a_revocation_cannot_fill_the_cache() -> None:
    clock = Clock()
    cache = KeyCache(5.0, clock)
    caller = Caller("k1", "state", ("c1",), frozenset({"exhaust"}))
    generation = cache.generation  # a lookup starts and reads the key as valid…
    cache.forget("k1")  # …while the key is revoked in this process
    cache.put("digest-1", caller, generation)
    assert cache.get("digest-1") is None
    cache.put("digest-1", caller, cache.generation)
    assert cache.get("digest-1") == caller
    clock.now += 5.0
    assert cache.get("digest-1") is None


def test_the_cache_stays_bounded() -> None:
    clock = Clock()
    cache = KeyCache(5.0, clock, size=3)
    for n in range(10):
        caller = Caller(f"k{n}", "state", ("c1",), frozenset({"exhaust"}))
        cache.put(f"digest-{n}", caller, cache.generation)
        assert len(vars(cache)["_entries"]) <= 3
    assert cache.get("digest-9") is not None


def test_the_setting_reaches_the_key_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str
) -> None:
    monkeypatch.setenv("EXHAUST_KEY_CACHE_SECONDS", "0")
    services = build_services(Settings(data_dir=tmp_path, database_url=sqlite_url))
    try:
        assert services.keys.cache.ttl == 0
        _, key = services.keys.create("state", ["c1"], ["exhaust"])
        assert services.keys.authenticate(key) is not None and services.keys.cached(key) is None
    finally:
        services.close()
