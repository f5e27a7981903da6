"""Import kinds as internal datasets: a task streams a stored upload into tables (tasks.md).

The upload was checked and stored as a blob by :mod:`data_exhaust.tasks`; the job's config
names it (``blobKey``), with ``strict`` and the original ``fileName``. The run streams the
blob through :mod:`data_exhaust.import_core` in batches of ``EXHAUST_IMPORT_BATCH_ROWS``, one
transaction each, every row tagged with the task id (the job's requestId), and checkpoints
after every batch: a stop request raises there, and the worker then calls :meth:`rollback`,
which deletes the task's rows, as it does after a failure. A finished import stays. A run
first deletes whatever an earlier, killed execution of the same task committed, so a task
that a restart (or another worker) finishes has every row exactly once.
"""

from __future__ import annotations

import io
from abc import abstractmethod
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any, ClassVar

import structlog

from data_exhaust.csv_lines import ImportFormatError
from data_exhaust.datasets.base import (
    ConfigError,
    Dataset,
    PermanentError,
    RunContext,
    SubmitContext,
)
from data_exhaust.import_core import BatchCallback, ImportFailed, ImportResult
from data_exhaust.registry_import import import_conversations, import_devices
from data_exhaust.registry_import import rollback as rollback_registry
from data_exhaust.table_import import (
    import_form_responses,
    import_teams,
    rollback_form_responses,
    rollback_teams,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from typing_extensions import Buffer

    from data_exhaust.jobs import Job, OutputFile
    from data_exhaust.registry import Registry
    from data_exhaust.storage import BlobStore

UPLOADS = "uploads/"
log = structlog.get_logger(__name__)


class BlobSource(io.RawIOBase):
    """A stored blob read as a binary file (for :mod:`data_exhaust.csv_lines`)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._rest = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Buffer) -> int:
        view = memoryview(buffer).cast("B")
        while not self._rest:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._rest = chunk
        size = min(len(view), len(self._rest))
        view[:size], self._rest = self._rest[:size], self._rest[size:]
        return size


def count_lines(blobs: BlobStore, key: str) -> int:
    """Data lines in the blob (newlines minus the header; quoted newlines count too)."""
    lines, last = 0, b"\n"
    for chunk in blobs.read(key):
        lines += chunk.count(b"\n")
        last = chunk[-1:] or last
    return max(0, lines + (last != b"\n") - 1)


def task_counts(result: ImportResult) -> dict[str, Any]:
    return {
        "done": result.rows,
        "inserted": result.inserted,
        "updated": result.updated,
        "rejected": result.rejected,
        "errors": result.errors_json(),
    }


class ImportDataset(Dataset):
    """An import kind run as a job; subclasses name the kind and call its loader."""

    kind: ClassVar[str]
    internal: ClassVar[bool] = True
    formats: ClassVar[tuple[str, ...]] = ("csv",)

    def validate(self, config: dict[str, Any], submit: SubmitContext) -> dict[str, Any]:
        key = config.get("blobKey")
        if not isinstance(key, str) or not key.startswith(UPLOADS):
            raise ConfigError("blobKey must name a stored upload (uploads/…)")
        name = config.get("fileName", "")
        if not isinstance(name, str) or len(name) > 300:
            raise ConfigError("fileName must be a string of at most 300 characters")
        return {"blobKey": key, "strict": config.get("strict") is True, "fileName": name}

    def run(self, ctx: RunContext) -> list[OutputFile]:
        key = ctx.job.config["blobKey"]
        self.undo_earlier_attempt(ctx)
        total = count_lines(ctx.blobs, key)
        ctx.details.update({"total": total, "done": 0, "rolledBack": 0})
        ctx.checkpoint(0, total)

        seen: list[ImportResult] = []  # the import's own result, counted to its very end

        def on_batch(_bytes: int, result: ImportResult) -> None:
            seen[:] = [result]
            ctx.details.update(task_counts(result))
            ctx.checkpoint(result.rows, total)

        def source() -> IO[bytes]:
            return io.BufferedReader(BlobSource(ctx.blobs.read(key)), 1 << 16)

        try:
            result = self.load(ctx, source, ctx.job.config["strict"], on_batch)
        except ImportFailed as exc:
            ctx.details.update(task_counts(exc.result))
            raise PermanentError(str(exc)) from None
        except ImportFormatError as exc:
            raise PermanentError(str(exc)) from None
        except BaseException:  # a stop or a failure: batches may have committed after the
            if seen:  # last checkpoint (two in flight on Postgres); the rollback counts them
                ctx.details.update(task_counts(seen[0]))
            raise
        ctx.details.update(task_counts(result))
        ctx.blobs.delete_prefix(key)
        return []

    def undo_earlier_attempt(self, ctx: RunContext) -> None:
        """Remove what an earlier execution of this task left: a worker killed mid-import
        never rolled back its committed batches, and the task runs again (under the same task
        id) once its lease expires. Without this, those rows would be there twice."""
        left = self.undo(ctx.registry, ctx.job.request_id)
        if left:
            log.warning("import.earlier_attempt_undone", request_id=ctx.job.request_id, rows=left)

    def rollback(self, job: Job, registry: Registry) -> int | None:
        return self.undo(registry, job.request_id)

    @abstractmethod
    def load(
        self, ctx: RunContext, source: Callable[[], IO[bytes]], strict: bool,
        on_batch: BatchCallback,
    ) -> ImportResult:  # fmt: skip
        """Run the kind's import of ``source`` under the job's task id."""

    @abstractmethod
    def undo(self, registry: Registry, task_id: str) -> int:
        """Delete what task ``task_id`` created; how many rows."""


class ImportTeams(ImportDataset):
    id: ClassVar[str] = "import-teams"
    kind: ClassVar[str] = "teams"
    title: ClassVar[str] = "Import teams (name,description,manager,members)"

    def load(
        self, ctx: RunContext, source: Callable[[], IO[bytes]], strict: bool,
        on_batch: BatchCallback,
    ) -> ImportResult:  # fmt: skip
        return import_teams(
            ctx.registry.engine, source, ctx.job.request_id, strict=strict,
            batch_rows=ctx.settings.import_batch_rows, on_batch=on_batch,
            writers=ctx.settings.import_writers,
        )  # fmt: skip

    def undo(self, registry: Registry, task_id: str) -> int:
        return rollback_teams(registry.engine, task_id)


class ImportFormResponses(ImportDataset):
    id: ClassVar[str] = "import-form-responses"
    kind: ClassVar[str] = "form-responses"
    title: ClassVar[str] = "Import form responses (the form-responses export's columns)"

    def load(
        self, ctx: RunContext, source: Callable[[], IO[bytes]], strict: bool,
        on_batch: BatchCallback,
    ) -> ImportResult:  # fmt: skip
        return import_form_responses(
            ctx.registry.engine, source, ctx.job.request_id, tz=ctx.settings.tz, strict=strict,
            batch_rows=ctx.settings.import_batch_rows, on_batch=on_batch,
        )  # fmt: skip

    def undo(self, registry: Registry, task_id: str) -> int:
        return rollback_form_responses(registry.engine, task_id)


class ImportDevices(ImportDataset):
    id: ClassVar[str] = "import-devices"
    kind: ClassVar[str] = "devices"
    title: ClassVar[str] = "Import devices (device_uuid,conversation_id,phone,consent)"

    def load(
        self, ctx: RunContext, source: Callable[[], IO[bytes]], strict: bool,
        on_batch: BatchCallback,
    ) -> ImportResult:  # fmt: skip
        return import_devices(
            ctx.registry, source, ctx.job.request_id, uci_secret=ctx.settings.uci_secret,
            strict=strict, batch_rows=ctx.settings.import_batch_rows, on_batch=on_batch,
        )  # fmt: skip

    def undo(self, registry: Registry, task_id: str) -> int:
        return rollback_registry(registry.engine, task_id)


class ImportConversations(ImportDataset):
    id: ClassVar[str] = "import-conversations"
    kind: ClassVar[str] = "conversations"
    title: ClassVar[str] = "Import conversations (conversation_id,name,channel,start_date,…)"

    def load(
        self, ctx: RunContext, source: Callable[[], IO[bytes]], strict: bool,
        on_batch: BatchCallback,
    ) -> ImportResult:  # fmt: skip
        return import_conversations(
            ctx.registry, source, ctx.job.request_id, strict=strict,
            batch_rows=ctx.settings.import_batch_rows, on_batch=on_batch,
        )  # fmt: skip

    def undo(self, registry: Registry, task_id: str) -> int:
        return rollback_registry(registry.engine, task_id)
