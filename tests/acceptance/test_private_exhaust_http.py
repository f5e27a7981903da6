"""The private exhaust over HTTP against the real server process, on SQLite and Postgres:
register a conversation and its devices, ingest their telemetry, request both UCI exhausts,
open the encrypted zip with its password (7-Zip and pyzipper) and join the two files; then
every refusal issue 3 lists."""

from __future__ import annotations

import csv
import io
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import pyzipper

from tests.acceptance.conftest import Deployment, wait_until
from tests.conftest import need
from tests.factories import PHONES, assess_event
from tests.zips import seven_zip

CHANNEL = "state-a"
BOT = "4d1c3a6e-2f0b-4d8e-9b1a-7c5e3f2a1b00"
PASSWORD = "s3cret zip password"
JUNE_21 = 1655769600000  # 2022-06-21T00:00:00Z
RANGE = {"startDate": "2022-06-21", "endDate": "2022-06-21"}
#: device -> (consent, phone); "dev-unregistered" only sends events. The phones are the
#: suite's (tests.factories.PHONES), which the PII guard looks for in every log and answer.
DEVICES: dict[str, tuple[bool, str | None]] = {
    "dev-1-consents": (True, PHONES[0]),
    "dev-2-consents": (True, PHONES[3]),
    "dev-3-refuses": (False, PHONES[1]),
    "dev-4-no-phone": (True, None),
}
SENDERS = [*DEVICES, "dev-unregistered"]


def envelope(request: dict[str, Any]) -> dict[str, Any]:
    return {"id": "api", "ver": "1.0", "params": {"msgid": "m"}, "request": request}


def register(base: str, auth: dict[str, str]) -> None:
    conversation = {"name": "Career quiz", "channel": CHANNEL}
    answer = httpx.put(f"{base}/v1/conversations/{BOT}", json=envelope(conversation), headers=auth)
    assert answer.status_code == 200, answer.text
    for device, (consent, phone) in DEVICES.items():
        body = envelope({"conversations": [BOT], "phone": phone, "consent": consent})
        answer = httpx.put(f"{base}/v1/devices/{device}", json=body, headers=auth)
        assert answer.status_code == 200, answer.text
        assert "phone" not in answer.json()["result"]  # written, never read back


def ingest(base: str, auth: dict[str, str]) -> None:
    sent = [
        assess_event(
            device_id=device,
            conversation_id=BOT,
            mid=f"mid-{n}",
            ets=JUNE_21 + n * 60_000,
            **{"context.channel": CHANNEL, "edata.resvalues": [{"ans1": f"answer {n}"}]},
        )
        for n, device in enumerate(SENDERS * 2)
    ]
    body = {"id": "api.sunbird.telemetry", "ver": "3.0", "params": {"msgid": "b1"}, "events": sent}
    answer = httpx.post(f"{base}/v1/telemetry", json=body, headers=auth, timeout=30)
    assert answer.json()["result"] == {"accepted": len(sent), "rejected": []}


def submit(base: str, auth: dict[str, str], dataset: str, **extra: Any) -> httpx.Response:
    request = {
        "tag": "uci",
        "dataset": dataset,
        "datasetConfig": {"conversationId": BOT, **RANGE},
        **extra,
    }
    return httpx.post(
        f"{base}/dataset/v1/request/submit", json=envelope(request), headers=auth, timeout=30
    )


def finished_job(base: str, auth: dict[str, str], request_id: str) -> dict[str, Any]:
    url = f"{base}/dataset/v1/request/read/uci?requestId={request_id}"

    def status() -> str:
        return str(httpx.get(url, headers=auth).json()["result"]["status"])

    wait_until(lambda: status() not in ("SUBMITTED", "PROCESSING"))
    job: dict[str, Any] = httpx.get(url, headers=auth).json()["result"]
    assert job["status"] == "SUCCESS", job["statusMessage"]
    return job


def download(job: dict[str, Any]) -> bytes:
    (url,) = job["downloadUrls"]
    return httpx.get(url, timeout=30).content


def table(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def pyzipper_open(archive: Path, password: str) -> str:
    with pyzipper.AESZipFile(archive) as opened:
        (name,) = opened.namelist()
        opened.setpassword(password.encode())
        text: str = opened.read(name).decode()
        return text


def headers(key: str, channel: str = CHANNEL) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "X-Channel-ID": channel}


