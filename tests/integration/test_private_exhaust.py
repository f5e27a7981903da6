"""uci-private-exhaust on a real service stack (lake, registry, worker, blob store), on SQLite
and Postgres: which devices, which cells, the AES-256 zip (opened by pyzipper and by 7-Zip's
``7z``), and the failures that must publish nothing."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
import pyzipper

from data_exhaust.datasets import SubmitContext
from data_exhaust.datasets.uci_private import HEADER
from data_exhaust.jobs import Job, Status
from data_exhaust.manager import Submission
from data_exhaust.registry import ConversationInfo, Registry
from data_exhaust.secrets_box import JOB_SECRETS, SecretBox
from data_exhaust.services import Services
from data_exhaust.worker import job_prefix
from tests.conftest import need
from tests.factories import PHONES as TEST_PHONES
from tests.factories import assess_event
from tests.zips import seven_zip

CHANNEL = "state-a"
BOT = "bot-1"
PASSWORD = "correct horse battery"
JUNE_21 = 1655769600000  # 2022-06-21T00:00:00Z
DAY_MS = 86_400_000
#: The suite's phones (tests.factories.PHONES), so the PII guard watches them.
PHONES = {"dev-a": TEST_PHONES[0], "dev-b": TEST_PHONES[1], "dev-d": TEST_PHONES[2]}


def seal_key(services: Services, key: str = PASSWORD) -> str:
    return services.settings.secret_box.seal(
        orjson.dumps({"encryptionKey": key}).decode(), JOB_SECRETS
    )


#: An event field set to another channel (``events(..., **OTHER_CHANNEL)``).
OTHER_CHANNEL: dict[str, Any] = {"context.channel": "state-b"}


def events(device: str, day: int = 0, conversation: str = BOT, **extra: Any) -> dict[str, Any]:
    return assess_event(
        device_id=device,
        conversation_id=conversation,
        ets=JUNE_21 + day * DAY_MS + 3_600_000,
        **{"context.channel": CHANNEL, **extra},
    )


def populate(services: Services) -> None:
    """Registered: a (consent, phone), b (no consent, phone), c (consent, no phone, silent),
    d (consent, phone, silent), g (registered to another bot, phone). Event-only: e (in the
    range), f (only the day after). Noise: h in another channel, i in another conversation."""
    registry = services.registry
    registry.put_conversation(ConversationInfo(BOT, "Quiz, bot", CHANNEL), None)
    registry.put_conversation(ConversationInfo("bot-2", "Other bot", CHANNEL), None)
    registry.put_device("dev-a", [BOT], PHONES["dev-a"], True, None)
    registry.put_device("dev-b", [BOT], PHONES["dev-b"], False, None)
    registry.put_device("dev-c", [BOT], None, True, None)
    registry.put_device("dev-d", [BOT], PHONES["dev-d"], True, None)
    registry.put_device("dev-g", ["bot-2"], TEST_PHONES[3], True, None)
    sent = [
        events("dev-a"),
        events("dev-a"),
        events("dev-b"),
        events("dev-e"),
        events("dev-g"),
        events("dev-f", day=1),
        events("dev-h", **OTHER_CHANNEL),
        events("dev-i", conversation="bot-2"),
    ]
    result = services.ingestor.ingest({"events": sent})
    assert result.accepted == len(sent)


def run_job(services: Services, secret: str | None, **config: Any) -> Job:
    dataset = services.datasets["uci-private-exhaust"]
    submit = SubmitContext(CHANNEL, services.today(), services.settings, services.registry)
    normalised = dataset.validate({"conversationId": BOT, **config}, submit)
    job, _ = services.jobs.submit(
        Submission("uci-private-exhaust", "t", CHANNEL, "u", normalised, secret_data=secret)
    )
    assert services.worker().run_one()
    return services.jobs.get(job.request_id)


def run_days(services: Services, job: Job) -> set[str]:
    """The day (in EXHAUST_TIMEZONE) the worker stamped on the file's name: the day it ran,
    between submission and completion; two days when the run crossed midnight."""
    assert job.completed_at is not None
    tz = services.settings.tz
    return {f"{moment.astimezone(tz):%Y%m%d}" for moment in (job.submitted_at, job.completed_at)}


def zip_bytes(services: Services, job: Job) -> bytes:
    assert job.status == Status.SUCCESS, job.message
    (file,) = job.files
    assert file.name in {f"{BOT}_userinfo_{day}.zip" for day in run_days(services, job)}
    return b"".join(services.blobs.read(file.key))


def open_with_pyzipper(data: bytes, password: str) -> tuple[str, str]:
    with pyzipper.AESZipFile(io.BytesIO(data)) as archive:
        (info,) = archive.infolist()
        assert info.flag_bits & 0x1 and info.wz_aes_strength == 3  # AES-256
        archive.setpassword(password.encode())
        return info.filename, archive.read(info.filename).decode()


def rows_of(text: str) -> list[dict[str, str]]:
    reader = csv.reader(io.StringIO(text))
    assert tuple(next(reader)) == HEADER
    return [dict(zip(HEADER, row, strict=True)) for row in reader]


def sealed_phone(registry: Registry, device: str) -> str:
    record = registry.records([device])[device]
    assert record.phone_sealed is not None
    return record.phone_sealed


def assert_nothing_left(services: Services, job: Job) -> None:
    assert list(services.blobs.keys(job_prefix(job) + "/")) == []
    tmp = services.settings.data_dir / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def assert_nothing_left_but(services: Services, job: Job) -> None:
    assert list(services.blobs.keys(job_prefix(job) + "/")) == [job.files[0].key]
    assert list((services.settings.data_dir / "tmp").iterdir()) == []


def test_rows_ordering_consent_and_phones(services: Services) -> None:
    populate(services)
    job = run_job(services, seal_key(services), startDate="2022-06-21", endDate="2022-06-21")
    name, text = open_with_pyzipper(zip_bytes(services, job), PASSWORD)
    assert name == job.files[0].name.removesuffix(".zip") + ".csv"
    rows = rows_of(text)
    assert [r["Device UUID"] for r in rows] == [
        "dev-a",
        "dev-b",
        "dev-c",
        "dev-d",
        "dev-e",
        "dev-g",
    ]
    by_uuid = {r["Device UUID"]: r for r in rows}
    assert {r["Conversation ID"] for r in rows} == {BOT}
    assert {r["Conversation Name"] for r in rows} == {"Quiz, bot"}
    decrypted = {uuid: r["Decrypted Device ID"] for uuid, r in by_uuid.items()}
    assert decrypted == {
        "dev-a": f"phone:{PHONES['dev-a']}",
        "dev-b": "dev-b",  # no consent: no phone
        "dev-c": "dev-c",  # no phone
        "dev-d": f"phone:{PHONES['dev-d']}",  # registered, silent: listed
        "dev-e": "dev-e",  # unregistered, sent events in the range
        "dev-g": "dev-g",  # registered to another bot only: its phone stays out
    }
    for device in ("dev-a", "dev-b", "dev-d"):  # the stored ciphertext (formula guard aside)
        cell = by_uuid[device]["Encrypted Device ID"]
        assert cell.removeprefix("'") == sealed_phone(services.registry, device)
    assert [by_uuid[d]["Encrypted Device ID"] for d in ("dev-c", "dev-e", "dev-g")] == ["", "", ""]
    assert job.files[0].rows == 6 and job.progress["rowsWritten"] == 6
    assert_nothing_left_but(services, job)


def test_dates_filter_event_senders_not_registered_devices(services: Services) -> None:
    populate(services)
    job = run_job(services, seal_key(services), startDate="2022-06-22", endDate="2022-06-22")
    rows = rows_of(open_with_pyzipper(zip_bytes(services, job), PASSWORD)[1])
    assert [r["Device UUID"] for r in rows] == ["dev-a", "dev-b", "dev-c", "dev-d", "dev-f"]


def test_another_channels_registration_never_shows(services: Services) -> None:
    services.registry.put_conversation(ConversationInfo(BOT, "Theirs", "state-b"), None)
    services.registry.put_device("dev-z", [BOT], TEST_PHONES[4], True, None)
    services.ingestor.ingest({"events": [events("dev-y")]})
    job = run_job(services, seal_key(services), startDate="2022-06-21", endDate="2022-06-21")
    rows = rows_of(open_with_pyzipper(zip_bytes(services, job), PASSWORD)[1])
    assert rows == [
        {
            "Conversation ID": BOT,
            "Conversation Name": "",
            "Decrypted Device ID": "dev-y",
            "Encrypted Device ID": "",
            "Device UUID": "dev-y",
        }
    ]


def test_no_device_at_all_is_no_data_found(services: Services) -> None:
    services.registry.put_conversation(ConversationInfo(BOT, "Empty", CHANNEL), None)
    job = run_job(services, seal_key(services), startDate="2022-06-21", endDate="2022-06-21")
    assert (job.status, job.message) == (Status.FAILED, "No data found")
    assert_nothing_left(services, job)


def test_7z_opens_the_zip_with_the_password_only(services: Services, tmp_path: Path) -> None:
    need("7-Zip (7z, Debian's p7zip-full)", shutil.which("7z") is not None)
    populate(services)
    job = run_job(services, seal_key(services), startDate="2022-06-21", endDate="2022-06-21")
    archive = tmp_path / job.files[0].name
    archive.write_bytes(zip_bytes(services, job))
    opened = seven_zip(archive, PASSWORD, tmp_path / "right")
    assert opened.returncode == 0, opened.stdout + opened.stderr
    (extracted,) = (tmp_path / "right").iterdir()
    assert extracted.read_text() == open_with_pyzipper(archive.read_bytes(), PASSWORD)[1]
    refused = seven_zip(archive, "wrong password", tmp_path / "wrong")
    assert refused.returncode != 0
    assert "Wrong password" in refused.stdout + refused.stderr
    with pytest.raises(RuntimeError, match="Bad password"):
        open_with_pyzipper(archive.read_bytes(), "wrong password")


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param(None, id="no-key"),
        pytest.param("not a sealed value", id="not-sealed"),
        pytest.param("other-server", id="sealed-under-another-secret"),
        pytest.param("no-encryption-key", id="sealed-without-the-key"),
    ],
)
def test_without_a_readable_key_the_job_fails_and_publishes_nothing(
    services: Services, secret: str | None
) -> None:
    populate(services)
    if secret == "other-server":
        other = SecretBox(b"another server")
        secret = other.seal(orjson.dumps({"encryptionKey": PASSWORD}).decode(), JOB_SECRETS)
    elif secret == "no-encryption-key":
        secret = services.settings.secret_box.seal("{}", JOB_SECRETS)
    job = run_job(services, secret, startDate="2022-06-21", endDate="2022-06-21")
    assert job.status == Status.FAILED and job.attempts == 1
    assert job.message is not None and job.message.startswith(
        "this request has no readable encryptionKey"
    )
    assert PASSWORD not in job.message
    assert_nothing_left(services, job)


def test_a_phone_that_cannot_be_unsealed_fails_without_showing_it(services: Services) -> None:
    populate(services)
    foreign = Registry(services.engine, SecretBox(b"an older, forgotten secret"))
    foreign.put_device("dev-x", [BOT], TEST_PHONES[4], True, None)
    job = run_job(services, seal_key(services), startDate="2022-06-21", endDate="2022-06-21")
    assert job.status == Status.FAILED
    assert job.message is not None and "cannot be decrypted" in job.message
    assert TEST_PHONES[4][-10:] not in job.message
    assert_nothing_left(services, job)


def test_an_unexpected_error_is_reported_without_its_details(services: Services) -> None:
    populate(services)
    services.settings.data_dir.mkdir(parents=True, exist_ok=True)
    (services.settings.data_dir / "tmp").write_text("a file where the work directory goes")
    job = run_job(services, seal_key(services), startDate="2022-06-21", endDate="2022-06-21")
    assert job.status in (Status.SUBMITTED, Status.FAILED) and job.attempts == 1  # transient
    assert (
        job.message is not None
        and (
            "PrivateExhaustError: the private exhaust failed with FileExistsError (File exists)"
            " (details withheld: they could hold personal data)"
        )
        in job.message
    )
    assert list(services.blobs.keys(job_prefix(job) + "/")) == []
