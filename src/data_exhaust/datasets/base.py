"""The dataset plugin contract.

A dataset is a kind of export. A plugin subclasses :class:`Dataset` and registers itself under
the ``data_exhaust.datasets`` entry-point group of its distribution, exactly as the built-in
datasets do in this project's ``pyproject.toml``::

    [project.entry-points."data_exhaust.datasets"]
    my-dataset = "my_package.module:MyDataset"

At submit time :meth:`Dataset.validate` checks and normalises the ``datasetConfig`` (its
:class:`ConfigError` message goes to the client as a 400). A worker then calls
:meth:`Dataset.run` with a :class:`RunContext` through which it reads the lake, reports
progress, honours stop requests and writes its result files.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from data_exhaust.jobs import Job, OutputFile
    from data_exhaust.lake import Lake
    from data_exhaust.registry import Registry
    from data_exhaust.settings import Settings
    from data_exhaust.storage import BlobStore


class ConfigError(ValueError):
    """The client's ``datasetConfig`` is not acceptable; the message says how to fix it."""


class PermanentError(Exception):
    """The job cannot succeed by retrying (no data, bad config found at run time)."""


class NoDataFound(PermanentError):
    def __init__(self) -> None:
        super().__init__("No data found")


class StopRequested(Exception):
    """Raised at a checkpoint when the job's stop flag is set."""


@dataclass(frozen=True)
class SubmitContext:
    """What a dataset may consult while validating a submission."""

    channel: str
    today: date  # in EXHAUST_TIMEZONE
    settings: Settings
    registry: Registry | None = None


class RunContext(Protocol):
    """What the engine gives a running dataset."""

    job: Job
    settings: Settings
    today: date
    lake: Lake
    registry: Registry
    blobs: BlobStore
    #: Merged into the job's progress (an import's counts and errors).
    details: dict[str, Any]

    def checkpoint(self, rows_done: int, rows_total: int | None = None) -> None:
        """Record progress; raises :class:`StopRequested` when the job must stop."""

    def duckdb(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection (interrupted if the job is stopped mid-query)."""

    def write(
        self,
        stem: str,
        header: Sequence[str],
        batches: pa.RecordBatchReader,
        rows_total: int | None = None,
    ) -> OutputFile:
        """Stream ``batches`` into ``<stem>.<ext>`` in the job's output format and publish it."""

    def publish_file(self, name: str, path: Path, rows: int) -> OutputFile:
        """Publish the finished local file ``path`` (consumed) as the job's file ``name``.

        For datasets that must build a file themselves (the private exhaust's encrypted zip):
        size and SHA-256 are computed here and the blob appears atomically."""


class Dataset(ABC):
    """A kind of export. Subclasses set ``id`` and implement ``validate`` and ``run``."""

    id: ClassVar[str]
    title: ClassVar[str] = ""
    #: PII datasets need the ``pii`` scope and an ``encryptionKey`` (api.md §4).
    pii: ClassVar[bool] = False
    #: The output formats this dataset can write.
    formats: ClassVar[tuple[str, ...]] = ("csv", "csv.gz", "jsonl", "parquet")
    #: Internal datasets (imports) run as jobs but cannot be submitted through the dataset API.
    internal: ClassVar[bool] = False

    @abstractmethod
    def validate(self, config: dict[str, Any], submit: SubmitContext) -> dict[str, Any]:
        """The normalised config (defaults filled in), or raise :class:`ConfigError`."""

    @abstractmethod
    def run(self, ctx: RunContext) -> list[OutputFile]:
        """Produce the result files; raise :class:`NoDataFound` when there is nothing."""

    def rollback(self, job: Job, registry: Registry) -> int | None:
        """Undo the rows a stopped or failed run of ``job`` wrote; how many (None: nothing to
        undo, the default for exports, whose files the engine deletes)."""
        return None
