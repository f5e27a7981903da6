"""Registry routes, the response exhaust's use of the registry (names, consent, default dates)
and the download audit log, over HTTP in process on SQLite and Postgres."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from data_exhaust.api.app import create_app
from data_exhaust.executor import InlineExecutor
from data_exhaust.services import Services
from tests.factories import CHANNEL, ETS, PHONES, assess_event

BOT = "bot-1"
PHONE = PHONES[0]


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    services.executor = InlineExecutor(services.worker())
    with TestClient(create_app(services, run_executor=False)) as test_client:
        yield test_client


def auth(services: Services, channels: list[str], scopes: str = "exhaust") -> dict[str, str]:
    key = services.keys.create("t", channels, scopes.split(","))[1]
    headers = {"Authorization": f"Bearer {key}"}
    if channels:
        headers["X-Channel-ID"] = channels[0]
    return headers


def put(client: TestClient, path: str, headers: dict[str, str], **request: Any) -> Any:
    return client.put(path, json={"request": request}, headers=headers)


def errmsg(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["params"]["errmsg"]


def test_conversations_are_scoped_to_channels(client: TestClient, services: Services) -> None:
    mine, other = auth(services, [CHANNEL]), auth(services, ["state-b"])
    created = put(
        client,
        f"/v1/conversations/{BOT}",
        mine,
        name="Survey, Class 8",
        channel=CHANNEL,
        startDate="2022-06-01",
        endDate="2022-06-30",
    ).json()
    assert created["result"]["created"] is True and created["id"] == "api.conversation.put"
    assert errmsg(put(client, "/v1/conversations/x", mine, name="x", channel="state-b")) == (
        403,
        "channel 'state-b' is not allowed for this API key",
    )
    taken = put(client, f"/v1/conversations/{BOT}", other, name="mine now", channel="state-b")
    assert taken.status_code == 409
    assert client.get(f"/v1/conversations/{BOT}", headers=other).status_code == 404
    assert client.get("/v1/conversations", headers=other).json()["result"]["count"] == 0
    assert client.get(f"/v1/conversations/{BOT}", headers=mine).json()["result"]["name"] == (
        "Survey, Class 8"
    )
    admin = auth(services, [], "admin")
    assert client.get("/v1/conversations", headers=admin).json()["result"]["count"] == 1
    bad = put(
        client,
        "/v1/conversations/y",
        mine,
        name="y",
        channel=CHANNEL,
        startDate="2022-06-30",
        endDate="2022-06-01",
    )
    assert errmsg(bad) == (400, "endDate must not be before startDate")


def test_devices_never_give_back_their_phone(client: TestClient, services: Services) -> None:
    mine = auth(services, [CHANNEL])
    put(client, f"/v1/conversations/{BOT}", mine, name="Bot", channel=CHANNEL)
    answer = put(client, "/v1/devices/dev-1", mine, conversations=[BOT], phone=PHONE, consent=True)
    assert answer.json()["result"] == {
        "deviceUuid": "dev-1",
        "conversations": [BOT],
        "consent": True,
        "hasPhone": True,
    }
    assert PHONE not in answer.text and "9845012345" not in answer.text
    refused = put(client, "/v1/devices/dev-1", mine, conversations=[BOT], phone="98450-12a45")
    assert refused.status_code == 400 and "12a45" not in refused.text
    unknown = put(client, "/v1/devices/dev-1", mine, conversations=["nope"])
    assert errmsg(unknown)[0] == 400 and "not registered in your channels" in errmsg(unknown)[1]
    other = auth(services, ["state-b"])
    assert client.get("/v1/devices/dev-1", headers=other).status_code == 404
    stored = services.registry.records(["dev-1"])["dev-1"]
    assert stored.phone_sealed and PHONE not in stored.phone_sealed
    assert services.registry.phone_of(stored) == PHONE


def ingest(services: Services, *events: dict[str, Any]) -> None:
    assert services.ingestor.ingest({"events": list(events)}).accepted == len(events)


def response_rows(
    client: TestClient, headers: dict[str, str], **config: Any
) -> list[dict[str, str]]:
    request = {
        "tag": "t",
        "dataset": "uci-response-exhaust",
        "datasetConfig": {"conversationId": BOT, **config},
    }
    job = client.post(
        "/dataset/v1/request/submit", json={"request": request}, headers=headers
    ).json()["result"]
    read = client.get(
        f"/dataset/v1/request/read/t?requestId={job['requestId']}", headers=headers
    ).json()["result"]
    assert read["status"] == "SUCCESS", read["statusMessage"]
    text = client.get(read["downloadUrls"][0]).text
    return list(csv.DictReader(io.StringIO(text)))


def test_response_exhaust_uses_names_consent_and_registered_dates(
    client: TestClient, services: Services
) -> None:
    mine = auth(services, [CHANNEL], "exhaust,ingest")
    put(
        client,
        f"/v1/conversations/{BOT}",
        mine,
        name="Survey, Class 8",
        channel=CHANNEL,
        startDate="2022-06-21",
        endDate="2022-06-21",
    )
    put(client, "/v1/devices/yes", mine, conversations=[BOT], consent=True)
    put(client, "/v1/devices/no", mine, conversations=[BOT], phone=PHONE, consent=False)
    ingest(
        services,
        *(
            assess_event(conversation_id=BOT, device_id=d, mid=f"m-{d}")
            for d in ("yes", "no", "unregistered")
        ),
        assess_event(conversation_id=BOT, mid="later", ets=ETS + 3 * 86_400_000),
    )
    rows = response_rows(client, mine)  # no dates: the registered ones (2022-06-21 only)
    assert [r["Message ID"] for r in rows] == ["m-yes", "m-no", "m-unregistered"]
    assert {r["Conversation Name"] for r in rows} == {"Survey, Class 8"}
    responses = {r["Device ID"]: r["Question Response"] for r in rows}
    assert responses["no"] == ""
    assert responses["yes"] != "" and responses["unregistered"] != ""


def test_downloads_are_audited_with_the_key_they_were_issued_to(
    client: TestClient, services: Services
) -> None:
    mine = auth(services, [CHANNEL], "exhaust,ingest")
    ingest(services, assess_event(conversation_id=BOT))
    request = {
        "tag": "t",
        "dataset": "uci-response-exhaust",
        "datasetConfig": {
            "conversationId": BOT,
            "startDate": "2022-06-21",
            "endDate": "2022-06-21",
        },
    }
    job = client.post("/dataset/v1/request/submit", json={"request": request}, headers=mine).json()[
        "result"
    ]
    read = client.get(
        f"/dataset/v1/request/read/t?requestId={job['requestId']}", headers=mine
    ).json()["result"]
    url = read["downloadUrls"][0]
    key_id = mine["Authorization"].split("_")[1]
    assert f"by={key_id}" in url
    assert client.get(url, headers={"User-Agent": "state-loader/1.0"}).status_code == 200
    blamed = url.replace(f"by={key_id}", "by=someone-else")
    assert errmsg(client.get(blamed)) == (403, "invalid signature")
    admin = auth(services, [], "admin")
    audit = client.get(f"/v1/audit?requestId={job['requestId']}", headers=admin).json()
    assert audit["result"]["count"] == 1
    (entry,) = audit["result"]["downloads"]
    assert entry["keyId"] == key_id and entry["channel"] == CHANNEL
    assert entry["userAgent"] == "state-loader/1.0" and entry["status"] == 200
    assert entry["file"].endswith(".csv") and entry["address"]
    assert client.get("/v1/audit", headers=mine).status_code == 403
    assert httpx.URL(url).params["by"] == key_id


def test_the_encryption_key_is_stored_sealed_and_never_echoed(
    services: Services, client: TestClient
) -> None:
    from sqlalchemy import text

    from data_exhaust.secrets_box import JOB_SECRETS

    services.executor = None  # keep the job waiting: only its stored form matters here
    mine = auth(services, [CHANNEL], "exhaust,pii")
    put(client, f"/v1/conversations/{BOT}", mine, name="Bot", channel=CHANNEL)
    password = "correct horse battery staple"
    request = {
        "tag": "p",
        "dataset": "uci-private-exhaust",
        "encryptionKey": password,
        "datasetConfig": {
            "conversationId": BOT,
            "startDate": "2022-06-21",
            "endDate": "2022-06-21",
        },
    }
    answer = client.post("/dataset/v1/request/submit", json={"request": request}, headers=mine)
    assert answer.status_code == 200 and password not in answer.text
    with services.engine.connect() as connection:
        stored = connection.execute(text("SELECT secret_data FROM job_request")).scalar_one()
    assert password not in stored
    assert services.settings.secret_box.unseal(stored, JOB_SECRETS) == (
        f'{{"encryptionKey":"{password}"}}'
    )


def test_a_retried_batch_is_exported_once(client: TestClient, services: Services) -> None:
    mine = auth(services, [CHANNEL], "exhaust,ingest")
    same_mid_other_reply = assess_event(
        conversation_id=BOT,
        mid="shared",
        ets=ETS + 5,
        **{"edata.resvalues": [{"ans1": "another reply"}]},
    )
    sent = [assess_event(conversation_id=BOT, mid=f"m{i}", ets=ETS + i) for i in range(5)]
    sent.append(same_mid_other_reply)
    sent.append(assess_event(conversation_id=BOT, mid="shared", ets=ETS + 5))
    ingest(services, *sent)
    ingest(services, *sent)  # the chatbot retried without a msgid: stored twice
    services.compact_lake()
    ingest(services, *sent[:3])  # and once more, now split across Parquet and raw segments
    rows = response_rows(client, mine, startDate="2022-06-21", endDate="2022-06-21")
    assert [r["Message ID"] for r in rows] == ["m0", "m1", "m2", "m3", "m4", "shared", "shared"]
