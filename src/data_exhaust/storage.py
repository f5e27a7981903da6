"""Blob stores: where result files live, and the signed links that hand them out.

:class:`BlobStore` is a small set of primitives (write atomically, stat, read a byte range, list,
delete by prefix, sign a link) so that a local directory, S3 and Azure can all implement it.
:class:`LocalBlobStore` keeps blobs in a directory;
:class:`~data_exhaust.testing.MemoryBlobStore` keeps them in a dict (a testing tool that ships
with the package). :func:`open_blob_store` picks one from a URL.

Design decisions:

* **Keys** are relative ``/``-separated paths (``<dataset>/<requestId>/<file>``). Every store
  validates them with :func:`validate_key` first, so ``..``, absolute paths, backslashes, NUL and
  control characters never reach the file system: path traversal is impossible by construction.
  The first segment ``.tmp`` is reserved for the local store's temp files.
* **Atomic publish**: a blob appears under its key only when its writer exits cleanly. The local
  store writes to ``<root>/.tmp/`` (same file system), fsyncs, ``os.replace``\\ s it into place and
  fsyncs the directory; readers see the old blob or the new one, never half of one. A crash leaves
  at most a temp file, invisible to :meth:`~BlobStore.stat` / :meth:`~BlobStore.keys` and removed
  by :meth:`LocalBlobStore.cleanup_temp`.
* **ETags** are strong and cheap: size, mtime (ns) and inode of the published file. Blobs are
  never modified in place (only replaced, which makes a new inode and mtime), so no re-hash is
  needed on each request.
* **Reads are streamed** in 64 KiB chunks from a generator; because it is a generator, a missing
  blob raises :class:`FileNotFoundError` on the first ``next()``, not at the call.
* **Links**: :meth:`BlobStore.signed_url` returns ``<base>/download/<key>?expires=&signature=``
  (see :mod:`data_exhaust.signing`), served by ``data_exhaust.api.download``. The S3 and Azure
  stores (a later issue) will override it to return the provider's presigned / SAS URLs instead.
* A key cannot also be a "directory" of another key in the local store (``a`` and ``a/b``); the
  memory store does not enforce this, so callers should not rely on either behaviour.
"""

from __future__ import annotations

import contextlib
import errno
import io
import math
import os
import shutil
import stat as stat_mod
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, unquote, urlencode, urlsplit

from data_exhaust.fsutil import fsync_dir
from data_exhaust.signing import sign, verify

CHUNK_SIZE = 64 * 1024
TEMP_DIR = ".tmp"
TEMP_MAX_AGE_SECONDS = 24 * 3600
MAX_KEY_BYTES = 1024  # S3's limit; keeps every implementation able to hold every key


@dataclass(frozen=True)
class BlobInfo:
    """What a store knows about one blob; ``modified`` is UTC-aware."""

    key: str
    size: int
    etag: str
    modified: datetime


def _check_segment(segment: str, what: str) -> None:
    if "\\" in segment or any(ord(ch) < 32 or ord(ch) == 127 for ch in segment):
        raise ValueError(f"{what} must not contain backslashes or control characters")


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative path, else raise :class:`ValueError`."""
    if not isinstance(key, str) or not key:
        raise ValueError("blob key must be a non-empty string")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise ValueError(f"blob key is longer than {MAX_KEY_BYTES} bytes")
    if key.startswith("/"):
        raise ValueError(f"blob key must be relative, got {key!r}")
    segments = key.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise ValueError(f"blob key {key!r} has an empty, '.' or '..' segment")
        _check_segment(segment, "blob key")
    if segments[0] == TEMP_DIR:
        raise ValueError(f"blob keys must not start with the reserved {TEMP_DIR!r} segment")
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is safe: its complete segments obey :func:`validate_key`.

    The part after the last ``/`` is only a string filter (``"a/b"`` matches ``a/b/x``, ``a/bc``).
    """
    directory, _, partial = prefix.rpartition("/")
    if directory or prefix.startswith("/"):
        validate_key(directory)
    _check_segment(partial, "blob prefix")
    return prefix


