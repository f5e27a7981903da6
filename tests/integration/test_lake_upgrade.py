"""A lake compacted before ``event_key`` existed, exported by the real worker: the key is
derived for its files, so a batch retried across the upgrade is still dropped, a second reply
sharing a ``mid`` is still kept, and the file is the same before and after the day merge that
rewrites the old file with the key."""

from __future__ import annotations

import csv
import io
from typing import Any

import pyarrow.parquet as pq

from data_exhaust.datasets import SubmitContext
from data_exhaust.jobs import Status
from data_exhaust.manager import Submission
from data_exhaust.services import Services
from data_exhaust.telemetry import flatten
from tests.factories import CHANNEL, CONVERSATION_ID, assess_event
from tests.integration.test_lake_merge import strip_event_key


def export(services: Services, tag: str) -> tuple[bytes, list[dict[str, str]]]:
    """Run one uci-response-exhaust of 2022-06-21 to its end: the CSV's bytes and rows."""
    dataset = services.datasets["uci-response-exhaust"]
    submit = SubmitContext(CHANNEL, services.today(), services.settings, services.registry)
    config: dict[str, Any] = {"conversationId": CONVERSATION_ID, "startDate": "2022-06-21",
                              "endDate": "2022-06-21"}  # fmt: skip
    job, _ = services.jobs.submit(
        Submission("uci-response-exhaust", tag, CHANNEL, "u", dataset.validate(config, submit))
    )
    assert services.worker().run_one()
    done = services.jobs.get(job.request_id)
    assert done.status == Status.SUCCESS, done.message
    (file,) = done.files
    data = b"".join(services.blobs.read(file.key))
    return data, list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))


def test_an_old_lake_exports_each_event_once_before_and_after_its_merge(
    services: Services,
) -> None:
    lake = services.lake
    batch = [assess_event() for _ in range(4)]
    lake.append([flatten(event) for event in batch])
    lake.compact()  # one file for 2022-06-21: nothing to merge yet
    (old,) = lake.parquet_files()
    strip_event_key(old)  # as an older release wrote it
    reply = assess_event(mid=batch[0]["mid"], ets=batch[0]["ets"], **{"edata.item.id": "q9"})
    lake.append([flatten(event) for event in [*batch, reply]])  # the retried batch, raw
    before, rows = export(services, "before")
    mids = [row["Message ID"] for row in rows]
    assert sorted(mids) == sorted([event["mid"] for event in batch] + [reply["mid"]])
    assert {row["Question Id"] for row in rows if row["Message ID"] == reply["mid"]} == {
        batch[0]["edata"]["item"]["id"],
        "q9",
    }
    lake.compact()  # the raw segment becomes a second file, and the day is merged
    (merged,) = lake.parquet_files()
    assert merged.name.startswith("part-merge-") and "event_key" in pq.read_schema(merged).names
    after, _ = export(services, "after")
    assert after == before
