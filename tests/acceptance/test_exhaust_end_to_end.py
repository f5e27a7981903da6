"""A user's whole journey against the real server process, on SQLite and on Postgres:
ingest chatbot telemetry, request a response exhaust, wait, download through the signed URL
and check every cell against the events that were sent."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import httpx
import pytest

from data_exhaust.client import ClientError, ExhaustClient
from tests.acceptance.conftest import Deployment, wait_until
from tests.factories import assess_event

CHANNEL = "state-a"
BOT = "c63b6faa-11a9-4259-b941-11cd2f8446c6"
DAY_MS = 86_400_000
JUNE_21 = 1655769600000  # 2022-06-21T00:00:00Z
HEADER = (
    "Message ID,Conversation ID,Conversation Name,Device ID,Session ID,Question Id,"
    "Question Type,Question Title,Question Description,Question Duration,Question Score,"
    "Question Max Score,Question Options,Question Response,X Path,Eof,Timestamp"
)
TITLES = [
    "Which subject, of all, do you like?",
    'Did the teacher say "well done"?',
    "Line one\nline two",
    "आपका पसंदीदा विषय कौन सा है?",
    "=1+1 looks like a formula",
]


def event(index: int, **overrides: Any) -> dict[str, Any]:
    title = TITLES[index % len(TITLES)]
    mcq = index % 2 == 0
    fields: dict[str, Any] = {
        "conversation_id": BOT,
        "device_id": f"device-{index % 3}",
        "mid": f"mid-{index:03}",
        "ets": JUNE_21 + index * 3_600_000 + 123,
        "context.channel": CHANNEL,
        "context.sid": f"session-{index % 4}",
        "context.rollup.l4": "true" if index % 5 == 4 else "false",
        "edata.item.id": f"q{index}",
        "edata.item.type": "mcq" if mcq else "ftp",
        "edata.item.title": title,
        "edata.item.desc": f"desc, {title}",
        "edata.duration": 2.5 + index,
        "edata.score": 0.5 if index % 3 == 0 else 1,
        "edata.resvalues": [{"2": {"text": "2 विज्ञान"}}] if mcq else [{"ans1": f'ans "{index}"'}],
    }
    fields.update(overrides)
    return assess_event(**fields)


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def guard(text: str) -> str:
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def expected_row(e: dict[str, Any]) -> list[str]:
    item, context = e["edata"]["item"], e["context"]
    compact = {"ensure_ascii": False, "separators": (",", ":")}
    stamp = datetime.fromtimestamp(e["ets"] / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    duration = e["edata"]["duration"]
    return [
        e["mid"],
        BOT,
        "",
        context["did"],
        context["sid"],
        item["id"],
        item["type"],
        guard(item["title"]),
        item["desc"],
        str(int(duration + 0.5)),
        number(e["edata"]["score"]),
        number(item["maxscore"]),
        json.dumps(item["params"], **compact),  # type: ignore[arg-type]
        json.dumps(e["edata"]["resvalues"], **compact),  # type: ignore[arg-type]
        context["rollup"]["l3"],
        context["rollup"]["l4"],
        stamp + "Z",
    ]


def test_response_exhaust_end_to_end(deployment: Deployment, tmp_path: Path) -> None:
    base = deployment.serve()
    key = deployment.create_key(CHANNEL, "exhaust,ingest")
    auth = {"Authorization": f"Bearer {key}", "X-Channel-ID": CHANNEL}
    wanted = [event(i) for i in range(40)]  # 2022-06-21 .. 2022-06-22 (40 hours)
    noise = [
        event(90, conversation_id="other-bot", mid="noise-1"),
        event(92, ets=JUNE_21 + 5 * DAY_MS, mid="noise-3"),  # after the range
        event(93, eid="INTERACT", mid="noise-4"),
    ]
    batch = {
        "id": "api.sunbird.telemetry",
        "ver": "3.0",
        "params": {"msgid": "batch-1"},
        "ets": JUNE_21,
        "events": wanted + noise,
    }
    ingested = httpx.post(f"{base}/v1/telemetry", json=batch, headers=auth, timeout=30).json()
    assert ingested["result"] == {"accepted": 43, "rejected": []}
    again = httpx.post(f"{base}/v1/telemetry", json=batch, headers=auth, timeout=30).json()
    assert again["responseCode"] == "SUCCESS"  # a retried batch is acknowledged, not stored twice
    other_state = {"Authorization": f"Bearer {deployment.create_key('state-b', 'ingest')}"}
    same_bot_other_state = {
        **batch,
        "params": {"msgid": "batch-2"},
        "events": [event(91, **{"context.channel": "state-b"})],
    }
    answer = httpx.post(f"{base}/v1/telemetry", json=same_bot_other_state, headers=other_state)
    assert answer.json()["result"]["accepted"] == 1  # same bot id, other tenant: never exported

    request = {
        "tag": "nightly",
        "dataset": "uci-response-exhaust",
        "datasetConfig": {
            "type": "uci-response-exhaust",
            "conversationId": BOT,
            "startDate": "2022-06-21",
            "endDate": "2022-06-22",
        },
    }
    before = datetime.now(UTC).strftime("%Y%m%d")
    submitted = httpx.post(
        f"{base}/dataset/v1/request/submit", json={"request": request}, headers=auth, timeout=30
    ).json()["result"]
    read_url = f"{base}/dataset/v1/request/read/nightly?requestId={submitted['requestId']}"

    def finished() -> bool:
        status: str = httpx.get(read_url, headers=auth).json()["result"]["status"]
        return status not in ("PROCESSING", "SUBMITTED")

    wait_until(finished)
    job = httpx.get(read_url, headers=auth).json()["result"]
    assert job["status"] == "SUCCESS", job["statusMessage"]
    (url,) = job["downloadUrls"]
    name = urlparse(url).path.rsplit("/", 1)[1]
    after = datetime.now(UTC).strftime("%Y%m%d")  # the run may have crossed midnight
    assert name in {f"{BOT}_response_{day}.csv" for day in (before, after)}
    body = httpx.get(url).content
    assert hashlib.sha256(body).hexdigest() == job["files"][0]["sha256"]
    text = body.decode("utf-8")
    assert text.split("\n", 1)[0] == HEADER
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[1:] == [expected_row(e) for e in wanted]
    assert job["files"][0]["rows"] == 40

    cli_dir = tmp_path / "cli-download"
    deployment.run(
        "download",
        "nightly",
        submitted["requestId"],
        "--dest",
        str(cli_dir),
        "--server",
        base,
        "--key",
        key,
        "--channel",
        CHANNEL,
    )
    assert (cli_dir / name).read_bytes() == body
    resume_an_interrupted_download(base, key, url, body)

    parts = urlparse(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    tampered = f"{base}{parts.path}?{urlencode({**query, 'expires': int(query['expires']) + 1})}"
    assert httpx.get(tampered).json()["params"]["errmsg"] == "invalid signature"
    expired = f"{base}{parts.path}?{urlencode({**query, 'expires': 1})}"
    assert httpx.get(expired).status_code == 403


def resume_an_interrupted_download(base: str, key: str, url: str, body: bytes) -> None:
    """The client resumes a ``.part`` with ``Range``; a part that is not the file's prefix
    fails the sha256 check and is dropped, so the next try starts afresh."""
    sha = hashlib.sha256(body).hexdigest()
    dest = Path(tempfile.mkdtemp()) / "exhaust.csv"
    part = dest.with_name("exhaust.csv.part")
    with ExhaustClient(base, key, CHANNEL) as client:
        part.write_bytes(body[:100])
        client.download(url, dest, sha256=sha)
        assert dest.read_bytes() == body and not part.exists()
        part.write_bytes(b"x" * 100)  # kept and continued: the result cannot match
        with pytest.raises(ClientError, match="CHECKSUM_MISMATCH"):
            client.download(url, dest, sha256=sha)
        assert not part.exists()
        part.write_bytes(body + b"more")  # longer than the file: 416, then from the start
        client.download(url, dest, sha256=sha)
        assert dest.read_bytes() == body
    shutil.rmtree(dest.parent)


def test_no_matching_event_fails_with_no_data_found(deployment: Deployment) -> None:
    base = deployment.serve()
    key = deployment.create_key(CHANNEL, "exhaust")
    auth = {"Authorization": f"Bearer {key}", "X-Channel-ID": CHANNEL}
    request = {
        "tag": "empty",
        "dataset": "uci-response-exhaust",
        "datasetConfig": {
            "conversationId": "nobody",
            "startDate": "2022-01-01",
            "endDate": "2022-01-02",
        },
    }
    job = httpx.post(
        f"{base}/dataset/v1/request/submit", json={"request": request}, headers=auth
    ).json()["result"]
    read_url = f"{base}/dataset/v1/request/read/empty?requestId={job['requestId']}"
    wait_until(lambda: httpx.get(read_url, headers=auth).json()["result"]["status"] == "FAILED")
    failed = httpx.get(read_url, headers=auth).json()["result"]
    assert failed["statusMessage"] == "No data found" and failed["downloadUrls"] == []