def check_range(start: int, end: int | None) -> None:
    """Refuse a byte range no store can serve (every implementation's ``read`` calls it)."""
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"invalid byte range start={start} end={end}")


class BlobStore(ABC):
    """Primitives over a container of blobs; see the module docstring for the contract."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @abstractmethod
    def writer(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """A file to write; published under ``key`` (replacing any blob) when the block exits
        cleanly; on an exception nothing is published and nothing is left behind."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Publish the local file ``path`` atomically under ``key``; ``path`` is consumed (moved
        when on the store's file system, else copied then removed)."""

    @abstractmethod
    def stat(self, key: str) -> BlobInfo | None:
        """The blob's size, ETag and modification time; None when there is no such blob."""

    @abstractmethod
    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive, clamped to the size) in chunks of 64 KiB.

        An invalid key or range raises :class:`ValueError` at once; a missing blob raises
        :class:`FileNotFoundError` on the first ``next()`` (the file is opened lazily, so an
        iterator that is never consumed holds no file handle).
        """

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every blob whose key starts with ``prefix`` (not empty); how many."""

    @abstractmethod
    def keys(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with ``prefix``, sorted."""

    def signed_url(
        self, key: str, base_url: str, ttl_seconds: int, now: float | None = None, by: str = ""
    ) -> tuple[str, int]:
        """A link to ``GET /download/<key>`` valid ``ttl_seconds``, and its expiry (epoch s).

        ``by`` (an API key id) is carried in the link and signed, for the download audit log.
        Cloud stores override this to return the provider's presigned / SAS URL.
        """
        validate_key(key)
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        expires = math.floor(time.time() if now is None else now) + ttl_seconds
        params: dict[str, str | int] = {"expires": expires}
        if by:
            params["by"] = by
        params["signature"] = sign(key, expires, self._secret, by)
        return (
            f"{base_url.rstrip('/')}/download/{quote(key, safe='/')}?{urlencode(params)}",
            expires,
        )

    def verify_link(
        self, key: str, expires: int, signature: str, now: float | None = None, by: str = ""
    ) -> None:
        """Raise :class:`~data_exhaust.signing.LinkError` unless this store signed the link."""
        verify(key, expires, signature, self._secret, now, by)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


#: Bytes a blob being written may leave dirty in the page cache before the kernel is asked to
#: start writing them back (asynchronously), so that the fsync before publishing only waits
#: for the last of them: a 1.5 GB export had waited ~3 s in that fsync, not writing anything
#: to disk until then.
WRITEBACK_BYTES = 32 * 1024 * 1024


class _WritebackFile(io.BufferedWriter):
    """A buffered file that starts the kernel's write-back every :data:`WRITEBACK_BYTES`
    (``posix_fadvise(DONTNEED)`` on Linux starts it without waiting, and drops the pages
    already on disk from the cache: nothing reads a new blob back soon)."""

    _unflushed = 0

    def write(self, data: Any) -> int:
        written = super().write(data)
        self._unflushed += written
        if self._unflushed >= WRITEBACK_BYTES and hasattr(os, "posix_fadvise"):
            self.flush()
            os.posix_fadvise(self.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            self._unflushed = 0
        return written


class LocalBlobStore(BlobStore):
    """Blobs as files under ``root``; temp files in ``root/.tmp`` (same file system).

    :meth:`writer` creates files with mode 0600 (they may hold personal data): only the service's
    own user reads them, through :meth:`read`.
    """

    def __init__(self, root: Path | str, secret: bytes) -> None:
        super().__init__(secret)
        self.root = Path(root).resolve()
        self._tmp = self.root / TEMP_DIR
        self._tmp.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        dest = self._path(key)
        self._tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self._tmp, suffix=".part")
        tmp = Path(name)
        try:
            with _WritebackFile(io.FileIO(fd, "wb")) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            self._publish(tmp, dest)
        except BaseException:  # includes GeneratorExit: an abandoned writer leaves nothing
            tmp.unlink(missing_ok=True)
            raise

    def _publish(self, src: Path, dest: Path) -> None:
        """``os.replace`` then fsync the directory; retried if a concurrent
        :meth:`delete_prefix` removed the freshly created (empty) parent directory."""
        for attempt in range(3):
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(src, dest)
                break
            except FileNotFoundError:
                if attempt == 2 or not src.exists():
                    raise
        fsync_dir(dest.parent)

    def put_file(self, key: str, path: Path) -> None:
        dest = self._path(key)
        source = Path(path)
        _fsync_file(source)
        try:
            self._publish(source, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            with self.writer(key) as out, source.open("rb") as src:
                shutil.copyfileobj(src, out, CHUNK_SIZE)
            source.unlink()

    def stat(self, key: str) -> BlobInfo | None:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat_mod.S_ISREG(st.st_mode):
            return None
        etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}-{st.st_ino:x}"'
        modified = datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC)
        return BlobInfo(key=key, size=st.st_size, etag=etag, modified=modified)

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        check_range(start, end)
        return self._chunks(self._path(key), start, end)

    @staticmethod
    def _chunks(path: Path, start: int, end: int | None) -> Iterator[bytes]:
        try:
            fh = path.open("rb")
        except (IsADirectoryError, NotADirectoryError) as exc:
            raise FileNotFoundError(f"no blob at {path}") from exc
        with fh:
            fh.seek(start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                chunk = fh.read(CHUNK_SIZE if remaining is None else min(CHUNK_SIZE, remaining))
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def keys(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        if not self.root.is_dir():  # os.walk would hide it; health checks rely on this error
            raise FileNotFoundError(f"blob store root {self.root} is missing")
        directory = prefix.rpartition("/")[0]
        base = self.root.joinpath(*directory.split("/")) if directory else self.root
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            if Path(dirpath) == self.root and TEMP_DIR in dirnames:
                dirnames.remove(TEMP_DIR)
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    found.append(key)
        return iter(sorted(found))

    def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise ValueError("refusing to delete every blob: the prefix is empty")
        deleted = 0
        parents: set[Path] = set()
        for key in list(self.keys(prefix)):
            path = self._path(key)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                deleted += 1
                parents.add(path.parent)
        for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            self._prune(parent)
        return deleted

    def _prune(self, directory: Path) -> None:
        """Remove ``directory`` and its ancestors below the root while they are empty."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:  # not empty (or already gone): stop climbing
                return
            directory = directory.parent

    def cleanup_temp(
        self, max_age_seconds: float = TEMP_MAX_AGE_SECONDS, now: float | None = None
    ) -> int:
        """Remove temp files older than ``max_age_seconds`` (left by a crash); how many.

        Younger ones may belong to a writer still running, so they are kept.
        """
        current = time.time() if now is None else now
        removed = 0
        with os.scandir(self._tmp) as entries:
            for entry in entries:
                if entry.is_file() and current - entry.stat().st_mtime > max_age_seconds:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed += 1
        return removed


def open_blob_store(url: str, secret: bytes) -> BlobStore:
    """The store named by ``url``: ``file:///abs/dir`` or ``memory://``.

    Only the scheme is echoed in errors: cloud URLs may carry credentials (SAS tokens).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(
                "file:// storage URLs must be absolute, like file:///var/exhaust/blobs"
            )
        return LocalBlobStore(Path(unquote(parts.path)), secret)
    if scheme == "memory":
        from data_exhaust.testing import MemoryBlobStore

        return MemoryBlobStore(secret)
    raise ValueError(
        f"unsupported storage URL scheme {scheme + '://' if scheme else '(none)'}; "
        "supported now: file:// (a local directory) and memory:// (tests); "
        "s3:// and az:// come in a later release"
    )
