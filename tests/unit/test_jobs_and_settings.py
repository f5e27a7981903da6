"""The requestId rule of api.md §3 and the settings' own behaviour."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from data_exhaust.jobs import request_id_for
from data_exhaust.settings import Settings


def test_request_id_is_md5_of_the_canonical_request() -> None:
    config = {
        "type": "uci-response-exhaust",
        "conversationId": "c-1",
        "startDate": "2022-03-01",
        "endDate": "2022-04-01",
    }
    canonical = (
        '{"channel":"ORG_001","dataset":"uci-response-exhaust","datasetConfig":'
        '{"conversationId":"c-1","endDate":"2022-04-01","startDate":"2022-03-01",'
        '"type":"uci-response-exhaust"},"output_format":"csv","requestedBy":"user_id",'
        '"tag":"7ed871f7"}'
    )
    assert json.loads(canonical)  # the documented canonical form is itself valid JSON
    expected = hashlib.md5(canonical.encode(), usedforsecurity=False).hexdigest().upper()
    got = request_id_for(
        dataset="uci-response-exhaust",
        tag="7ed871f7",
        channel="ORG_001",
        requested_by="user_id",
        dataset_config=config,
        output_format="csv",
    )
    assert got == expected and len(got) == 32
    later = request_id_for(
        dataset="uci-response-exhaust",
        tag="7ed871f7",
        channel="ORG_001",
        requested_by="user_id",
        dataset_config={**config, "endDate": "2022-04-02"},
        output_format="csv",
    )
    assert later != got


def test_secret_is_generated_once_into_the_data_dir(tmp_path: Path) -> None:
    first = Settings(data_dir=tmp_path, secret_key=None).secret
    path = tmp_path / "secret.key"
    assert len(first) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Settings(data_dir=tmp_path, secret_key=None).secret == first
    assert Settings(data_dir=tmp_path, secret_key="given").secret == b"given"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("run_schedule", "every night", "cron expression"),
        ("timezone", "Mars/Olympus", "unknown time zone"),
        ("workers", -1, "greater than or equal to 0"),
        ("key_cache_seconds", -1, "greater than or equal to 0"),
    ],
)
def test_bad_settings_say_how_to_fix_them(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**{field: value})  # type: ignore[arg-type]


def test_embedded_defaults_live_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'exhaust.db'}"
    assert settings.resolved_storage_url == (tmp_path / "blobs").as_uri()
    assert settings.url_ttl_seconds == 1800 and settings.retention_days == 7
    assert settings.key_cache_seconds == 5.0


def test_failure_messages_shown_to_clients_keep_only_the_first_line() -> None:
    from data_exhaust.worker import public_message

    error = RuntimeError("duplicate key\nDETAIL: Key (mobile_no)=(98450 12345) exists\n[SQL: …]")
    assert public_message(error) == "RuntimeError: duplicate key"
    assert public_message(OSError()) == "OSError"
