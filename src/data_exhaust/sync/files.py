"""A finished job's files: downloaded (resumable, sha256 checked), opened (the private exhaust
from its AES zip with the state's password) and loaded into the state's database."""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

import pyzipper
import sqlalchemy as sa
import structlog

from data_exhaust.client import ExhaustClient
from data_exhaust.sync import loader
from data_exhaust.sync.loader import LoadError, Target

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class FileLoad:
    sha256: str | None
    rows: int
    written: int


@contextmanager
def open_exhaust(path: Path, password: str | None) -> Iterator[IO[bytes]]:
    """The CSV in ``path``: the file itself, or the one CSV inside an encrypted zip."""
    if path.suffix != ".zip":
        with path.open("rb") as plain:
            yield plain
        return
    if not password:
        raise LoadError("this state has no encryption_key in the states file; the zip is locked")
    try:
        archive = pyzipper.AESZipFile(path)
        archive.setpassword(password.encode())
        names = [n for n in archive.namelist() if n.endswith(".csv")]
        if len(names) != 1:
            raise LoadError(f"{path.name} holds {len(names)} CSV files, expected 1")
        with archive, archive.open(names[0]) as member:
            yield member
    except RuntimeError as exc:  # pyzipper: "Bad password for file ..."
        raise LoadError(
            f"{path.name} does not open with this state's encryption_key ({exc}); "
            "check the states file"
        ) from None
    except zipfile.BadZipFile as exc:
        raise LoadError(f"{path.name} is not a readable zip: {exc}") from None


def fetch_and_load(
    client: ExhaustClient,
    job: dict[str, Any],
    work_dir: Path,
    load: Callable[[IO[bytes]], loader.Loaded],
    password: str | None,
    on_bytes: Callable[[int], None],
) -> FileLoad:
    """Download every file of ``job`` into ``work_dir`` and load each; the folder is removed
    once all are loaded (a partial download stays there to be resumed)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    rows = written = 0
    digests = []
    for url, meta in zip(job["downloadUrls"], job["files"], strict=True):
        name = Path(meta["name"]).name  # never a path from the server
        path = client.download(url, work_dir / name, sha256=meta.get("sha256"), on_chunk=on_bytes)
        with open_exhaust(path, password) as stream:
            loaded = load(stream)
        log.info("sync.file.loaded", file=name, rows=loaded.rows, written=loaded.written)
        rows, written = rows + loaded.rows, written + loaded.written
        digests.append(meta.get("sha256") or "")
    shutil.rmtree(work_dir, ignore_errors=True)
    return FileLoad(",".join(digests) or None, rows, written)


def loader_for(
    engine: sa.Engine, target: Target, batch_rows: int, chunk_bytes: int
) -> Callable[[IO[bytes]], loader.Loaded]:
    return partial(
        loader.load, engine, target=target, batch_rows=batch_rows, chunk_bytes=chunk_bytes
    )
