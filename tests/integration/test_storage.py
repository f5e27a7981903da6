"""The blob store contract, run against every implementation, plus local-only crash recovery."""

from __future__ import annotations

import os
import stat
import threading
from datetime import UTC
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from data_exhaust.signing import LinkError
from data_exhaust.storage import (
    CHUNK_SIZE,
    BlobStore,
    LocalBlobStore,
    open_blob_store,
)
from data_exhaust.testing import MemoryBlobStore

SECRET = b"storage-test-secret"
KEY = "uci-response-exhaust/0123ABCD/responses.csv"
UNSAFE = r"blob (key|prefix)"  # every key or prefix refusal names what was refused
DATA = bytes(range(256)) * 1000  # 256 000 bytes: several 64 KiB chunks


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs", SECRET)
    return MemoryBlobStore(SECRET)


def files_on_disk(store: BlobStore) -> list[str]:
    """Every file under a local store's root, temp files included ([] for the memory store)."""
    if not isinstance(store, LocalBlobStore):
        return []
    return sorted(
        p.relative_to(store.root).as_posix() for p in store.root.rglob("*") if p.is_file()
    )


def put(store: BlobStore, key: str, data: bytes) -> None:
    with store.writer(key) as fh:
        fh.write(data)


def write_then_fail(store: BlobStore, key: str, data: bytes, error: Exception) -> None:
    with store.writer(key) as fh:
        fh.write(data)
        raise error