def test_private_exhaust_over_http(deployment: Deployment, tmp_path: Path) -> None:
    """One server and three keys (made concurrently: each CLI start costs seconds)."""
    need("7-Zip (7z, Debian's p7zip-full)", shutil.which("7z") is not None)
    with ThreadPoolExecutor(4) as pool:
        server = pool.submit(deployment.serve)
        keys = [
            pool.submit(deployment.create_key, channel, scopes)
            for channel, scopes in [
                (CHANNEL, "exhaust,pii,ingest"),
                (CHANNEL, "exhaust,ingest"),
                ("state-b", "exhaust,pii"),
            ]
        ]
        base = server.result()
        auth, no_pii, other_channel = (headers(k.result()) for k in keys)
    other_channel["X-Channel-ID"] = "state-b"
    register(base, auth)
    ingest(base, auth)
    private_id = check_the_journey(base, auth, tmp_path)
    check_refusals(base, no_pii, auth, other_channel, private_id)
    server_log = "".join(p.read_text() for p in deployment.data_dir.parent.glob("serve-*.log"))
    for _, phone in DEVICES.values():
        assert phone is None or phone.removeprefix("+") not in server_log
    assert PASSWORD not in server_log


def check_the_journey(base: str, auth: dict[str, str], tmp_path: Path) -> str:
    """Both exhausts, the zip opened with its password, the join; the private requestId."""
    responses = submit(base, auth, "uci-response-exhaust").json()["result"]
    private = submit(base, auth, "uci-private-exhaust", encryptionKey=PASSWORD).json()["result"]
    assert "encryptionKey" not in private and PASSWORD not in str(private)

    response_rows = table(download(finished_job(base, auth, responses["requestId"])).decode())
    job = finished_job(base, auth, private["requestId"])
    assert job["files"][0]["name"].endswith(".zip") and PASSWORD not in str(job)
    archive = tmp_path / job["files"][0]["name"]
    archive.write_bytes(download(job))

    opened = seven_zip(archive, PASSWORD, tmp_path / "out")
    assert opened.returncode == 0, opened.stdout + opened.stderr
    (extracted,) = (tmp_path / "out").iterdir()
    assert extracted.name == archive.name.removesuffix(".zip") + ".csv"
    assert extracted.read_text() == pyzipper_open(archive, PASSWORD)
    private_rows = table(extracted.read_text())

    assert [r["Device UUID"] for r in private_rows] == sorted(SENDERS)
    assert {r["Device ID"] for r in response_rows} <= {r["Device UUID"] for r in private_rows}
    shown = {r["Device UUID"]: r["Decrypted Device ID"] for r in private_rows}
    for device in SENDERS:
        consent, phone = DEVICES.get(device, (True, None))
        assert shown[device] == (f"phone:{phone}" if consent and phone else device)
    for row in response_rows:
        blank = row["Device ID"] == "dev-3-refuses"
        assert (row["Question Response"] == "") == blank, row

    assert seven_zip(archive, "not the password", tmp_path / "wrong").returncode != 0
    with pytest.raises(RuntimeError, match="Bad password"):
        pyzipper_open(archive, "not the password")
    return str(private["requestId"])


def check_refusals(
    base: str,
    no_pii: dict[str, str],
    pii: dict[str, str],
    other_channel: dict[str, str],
    request_id: str,
) -> None:
    answer = submit(base, no_pii, "uci-private-exhaust", encryptionKey=PASSWORD)
    assert answer.status_code == 403
    assert answer.json()["params"]["errmsg"] == (
        "dataset 'uci-private-exhaust' contains personal data; it needs an API key with the"
        " 'pii' scope"
    )
    answer = submit(base, pii, "uci-private-exhaust")
    assert answer.status_code == 400
    assert answer.json()["params"]["errmsg"].startswith(
        "encryptionKey is required for dataset 'uci-private-exhaust'"
    )
    url = f"{base}/dataset/v1/request/read/uci?requestId={request_id}"
    assert httpx.get(url, headers=pii).status_code == 200
    read = httpx.get(url, headers=other_channel)
    assert read.status_code == 404
    assert read.json()["params"]["errmsg"] == "no job available with the given request_id and tag"
