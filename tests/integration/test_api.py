"""The HTTP API in process (TestClient) over real databases: envelope, validation messages,
auth and tenancy, the request lifecycle routes and the report routes."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from data_exhaust.api.app import create_app
from data_exhaust.executor import InlineExecutor
from data_exhaust.ingest import Ingestor, IngestResult
from data_exhaust.services import Services, build_services
from data_exhaust.settings import Settings
from tests.conftest import wait_for

CONFIG = {"rows": 3}


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services, run_executor=False)) as test_client:
        yield test_client


@pytest.fixture
def key(services: Services) -> str:
    return services.keys.create("tester", ["c1", "c2"], ["exhaust"])[1]


def headers(key: str, channel: str | None = "c1", **extra: str) -> dict[str, str]:
    found = {"Authorization": f"Bearer {key}", **extra}
    if channel is not None:
        found["X-Channel-ID"] = channel
    return found


def submit_body(**request: Any) -> dict[str, Any]:
    base = {"tag": "t1", "dataset": "test-counting", "datasetConfig": CONFIG}
    return {"id": "x", "ver": "1.0", "params": {"msgid": "m-1"}, "request": {**base, **request}}


def error_of(response: Any) -> tuple[int, str, str]:
    body = response.json()
    assert body["params"]["status"] == "failed" and body["result"] == {}
    assert body["params"]["err"] == body["responseCode"]
    return response.status_code, body["responseCode"], body["params"]["errmsg"]


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        ({"tag": ""}, "tag is empty"),
        ({"tag": "", "dataset": ""}, "tag is empty"),
        ({"dataset": ""}, "dataset is empty"),
        ({"dataset": "", "datasetConfig": {}}, "dataset is empty"),
        ({"datasetConfig": {}}, "datasetConfig is empty"),
        ({"dataset": "nope"}, "dataset 'nope' is not supported; supported datasets: "),
        ({"tag": "a/b"}, "tag must not contain '/' or ':'"),
        ({"tag": "x" * 101}, "tag must be at most 100 characters"),
        ({"tag": 5}, "tag must be a string"),
        ({"datasetConfig": [1]}, "datasetConfig must be a JSON object"),
        ({"output_format": "xlsx"}, "output_format 'xlsx' is not supported"),
        ({"requestedChannel": "c2"}, "requestedChannel 'c2' must equal X-Channel-ID 'c1'"),
        ({"encryptionKey": "short"}, "encryptionKey must be a string of 8 to 128 characters"),
        ({"datasetConfig": {"rows": "many"}}, "rows must be a whole number"),
    ],
)
def test_submit_validation_messages(
    client: TestClient, key: str, request_fields: dict[str, Any], message: str
) -> None:
    response = client.post(
        "/dataset/v1/request/submit", json=submit_body(**request_fields), headers=headers(key)
    )
    status, code, errmsg = error_of(response)
    assert (status, code) == (400, "CLIENT_ERROR")
    assert errmsg.startswith(message)
    assert (
        client.get("/dataset/v1/request/list/t1", headers=headers(key)).json()["result"]["count"]
        == 0
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "the body is not valid JSON"),
        (b"[1, 2]", "the body must be a JSON object"),
        (b'{"params": {}}', 'the body must have a "request" object'),
        (b'{"request": "x"}', 'the body must have a "request" object'),
        (b"", "the body is not valid JSON"),
    ],
)
def test_malformed_bodies_are_client_errors(
    client: TestClient, key: str, raw: bytes, message: str
) -> None:
    response = client.post(
        "/dataset/v1/request/submit",
        content=raw,
        headers={**headers(key), "Content-Type": "application/json"},
    )
    status, code, errmsg = error_of(response)
    assert (status, code) == (400, "CLIENT_ERROR") and errmsg.startswith(message)


def test_a_wrong_method_is_405_with_the_methods_allowed(client: TestClient, key: str) -> None:
    response = client.get("/dataset/v1/request/submit", headers=headers(key))
    status, code, errmsg = error_of(response)
    assert (status, code) == (405, "CLIENT_ERROR")
    assert response.headers["Allow"] == "POST"
    assert errmsg == "GET is not allowed here; use POST (see /docs)"


def test_auth_and_channel_errors(client: TestClient, key: str, services: Services) -> None:
    route = "/dataset/v1/request/list/t1"
    assert error_of(client.get(route))[:2] == (401, "UNAUTHORIZED")
    assert error_of(client.get(route, headers=headers("dx_nope_nope")))[:2] == (401, "UNAUTHORIZED")
    assert error_of(client.get(route, headers=headers(key, None))) == (
        403,
        "FORBIDDEN",
        "X-Channel-ID is missing in request header",
    )
    assert error_of(client.get(route, headers=headers(key, "c9"))) == (
        403,
        "FORBIDDEN",
        "X-Channel-ID 'c9' is not allowed for this API key",
    )
    ingest_only = services.keys.create("bot", ["c1"], ["ingest"])[1]
    assert error_of(client.get(route, headers=headers(ingest_only)))[:2] == (403, "FORBIDDEN")
    revoked_info, revoked = services.keys.create("old", ["c1"], ["exhaust"])
    services.keys.revoke(revoked_info.key_id)
    assert error_of(client.get(route, headers=headers(revoked)))[:2] == (401, "UNAUTHORIZED")


def test_submit_read_list_search_and_dedup(client: TestClient, key: str) -> None:
    response = client.post(
        "/dataset/v1/request/submit",
        json=submit_body(),
        headers=headers(key, **{"X-Authenticated-Userid": "user-7"}),
    )
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "ekstep.analytics.dataset.request.submit"
    assert body["params"]["msgid"] == "m-1" and body["params"]["status"] == "successful"
    job = body["result"]
    assert re.fullmatch(r"[0-9A-F]{32}", job["requestId"])
    assert job["tag"] == "t1:c1" and job["status"] == "SUBMITTED" and job["deduplicated"] is False
    assert job["requestedBy"] == "user-7" and job["requestedChannel"] == "c1"
    assert job["downloadUrls"] == [] and job["jobStats"]["dtJobCompleted"] is None
    again = client.post(
        "/dataset/v1/request/submit",
        json=submit_body(),
        headers=headers(key, **{"X-Authenticated-Userid": "user-7"}),
    ).json()
    assert again["result"]["deduplicated"] is True
    assert again["result"]["requestId"] == job["requestId"]
    read = client.get(
        f"/dataset/v1/request/read/t1?requestId={job['requestId']}", headers=headers(key)
    ).json()
    assert read["id"] == "ekstep.analytics.dataset.request.info"
    assert read["result"]["requestId"] == job["requestId"]
    listed = client.get("/dataset/v1/request/list/t1?limit=5", headers=headers(key)).json()
    assert listed["result"]["count"] == 1
    search = {"request": {"filters": {"status": "SUBMITTED", "dataset": "test-counting"}}}
    found = client.post("/dataset/v1/request/search", json=search, headers=headers(key)).json()
    assert found["result"]["count"] == 1


def test_list_and_search_argument_errors(client: TestClient, key: str) -> None:
    for limit in ("abc", "0", "1001"):
        response = client.get(f"/dataset/v1/request/list/t1?limit={limit}", headers=headers(key))
        assert error_of(response)[:2] == (400, "CLIENT_ERROR")
    empty = client.post(
        "/dataset/v1/request/search", json={"request": {"filters": {}}}, headers=headers(key)
    )
    assert error_of(empty) == (400, "CLIENT_ERROR", "Filters are empty")
    bad_date = {"request": {"filters": {"requestedDate": "22-11-2026"}}}
    assert (
        error_of(client.post("/dataset/v1/request/search", json=bad_date, headers=headers(key)))[2]
        == "requestedDate must be YYYY-MM-DD"
    )
    missing = client.get("/dataset/v1/request/read/t1", headers=headers(key))
    assert error_of(missing)[2].startswith("requestId is required")


def test_channels_are_isolated(client: TestClient, key: str, services: Services) -> None:
    job = client.post(
        "/dataset/v1/request/submit", json=submit_body(), headers=headers(key)
    ).json()["result"]
    other = services.keys.create("other-state", ["c3"], ["exhaust"])[1]
    read = client.get(
        f"/dataset/v1/request/read/t1?requestId={job['requestId']}", headers=headers(other, "c3")
    )
    assert error_of(read) == (
        404,
        "RESOURCE_NOT_FOUND",
        "no job available with the given request_id and tag",
    )
    assert client.get("/dataset/v1/request/list/t1", headers=headers(other, "c3")).json()[
        "result"
    ] == {"count": 0, "jobs": []}
    stop = client.post(
        f"/dataset/v1/request/stop/t1?requestId={job['requestId']}", headers=headers(other, "c3")
    )
    assert error_of(stop)[0] == 404
    same_key_other_channel = client.get(
        f"/dataset/v1/request/read/t1?requestId={job['requestId']}", headers=headers(key, "c2")
    )
    assert error_of(same_key_other_channel)[0] == 404


def test_stop_routes(client: TestClient, key: str, services: Services) -> None:
    job = client.post(
        "/dataset/v1/request/submit", json=submit_body(), headers=headers(key)
    ).json()["result"]
    url = f"/dataset/v1/request/stop/t1?requestId={job['requestId']}"
    stopped = client.post(url, headers=headers(key)).json()
    assert stopped["id"] == "ekstep.analytics.dataset.request.stop"
    assert stopped["result"]["status"] == "STOPPED"
    assert client.post(url, headers=headers(key)).json()["result"]["status"] == "STOPPED"
    services.executor = InlineExecutor(services.worker())
    done = client.post(
        "/dataset/v1/request/submit", json=submit_body(tag="t2"), headers=headers(key)
    ).json()["result"]
    assert services.jobs.get(done["requestId"]).status == "SUCCESS"
    conflict = client.post(
        f"/dataset/v1/request/stop/t2?requestId={done['requestId']}", headers=headers(key)
    )
    assert error_of(conflict) == (409, "CONFLICT", "job already finished with status SUCCESS")


def test_success_gives_signed_urls_that_download_the_file(
    client: TestClient, key: str, services: Services
) -> None:
    services.executor = InlineExecutor(services.worker())
    job = client.post(
        "/dataset/v1/request/submit", json=submit_body(), headers=headers(key)
    ).json()["result"]
    read = client.get(
        f"/dataset/v1/request/read/t1?requestId={job['requestId']}", headers=headers(key)
    ).json()["result"]
    assert read["status"] == "SUCCESS" and len(read["downloadUrls"]) == 1
    assert read["files"][0]["rows"] == 3 and read["progress"]["rowsWritten"] == 3
    url = read["downloadUrls"][0]
    assert "signature=" in url and "expires=" in url
    download = client.get(url)
    assert download.status_code == 200
    assert download.text == 'n,label\n1,"row 1"\n2,"row 2"\n3,"row 3"\n'


def test_report_routes_use_the_seed_shapes(client: TestClient, key: str) -> None:
    body: dict[str, Any] = {
        "id": "ekstep.analytics.job.request.submit",
        "params": {"msgid": "r1"},
        "request": {
            "tag": "client-1",
            "jobId": "test-counting",
            "jobConfig": CONFIG,
            "output_format": "csv",
        },
    }
    submitted = client.post("/job/request/submit", json=body, headers=headers(key)).json()
    assert submitted["id"] == "ekstep.analytics.job.request.submit"
    job = submitted["result"]
    assert job["request"]["jobId"] == "test-counting" and job["status"] == "SUBMITTED"
    assert set(job["job_stats"]) == {"dt_job_submitted", "dt_job_completed", "execution_time"}
    read = client.get(f"/job/request/read/client-1/{job['request_id']}", headers=headers(key))
    assert read.json()["id"] == "ekstep.analytics.job.request.info"
    listed = client.get("/job/request/list/client-1?limit=10", headers=headers(key)).json()
    assert listed["id"] == "ekstep.analytics.job.request.list"
    assert listed["result"]["count"] == 1
    body["request"]["jobConfig"] = {"rows": 3, "colour": "red"}
    body["request"]["jobId"] = "uci-response-exhaust"
    typo = error_of(client.post("/job/request/submit", json=body, headers=headers(key)))
    assert "jobConfig" in typo[2] and "datasetConfig" not in typo[2]
    body["request"]["jobId"] = ""
    bad = client.post("/job/request/submit", json=body, headers=headers(key))
    assert error_of(bad) == (400, "CLIENT_ERROR", "jobId is empty")


def test_operations_routes(client: TestClient, key: str, services: Services) -> None:
    health = client.get("/health").json()
    assert health["result"]["healthy"] is True
    assert health["result"]["checks"]["database"]["healthy"] is True
    assert error_of(client.get("/metrics", headers=headers(key)))[0] == 403
    admin = services.keys.create("ops", [], ["admin"])[1]
    metrics = client.get("/metrics", headers=headers(admin))
    assert metrics.status_code == 200 and 'exhaust_jobs{status="SUBMITTED"}' in metrics.text
    # answers are counted by route template and status (the /metrics 403 above, the 200s here)
    assert 'exhaust_http_requests_total{route="/metrics",status="403"} 1.0' in metrics.text
    assert 'exhaust_http_request_seconds_count{route="/health"} 1.0' in metrics.text
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    missing = client.get("/no/such/route", headers=headers(key))
    assert error_of(missing)[:2] == (404, "RESOURCE_NOT_FOUND")


def test_polled_routes_document_their_parameters_and_key(client: TestClient) -> None:
    # read and list read their parameters from the request (deps.polled); /docs must still
    # show them, the X-Channel-ID header and the bearer key, as for the declared routes
    paths = client.get("/openapi.json").json()["paths"]
    expected = {
        "/dataset/v1/request/read/{tag}": {("tag", "path", True), ("requestId", "query", False)},
        "/dataset/v1/request/list/{tag}": {("tag", "path", True), ("limit", "query", False)},
        "/job/request/read/{tag}/{request_id}": {
            ("tag", "path", True),
            ("request_id", "path", True),
        },
        "/job/request/list/{tag}": {("tag", "path", True), ("limit", "query", False)},
    }
    for path, parameters in expected.items():
        operation = paths[path]["get"]
        documented = {(p["name"], p["in"], p["required"]) for p in operation["parameters"]}
        assert documented == parameters | {("X-Channel-ID", "header", True)}, path
        assert operation["security"] == [{"ApiKey": []}], path


def test_polled_routes_are_counted_checked_and_answer_in_the_envelope(
    client: TestClient, key: str, services: Services
) -> None:
    # read and list skip FastAPI's request handler (deps.PolledRoute): they must still be
    # counted by route template, refuse another method, and answer errors in the envelope
    assert client.get("/dataset/v1/request/list/t1", headers=headers(key)).status_code == 200
    unknown = client.get("/dataset/v1/request/read/t1?requestId=NOPE", headers=headers(key))
    assert error_of(unknown)[:2] == (404, "RESOURCE_NOT_FOUND")
    assert unknown.json()["id"] == "ekstep.analytics.dataset.request.info"
    assert error_of(client.get("/job/request/list/t1"))[:2] == (401, "UNAUTHORIZED")
    wrong = client.post("/dataset/v1/request/list/t1", headers=headers(key))
    assert error_of(wrong) == (405, "CLIENT_ERROR", "POST is not allowed here; use GET (see /docs)")
    admin = services.keys.create("ops", [], ["admin"])[1]
    metrics = client.get("/metrics", headers=headers(admin)).text
    assert 'route="/dataset/v1/request/list/{tag}",status="200"} 1.0' in metrics
    assert 'route="/dataset/v1/request/read/{tag}",status="404"} 1.0' in metrics
    assert 'route="/job/request/list/{tag}",status="401"} 1.0' in metrics


def test_a_polled_route_takes_only_the_request() -> None:
    from fastapi import APIRouter

    from data_exhaust.api.deps import polled_get

    async def declared(request: Any, tag: str) -> Any: ...

    with pytest.raises(TypeError, match="declared: a polled route's endpoint takes only"):
        polled_get(APIRouter(), "/x/{tag}", "x")(declared)  # type: ignore[arg-type]


def telemetry_batch(*events: dict[str, Any], msgid: str = "b-1") -> dict[str, Any]:
    return {
        "id": "api.sunbird.telemetry",
        "ver": "3.0",
        "params": {"msgid": msgid},
        "ets": 1655822756892,
        "events": list(events),
    }


def test_telemetry_ingest_route(client: TestClient, services: Services) -> None:
    from tests.factories import CHANNEL, assess_event

    key = services.keys.create("bot", [CHANNEL], ["ingest"])[1]
    auth = {"Authorization": f"Bearer {key}"}
    good, bad = assess_event(), assess_event(ets=1655822756)
    foreign = assess_event(**{"context.channel": "someone-else"})
    answer = client.post("/v1/telemetry", json=telemetry_batch(good, bad, foreign), headers=auth)
    assert answer.status_code == 200
    body = answer.json()
    assert body["id"] == "api.telemetry" and body["responseCode"] == "SUCCESS"
    assert body["params"]["msgid"] == "b-1"
    result = body["result"]
    assert result["accepted"] == 1
    assert [r["index"] for r in result["rejected"]] == [1, 2]
    assert "seconds" in result["rejected"][0]["errors"][0]
    assert result["rejected"][1]["errors"] == [
        "context.channel 'someone-else' is not allowed for this API key"
    ]
    again = client.post(
        "/data/v1/telemetry", json=telemetry_batch(good, bad, foreign), headers=auth
    ).json()
    assert again["result"]["accepted"] == 1  # acknowledged again, stored once
    assert services.lake.stats()["quarantined"] == 2


class PairedIngestor(Ingestor):
    """An ingest that waits, inside, for a second batch to be inside too: it counts how many
    are stored at once, and can only finish where two may be (a limit of 1 breaks the
    barrier instead of hanging)."""

    def __init__(self, services: Services) -> None:
        super().__init__(services.lake, services.engine)
        self.pairs = threading.Barrier(2, timeout=30)
        self.lock = threading.Lock()
        self.inside = self.most = 0

    def ingest(self, *args: Any, **kwargs: Any) -> IngestResult:
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        try:
            self.pairs.wait()
            return super().ingest(*args, **kwargs)
        finally:
            with self.lock:
                self.inside -= 1


def test_a_process_stores_at_most_ingest_batches_at_once(
    client: TestClient, services: Services
) -> None:
    """Six batches sent together are stored two at a time (EXHAUST_INGEST_BATCHES, default
    2); the others wait their turn, and all are stored."""
    from tests.factories import CHANNEL, assess_event

    assert services.settings.ingest_batches == 2
    ingestor = services.ingestor = PairedIngestor(services)
    auth = {"Authorization": f"Bearer {services.keys.create('bot', [CHANNEL], ['ingest'])[1]}"}

    def send(n: int) -> int:
        event = assess_event(mid=f"paired-{n}")
        answer = client.post("/v1/telemetry", json=telemetry_batch(event, msgid=f"p-{n}"),
                             headers=auth)  # fmt: skip
        return int(answer.json()["result"]["accepted"])

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(send, range(6))) == [1] * 6
    assert ingestor.most == 2


class GatedIngestor(Ingestor):
    """An ingest that notes the order batches come in and holds the first until ``gate``."""

    def __init__(self, services: Services) -> None:
        super().__init__(services.lake, services.engine)
        self.gate = threading.Event()
        self.order: list[str] = []

    def ingest(self, body: dict[str, Any], *args: Any, **kwargs: Any) -> IngestResult:
        self.order.append(body["params"]["msgid"])
        if len(self.order) == 1:
            assert self.gate.wait(30)
        return super().ingest(body, *args, **kwargs)


def test_batches_waiting_for_their_turn_are_stored_in_the_order_they_came(
    settings: Settings,
) -> None:
    """With one batch at a time (EXHAUST_INGEST_BATCHES=1), those that arrive while it is
    stored wait in a line and go in the order they arrived: none is overtaken."""
    from tests.factories import CHANNEL, assess_event

    services = build_services(settings.model_copy(update={"ingest_batches": 1}))
    ingestor = services.ingestor = GatedIngestor(services)
    auth = {"Authorization": f"Bearer {services.keys.create('bot', [CHANNEL], ['ingest'])[1]}"}
    app = create_app(services, run_executor=False)
    client = TestClient(app)

    def send(n: int) -> int:
        batch = telemetry_batch(assess_event(mid=f"line-{n}"), msgid=f"m-{n}")
        answer = client.post("/v1/telemetry", json=batch, headers=auth)
        return int(answer.json()["result"]["accepted"])

    def waiting() -> int:
        limiter = getattr(app.state, "ingest_limiter", None)
        return 0 if limiter is None else int(limiter.statistics().tasks_waiting)

    try:
        with client, ThreadPoolExecutor(5) as pool:
            sent = [pool.submit(send, 0)]
            wait_for(lambda: ingestor.order == ["m-0"])  # held inside, in its turn
            for n in range(1, 5):  # each waits in the line before the next is sent
                sent.append(pool.submit(send, n))
                wait_for(lambda n=n: waiting() == n)  # type: ignore[misc]
            ingestor.gate.set()
            assert [future.result(timeout=30) for future in sent] == [1] * 5
        assert ingestor.order == [f"m-{n}" for n in range(5)]
    finally:
        services.close()


def test_telemetry_route_refuses_bad_requests(
    client: TestClient, services: Services, key: str
) -> None:
    ingest = services.keys.create("bot", ["c1"], ["ingest"])[1]
    auth = {"Authorization": f"Bearer {ingest}", "Content-Type": "application/json"}
    assert error_of(client.post("/v1/telemetry", content=b"nope", headers=auth))[:2] == (
        400,
        "CLIENT_ERROR",
    )
    assert error_of(client.post("/v1/telemetry", json={"id": "x"}, headers=auth))[0] == 400
    no_list = {"params": {"msgid": "b-9"}, "events": "x"}  # parsed in the thread pool: the
    refused = client.post("/v1/telemetry", json=no_list, headers=auth)  # msgid still echoed
    assert error_of(refused)[:2] == (400, "CLIENT_ERROR")
    assert refused.json()["params"]["msgid"] == "b-9"
    too_big = b'{"events": ["' + b"x" * (5 * 1024 * 1024) + b'"]}'
    assert error_of(client.post("/v1/telemetry", content=too_big, headers=auth))[:2] == (
        413,
        "PAYLOAD_TOO_LARGE",
    )
    exhaust_only = {"Authorization": f"Bearer {key}"}
    assert (
        error_of(client.post("/v1/telemetry", json=telemetry_batch(), headers=exhaust_only))[0]
        == 403
    )
