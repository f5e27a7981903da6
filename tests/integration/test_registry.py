"""The registry and its CSV imports on real SQLite and Postgres: phones sealed, key rotation,
line-numbered errors, strict mode, rollback by task id, streaming, UCI encrypted device ids."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from data_exhaust import uci
from data_exhaust.db import make_engine
from data_exhaust.models import Device, DeviceConversation, JobRequest
from data_exhaust.registry import ConversationInfo, Registry
from data_exhaust.registry_import import (
    ImportFailed,
    ImportFormatError,
    import_conversations,
    import_devices,
    rollback,
)
from data_exhaust.rotation import Rotated, rotate_all
from data_exhaust.secrets_box import JOB_SECRETS, SealError, SecretBox

PHONE = "+919845012345"
UCI_KEY = "0123456789abcdef"
DEVICES_HEADER = "device_uuid,conversation_id,phone,consent\n"
CONVERSATIONS_HEADER = "conversation_id,name,channel,start_date,end_date\n"


@pytest.fixture
def registry(database_url: str) -> Iterator[Registry]:
    engine = make_engine(database_url)
    yield Registry(engine, SecretBox(b"secret-a"))
    engine.dispose()


def csv_file(tmp_path: Path, text: str | bytes, name: str = "in.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def bots(registry: Registry, *ids: str, channel: str = "ch1") -> None:
    for cid in ids:
        registry.put_conversation(ConversationInfo(cid, f"Bot {cid}", channel), None)


def links(registry: Registry) -> set[tuple[str, str]]:
    with Session(registry.engine) as session:
        rows = session.execute(
            select(DeviceConversation.device_uuid, DeviceConversation.conversation_id)
        )
        return {(d, c) for d, c in rows}


def device_count(registry: Registry) -> int:
    with Session(registry.engine) as session:
        return int(session.scalar(select(func.count()).select_from(Device)) or 0)


def phone(registry: Registry, uuid: str) -> str | None:
    return registry.phone_of(registry.records([uuid])[uuid])


# -- registry operations ---------------------------------------------------------------------


def test_put_get_list_scope_links_by_channel_and_never_return_the_phone(registry: Registry) -> None:
    registry.put_conversation(
        ConversationInfo("c1", "One", "ch1", date(2024, 1, 1), date(2024, 1, 31)), None
    )
    bots(registry, "c2", channel="ch2")
    assert registry.list_conversations({"ch1"}, 10)[0] == 1
    assert [c.conversation_id for c in registry.list_conversations(None, 10)[1]] == ["c1", "c2"]
    registry.put_device("d1", ["c1", "c2"], PHONE, True, None)
    mine = registry.get_device("d1", {"ch1"})
    assert mine is not None and mine.conversations == ["c1"] and mine.has_phone
    assert PHONE not in repr(mine)
    registry.put_device("d1", ["c1"], None, False, {"ch1"})  # ch1 cannot drop ch2's link
    assert links(registry) == {("d1", "c1"), ("d1", "c2")}
    assert registry.get_device("d1", {"ch3"}) is None
    with Session(registry.engine) as session:
        stored = session.get(Device, "d1")
        assert stored is not None and stored.phone_sealed is None and not stored.consent
    registry.put_device("d1", ["c1"], PHONE, True, None)
    with Session(registry.engine) as session:
        sealed = session.get(Device, "d1")
        assert (
            sealed is not None and sealed.phone_sealed and "9845012345" not in sealed.phone_sealed
        )
    assert phone(registry, "d1") == PHONE


def test_rotation_reseals_phones_and_job_secrets_so_the_old_secret_can_go(
    registry: Registry,
) -> None:
    bots(registry, "c1")
    registry.put_device("d1", ["c1"], PHONE, True, None)
    secret = registry.box.seal('{"encryptionKey": "zip-password"}', JOB_SECRETS)
    at = datetime(2024, 1, 1, tzinfo=UTC)
    with Session(registry.engine) as session, session.begin():
        session.add(
            JobRequest(
                tag="t:ch1",
                request_id="R1",
                job_id="uci-private-exhaust",
                status="SUBMITTED",
                request_data={},
                requested_channel="ch1",
                dt_job_submitted=at,
                last_updated=at,
                run_after=at,
                secret_data=secret,
            )
        )
    rotated = Registry(registry.engine, SecretBox(b"secret-b", [b"secret-a"]))
    assert rotate_all(rotated) == Rotated(phones=1, job_secrets=1)
    assert rotate_all(rotated) == Rotated(phones=0, job_secrets=0)  # idempotent
    alone = Registry(registry.engine, SecretBox(b"secret-b"))
    assert phone(alone, "d1") == PHONE
    with Session(registry.engine) as session:
        stored = session.get(JobRequest, ("t:ch1", "R1"))
        assert stored is not None and stored.secret_data
        assert "zip-password" in alone.box.unseal(stored.secret_data, JOB_SECRETS)
    with pytest.raises(SealError):
        phone(Registry(registry.engine, SecretBox(b"secret-a")), "d1")


# -- conversations import --------------------------------------------------------------------


def test_conversations_import_quotes_newlines_devanagari_and_duplicates(
    registry: Registry, tmp_path: Path
) -> None:
    bots(registry, "old")
    text = (
        "\ufeff" + CONVERSATIONS_HEADER
        + 'c1,"Quiz, ""hard""\nsecond line",ch1,2024-06-01,2024-06-30\n'
        + "c2,गणित प्रश्नोत्तरी,ch2,,\n"
        + "\n"
        + "c1,Quiz renamed,ch1,,\n"
        + "old,Old bot,ch1,,\n"
    )  # fmt: skip
    result = import_conversations(registry, csv_file(tmp_path, text), "task-1", batch_rows=2)
    assert (result.rows, result.accepted, result.rejected) == (4, 4, 0)
    assert (result.inserted, result.updated) == (2, 2)  # c1 again in the 2nd batch; "old"
    assert registry.conversation_name("c2") == "गणित प्रश्नोत्तरी"
    assert registry.conversation_name("c1") == "Quiz renamed"
    found = registry.get_conversation("c1")
    assert found is not None and found.start_date is None
    again = import_conversations(registry, csv_file(tmp_path, text), "task-2")
    assert again.errors == [] and registry.conversation_name("c1") == "Quiz renamed"


def test_conversations_import_reports_bad_lines_with_their_numbers(
    registry: Registry, tmp_path: Path
) -> None:
    text = (
        CONVERSATIONS_HEADER.encode()
        + b"ok,Fine,ch1,,\n"  # 2
        + b"bad id,x,ch1,,\n"  # 3
        + b"c3,x,ch1,2024-02-30,\n"  # 4
        + b"c4,x\n"  # 5
        + b"c5,"
        + b"n" * 301
        + b",ch1,,\n"  # 6
        + b"c6,caf\xe9,ch1,,\n"  # 7: Latin-1, not UTF-8
        + b'c7,"two\nlines",ch1,2024-05-02,2024-05-01\n'  # 8-9
        + b"c8,,ch1,,\n"  # 10
        + b"c9,Fine too,ch1,,\n"  # 11
    )
    result = import_conversations(registry, csv_file(tmp_path, text), "t")
    assert (result.accepted, result.rejected) == (2, 7)
    assert [e.line for e in result.errors] == [3, 4, 5, 6, 7, 8, 10]
    messages = [e.message for e in result.errors]
    assert "conversation_id must be" in messages[0]
    assert "start_date must be YYYY-MM-DD" in messages[1]
    assert "expected 5 columns" in messages[2] and "found 2" in messages[2]
    assert "name is longer than 300 characters" in messages[3]
    assert "not valid UTF-8" in messages[4]
    assert "end_date must not be before start_date" in messages[5]
    assert "name is required" in messages[6]


def test_a_wrong_header_is_refused_before_any_row(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(ImportFormatError, match="line 1 must be the header"):
        import_devices(registry, csv_file(tmp_path, "uuid,phone\nd1,1\n"), "t")
    with pytest.raises(ImportFormatError):
        import_conversations(registry, csv_file(tmp_path, ""), "t")


# -- devices import --------------------------------------------------------------------------


def test_devices_import_every_bad_row_kind_without_echoing_values(
    registry: Registry, tmp_path: Path
) -> None:
    bots(registry, "c1")
    text = (
        DEVICES_HEADER.encode()
        + b"d1,c1,+91 98450 12345,yes\n"  # 2 ok
        + b"d2,nope,9845012399,\n"  # 3 unknown conversation
        + b"d3,c1,98450,\n"  # 4 short phone
        + b"d4,c1,9845012345,maybe\n"  # 5 consent
        + b"d 5,c1,9845012345,\n"  # 6 id
        + b"d6,c1\n"  # 7 columns
        + b"d7,c1,9845\xff012345,\n"  # 8 UTF-8
        + b"d8,c1,"
        + b"9" * 40
        + b",\n"  # 9 over-long
        + b"d9,c1,,no\n"  # 10 ok
    )
    result = import_devices(registry, csv_file(tmp_path, text), "t", batch_rows=3)
    assert (result.accepted, result.rejected, result.inserted, result.linked) == (2, 7, 2, 2)
    assert [e.line for e in result.errors] == [3, 4, 5, 6, 7, 8, 9]
    expected = [
        "conversation_id is not registered",
        "phone must have 6 to 15 digits",
        "consent must be true/false",
        "device_uuid must be",
        "expected 4 columns",
        "not valid UTF-8",
        "phone is longer than 32 characters",
    ]
    for error, words in zip(result.errors, expected, strict=True):
        assert words in error.message
        assert "98450" not in error.message and "9845012399" not in error.message
    assert phone(registry, "d1") == "+919845012345"
    assert registry.records(["d9"])["d9"].consent is False


def test_a_device_on_several_lines_and_empty_phones_keep_the_stored_one(
    registry: Registry, tmp_path: Path
) -> None:
    bots(registry, "c1", "c2", "c3")
    registry.put_device("old", ["c1"], PHONE, True, None)
    text = DEVICES_HEADER + "d1,c1,9845000001,\nd1,c2,,no\nd1,c3,,1\nold,c2,,no\nd1,c1,,\n"
    result = import_devices(registry, csv_file(tmp_path, text), "t", batch_rows=2)
    assert (result.inserted, result.updated, result.linked) == (1, 3, 4)
    assert phone(registry, "d1") == "9845000001" and phone(registry, "old") == PHONE
    records = registry.records(["d1", "old"])
    assert records["d1"].consent and not records["old"].consent
    assert links(registry) == {
        ("d1", "c1"),
        ("d1", "c2"),
        ("d1", "c3"),
        ("old", "c1"),
        ("old", "c2"),
    }


def test_strict_mode_fails_at_the_first_bad_line_and_changes_nothing(
    registry: Registry, tmp_path: Path
) -> None:
    bots(registry, "c1")
    registry.put_device("old", ["c1"], PHONE, True, None)
    good = "".join(f"n{i},c1,98450{i:05d},\n" for i in range(30))
    text = DEVICES_HEADER + "old,c1,,no\n" + good + "bad,c1,12,\n" + "late,c9,,\n"
    with pytest.raises(ImportFailed, match="line 33: phone must have") as failed:
        import_devices(registry, csv_file(tmp_path, text), "t", strict=True, batch_rows=10)
    assert [e.line for e in failed.value.result.errors] == [33]
    assert device_count(registry) == 1 and registry.records(["old"])["old"].consent
    assert links(registry) == {("old", "c1")}
    clean = import_devices(
        registry, csv_file(tmp_path, DEVICES_HEADER + good), "t2", strict=True, batch_rows=10
    )
    assert (clean.inserted, clean.rejected) == (30, 0)


def test_rollback_deletes_what_the_import_created_and_keeps_what_existed(
    registry: Registry, tmp_path: Path
) -> None:
    bots(registry, "c1", "c2")
    registry.put_device("old", ["c1"], PHONE, True, None)
    text = DEVICES_HEADER + "old,c2,,no\nnew,c1,9845000002,\nnew,c2,,\n"
    result = import_devices(registry, csv_file(tmp_path, text), "task-9")
    assert (result.inserted, result.updated, result.linked) == (1, 1, 3)
    assert rollback(registry.engine, "task-9") == 4  # 3 links + 1 device
    assert device_count(registry) == 1 and links(registry) == {("old", "c1")}
    assert phone(registry, "old") == PHONE
    assert not registry.records(["old"])["old"].consent  # an update is not undone
    conversations = import_conversations(
        registry, csv_file(tmp_path, CONVERSATIONS_HEADER + "c3,Three,ch1,,\n"), "task-10"
    )
    import_devices(registry, csv_file(tmp_path, DEVICES_HEADER + "old,c3,,\n"), "task-11")
    assert conversations.inserted == 1
    assert rollback(registry.engine, "task-10") == 2  # the conversation and the link to it
    assert registry.get_conversation("c3") is None and rollback(registry.engine, "task-11") == 0


def test_a_100k_line_devices_file_is_streamed_in_batches(
    registry: Registry, tmp_path: Path
) -> None:
    bots(registry, "c0", "c1")
    path = tmp_path / "big.csv"
    with path.open("w") as out:
        out.write(DEVICES_HEADER)
        for i in range(100_000):
            number = f"98{i // 2:08d}" if i % 10 == 0 else ""
            out.write(f"dev-{i // 2:06d},c{i % 2},{number},{'no' if i % 7 == 0 else ''}\n")
    seen: list[tuple[int, int]] = []
    result = import_devices(
        registry, path, "big", on_progress=lambda done, rows: seen.append((done, rows))
    )
    assert (result.rows, result.accepted, result.rejected) == (100_000, 100_000, 0)
    assert (result.inserted, result.linked) == (50_000, 100_000)
    assert len(seen) >= 100 and seen[-1] == (path.stat().st_size, 100_000)
    assert all(a <= b for a, b in itertools.pairwise(seen))
    assert device_count(registry) == 50_000 and phone(registry, "dev-000005") == "9800000005"


# -- UCI encrypted device ids ----------------------------------------------------------------


def independent_uci_vector(plaintext: str, key: str) -> str:
    """AES-ECB + PKCS#7 + base64 written out with the primitives, not with data_exhaust.uci."""
    data = plaintext.encode()
    pad = 16 - len(data) % 16
    encryptor = Cipher(algorithms.AES(key.encode()), modes.ECB()).encryptor()  # noqa: S305
    return base64.b64encode(
        encryptor.update(data + bytes([pad]) * pad) + encryptor.finalize()
    ).decode()