def content(store: BlobStore, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join(store.read(key, start, end))


# --- atomic publish ---------------------------------------------------------------------------


def test_blob_is_invisible_until_the_writer_exits(store: BlobStore) -> None:
    with store.writer(KEY) as fh:
        fh.write(b"half")
        assert store.stat(KEY) is None
        assert list(store.keys()) == []
        with pytest.raises(FileNotFoundError):
            content(store, KEY)
        fh.write(b" and half")
    assert content(store, KEY) == b"half and half"
    assert list(store.keys()) == [KEY]
    assert files_on_disk(store) in ([], [KEY])


def test_exception_in_the_writer_leaves_nothing_behind(store: BlobStore) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        write_then_fail(store, KEY, DATA, RuntimeError("boom"))
    assert store.stat(KEY) is None
    assert list(store.keys()) == []
    assert files_on_disk(store) == []


def test_replace_is_atomic_and_a_failed_replace_keeps_the_old_blob(store: BlobStore) -> None:
    put(store, KEY, b"version 1")
    old = store.stat(KEY)
    with store.writer(KEY) as fh:
        fh.write(b"version 2")
        assert content(store, KEY) == b"version 1"
    assert content(store, KEY) == b"version 2"
    new = store.stat(KEY)
    assert old is not None
    assert new is not None
    assert new.etag != old.etag  # same size, different content: a strong validator changes
    with pytest.raises(OSError, match="disk full"):
        write_then_fail(store, KEY, b"version 3, never published", OSError("disk full"))
    assert content(store, KEY) == b"version 2"
    assert list(store.keys()) == [KEY]
    assert files_on_disk(store) in ([], [KEY])


def test_put_file_publishes_and_consumes_the_local_file(store: BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "result.csv"
    source.write_bytes(DATA)
    store.put_file(KEY, source)
    assert not source.exists()
    assert content(store, KEY) == DATA
    source.write_bytes(b"replacement")
    store.put_file(KEY, source)
    assert content(store, KEY) == b"replacement"
    assert files_on_disk(store) in ([], [KEY])


def test_put_file_of_a_missing_file_publishes_nothing(store: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.put_file(KEY, tmp_path / "missing.csv")
    assert store.stat(KEY) is None


# --- stat and read ----------------------------------------------------------------------------


def test_stat(store: BlobStore) -> None:
    assert store.stat(KEY) is None
    put(store, KEY, DATA)
    info = store.stat(KEY)
    assert info is not None
    assert (info.key, info.size) == (KEY, len(DATA))
    assert len(info.etag) > 2
    assert info.etag[0] == info.etag[-1] == '"'  # a strong ETag: quoted, no W/
    assert info.modified.utcoffset() == UTC.utcoffset(None)
    assert store.stat(KEY) == info  # cheap and stable: no re-hash, same answer
    assert store.stat("uci-response-exhaust/0123ABCD") is None  # a "directory" is not a blob


def test_empty_blob(store: BlobStore) -> None:
    put(store, KEY, b"")
    info = store.stat(KEY)
    assert info is not None
    assert info.size == 0
    assert content(store, KEY) == b""


def test_read_streams_in_64_kib_chunks(store: BlobStore) -> None:
    put(store, KEY, DATA)
    chunks = list(store.read(KEY))
    assert b"".join(chunks) == DATA
    assert len(chunks) == -(-len(DATA) // CHUNK_SIZE)
    assert all(len(chunk) <= CHUNK_SIZE for chunk in chunks)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, 10),
        (10, 20),
        (100, None),
        (CHUNK_SIZE - 3, CHUNK_SIZE + 3),
        (255_990, 10**9),
        (5, 5),
        (len(DATA), None),
        (10**9, None),
    ],
)
def test_ranged_read(store: BlobStore, start: int, end: int | None) -> None:
    put(store, KEY, DATA)
    assert content(store, KEY, start, end) == DATA[start:end]


@pytest.mark.parametrize(("start", "end"), [(-1, None), (10, 5)])
def test_invalid_range_is_refused(store: BlobStore, start: int, end: int | None) -> None:
    put(store, KEY, DATA)
    with pytest.raises(ValueError, match="range"):
        store.read(KEY, start, end)


def test_reading_a_missing_blob(store: BlobStore) -> None:
    chunks = store.read(KEY)  # lazy: nothing is opened until the first chunk is asked for
    with pytest.raises(FileNotFoundError):
        next(chunks)


def test_non_ascii_keys_and_content(store: BlobStore) -> None:
    key = "uci-response-exhaust/ÉTAT/réponses ✓ 2026.csv"
    data = 'conversationId,message\nc1,नमस्ते\nc2,"é, ü"\n'.encode()
    put(store, key, data)
    assert list(store.keys()) == [key]
    assert content(store, key) == data


# --- listing and deleting ---------------------------------------------------------------------

KEYS = ["a/1/x.csv", "a/1/y.csv", "a/10/z.csv", "a/2/x.csv", "b/x.csv", "top.csv"]


def test_keys(store: BlobStore) -> None:
    for key in reversed(KEYS):
        put(store, key, key.encode())
    assert list(store.keys()) == KEYS
    assert list(store.keys("a/1/")) == ["a/1/x.csv", "a/1/y.csv"]
    assert list(store.keys("a/1")) == ["a/1/x.csv", "a/1/y.csv", "a/10/z.csv"]
    assert list(store.keys("t")) == ["top.csv"]
    assert list(store.keys("c/")) == []
    assert list(store.keys("a/1/x.csv")) == ["a/1/x.csv"]


def test_delete_prefix(store: BlobStore) -> None:
    for key in KEYS:
        put(store, key, key.encode())
    assert store.delete_prefix("a/1/") == 2
    assert list(store.keys()) == ["a/10/z.csv", "a/2/x.csv", "b/x.csv", "top.csv"]
    assert store.delete_prefix("a/1/") == 0
    assert store.delete_prefix("a/") == 2
    assert store.delete_prefix("nothing/") == 0
    assert list(store.keys()) == ["b/x.csv", "top.csv"]
    assert content(store, "b/x.csv") == b"b/x.csv"
    with pytest.raises(ValueError, match="empty"):
        store.delete_prefix("")
    put(store, "a/1/x.csv", b"again")  # its directory was pruned; publishing recreates it
    assert content(store, "a/1/x.csv") == b"again"


# --- key validation ---------------------------------------------------------------------------

BAD_KEYS = [
    "",
    "/etc/passwd",
    "../outside.csv",
    "a/../../outside.csv",
    "a/..",
    "a/./b.csv",
    ".",
    "a//b.csv",
    "a/",
    "a\\..\\..\\outside.csv",
    "a/b\x00.csv",
    "a/b\n.csv",
    ".tmp/x.part",
    "x" * 1025,
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_unsafe_keys_are_refused_everywhere(store: BlobStore, key: str, tmp_path: Path) -> None:
    before = sorted(tmp_path.rglob("*"))
    source = tmp_path / "source.csv"
    source.write_bytes(b"data")
    with pytest.raises(ValueError, match=UNSAFE):
        store.writer(key).__enter__()
    with pytest.raises(ValueError, match=UNSAFE):
        store.put_file(key, source)
    with pytest.raises(ValueError, match=UNSAFE):
        store.stat(key)
    with pytest.raises(ValueError, match=UNSAFE):
        store.read(key)
    with pytest.raises(ValueError, match=UNSAFE):
        store.signed_url(key, "http://testserver", 60)
    assert source.read_bytes() == b"data"
    source.unlink()
    assert sorted(tmp_path.rglob("*")) == before
    assert list(store.keys()) == []


@pytest.mark.parametrize("prefix", ["../", "/etc/", "a/../", "a//", "a\\b", ".tmp/"])
def test_unsafe_prefixes_are_refused(store: BlobStore, prefix: str) -> None:
    with pytest.raises(ValueError, match=UNSAFE):
        store.keys(prefix)
    with pytest.raises(ValueError, match=UNSAFE):
        store.delete_prefix(prefix)


# --- signed links and concurrency -------------------------------------------------------------


def test_signed_url(store: BlobStore) -> None:
    key = "uci-response-exhaust/0123ABCD/réponses 1.csv"
    url, expires = store.signed_url(key, "https://exhaust.example/", 1800, now=1_800_000_000.7)
    assert expires == 1_800_001_800
    parts = urlsplit(url)
    assert url.startswith("https://exhaust.example/download/uci-response-exhaust/0123ABCD/r%C3%A9")
    assert unquote(parts.path) == f"/download/{key}"
    query = parse_qs(parts.query)
    assert query["expires"] == [str(expires)]
    store.verify_link(key, expires, query["signature"][0], now=1_800_000_000.7)
    with pytest.raises(LinkError, match="link expired"):
        store.verify_link(key, expires, query["signature"][0], now=expires)
    with pytest.raises(ValueError, match="ttl"):
        store.signed_url(key, "https://exhaust.example", 0)


def test_concurrent_writers(store: BlobStore) -> None:
    payloads = [bytes([n]) * (CHUNK_SIZE + n) for n in range(8)]

    def write(n: int) -> None:
        put(store, f"many/{n}.bin", payloads[n])
        put(store, "shared.bin", payloads[n])

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(list(store.keys("many/"))) == 8
    assert content(store, "shared.bin") in payloads  # one whole version, never a mix
    assert files_on_disk(store) in ([], sorted([*store.keys()]))


# --- local store only -------------------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs", SECRET)


def test_crash_leftovers_are_invisible_and_cleaned(local: LocalBlobStore) -> None:
    put(local, KEY, b"published")
    leftover = local.root / ".tmp" / "crashed.part"  # what a killed writer leaves
    leftover.write_bytes(b"partial")
    os.utime(leftover, (1_000_000, 1_000_000))
    assert list(local.keys()) == [KEY]
    with pytest.raises(ValueError, match="reserved"):  # temp files have no key at all
        local.stat(".tmp/crashed.part")
    assert local.cleanup_temp(now=1_000_000 + 3600) == 0  # young: maybe a live writer
    assert leftover.exists()
    assert local.cleanup_temp(now=1_000_000 + 86_401) == 1
    assert not leftover.exists()
    assert content(local, KEY) == b"published"


def test_cleanup_keeps_a_running_writer(local: LocalBlobStore) -> None:
    with local.writer(KEY) as fh:
        fh.write(b"in flight")
        assert local.cleanup_temp() == 0
    assert content(local, KEY) == b"in flight"


def test_published_files_are_private_and_dirs_pruned(local: LocalBlobStore) -> None:
    put(local, KEY, DATA)
    assert stat.S_IMODE((local.root / KEY).stat().st_mode) == 0o600
    local.delete_prefix("uci-response-exhaust/")
    assert sorted(p.name for p in local.root.iterdir()) == [".tmp"]


def test_put_file_across_file_systems(local: LocalBlobStore) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == local.root.stat().st_dev:
        pytest.skip("no second file system to copy from")
    source = shm / f"exhaust-test-{os.getpid()}.csv"
    source.write_bytes(DATA)
    try:
        local.put_file(KEY, source)
    finally:
        source.unlink(missing_ok=True)
    assert content(local, KEY) == DATA
    assert files_on_disk(local) == [KEY]


def test_missing_root_is_an_error_not_an_empty_store(local: LocalBlobStore) -> None:
    (local.root / ".tmp").rmdir()
    local.root.rmdir()
    with pytest.raises(FileNotFoundError):
        local.keys()


# --- open_blob_store --------------------------------------------------------------------------


def test_open_blob_store(tmp_path: Path) -> None:
    local = open_blob_store((tmp_path / "my blobs").as_uri(), SECRET)
    assert isinstance(local, LocalBlobStore)
    assert local.root == (tmp_path / "my blobs").resolve()
    assert isinstance(open_blob_store("memory://", SECRET), MemoryBlobStore)


@pytest.mark.parametrize(
    "url", ["s3://bucket/prefix", "az://container/prefix?sig=TOPSECRET", "ftp://x", "/plain/path"]
)
def test_unsupported_schemes_say_what_is_supported(url: str) -> None:
    with pytest.raises(ValueError, match="supported now") as info:
        open_blob_store(url, SECRET)
    message = str(info.value)
    for scheme in ("file://", "memory://", "s3://", "az://"):
        assert scheme in message
    assert "TOPSECRET" not in message


def test_relative_file_url_is_refused() -> None:
    with pytest.raises(ValueError, match="absolute"):
        open_blob_store("file://var/blobs", SECRET)
