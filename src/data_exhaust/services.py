"""The parts of one running process, built from :class:`Settings` in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import Engine

from data_exhaust.datasets import Dataset, load_datasets
from data_exhaust.db import make_engine
from data_exhaust.keys import KeyStore
from data_exhaust.lake import Lake
from data_exhaust.manager import JobManager
from data_exhaust.settings import Settings
from data_exhaust.storage import BlobStore, open_blob_store
from data_exhaust.store import SqlJobStore
from data_exhaust.telemetry import Ingestor


@dataclass
class Services:
    settings: Settings
    engine: Engine
    jobs: JobManager
    blobs: BlobStore
    lake: Lake
    keys: KeyStore
    ingestor: Ingestor
    datasets: dict[str, Dataset] = field(default_factory=dict)

    def today(self) -> date:
        return datetime.now(self.settings.tz).date()

    def close(self) -> None:
        self.engine.dispose()


def build_services(settings: Settings) -> Services:
    """Connect every part named by ``settings`` (the database must be migrated)."""
    engine = make_engine(settings.resolved_database_url)
    blobs = open_blob_store(settings.resolved_storage_url, settings.secret)
    lake = Lake.from_url(settings.resolved_lake_url)
    jobs = JobManager(SqlJobStore(engine), settings)
    return Services(
        settings=settings,
        engine=engine,
        jobs=jobs,
        blobs=blobs,
        lake=lake,
        keys=KeyStore(engine),
        ingestor=Ingestor(lake, engine),
        datasets=load_datasets(),
    )