def test_uci_format_is_pinned() -> None:
    vector = independent_uci_vector("phone:9876543210", UCI_KEY)
    assert vector == "F3sfhaXbvwQyk4d/X7DJQjdyIuBhqSTFkc2cJ+oWPtQ="  # openssl enc -aes-128-ecb
    assert uci.encrypt("phone:9876543210", UCI_KEY.encode()) == vector
    assert uci.phone_of(vector, UCI_KEY.encode()) == "9876543210"
    urlsafe = vector.replace("+", "-").replace("/", "_").rstrip("=")
    assert uci.phone_of(urlsafe, UCI_KEY.encode()) == "9876543210"


def test_uci_encrypted_devices_import_round_trip(registry: Registry, tmp_path: Path) -> None:
    bots(registry, "c1")
    key32 = "k" * 32
    lines = [
        f"d1,c1,{independent_uci_vector('phone:9876543210', key32)},yes",
        f"d2,c1,{uci.encrypt('+44 7700 900461', key32.encode())},no",
        f"d3,c1,{uci.encrypt('whatsapp:+14155550123', key32.encode())},",
        f"d4,c1,{uci.encrypt('9876543210', b'another-secret-0123456789abcdef!')},",  # wrong key
        f"d5,c1,{uci.encrypt('not a phone', key32.encode())},",
        "d6,c1,%%%,",
        "d7,c1,,",
    ]
    text = "device_uuid,conversation_id,encrypted_device_id,consent\n" + "\n".join(lines)
    result = import_devices(registry, csv_file(tmp_path, text), "u", uci_secret=key32)
    assert (result.inserted, result.rejected) == (4, 3)
    assert [e.line for e in result.errors] == [5, 6, 7]
    assert "does not decrypt with EXHAUST_UCI_SECRET" in result.errors[0].message
    assert "does not decrypt to a phone number" in result.errors[1].message
    assert "not a phone" not in result.errors[1].message
    assert "not base64" in result.errors[2].message
    assert phone(registry, "d1") == "9876543210"
    assert phone(registry, "d2") == "+447700900461"
    assert phone(registry, "d3") == "+14155550123"
    assert phone(registry, "d7") is None
    with Session(registry.engine) as session:
        stored = " ".join(d.phone_sealed or "" for d in session.scalars(select(Device)))
    assert all(line.split(",")[2] not in stored for line in lines[:3])


@pytest.mark.parametrize("secret", [None, "short", "é" * 8 + "x"])
def test_a_uci_secret_of_the_wrong_length_is_refused_before_any_row(
    registry: Registry, tmp_path: Path, secret: str | None
) -> None:
    bots(registry, "c1")
    text = "device_uuid,conversation_id,encrypted_device_id,consent\nd1,c1,AAAA,\n"
    expected = "not set" if secret is None else "must be 16, 24 or 32 bytes"
    with pytest.raises(ImportFormatError, match=expected):
        import_devices(registry, csv_file(tmp_path, text), "u", uci_secret=secret)
    assert device_count(registry) == 0
