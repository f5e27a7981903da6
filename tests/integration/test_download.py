"""``GET /download/<key>``: signed links, ranges, validators, purged files, path traversal."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from httpx2 import Response

from data_exhaust.api.download import PURGED, router
from data_exhaust.api.errors import ApiError
from data_exhaust.audit import AuditLog
from data_exhaust.db import make_engine, migrate
from data_exhaust.manager import JobManager
from data_exhaust.settings import Settings
from data_exhaust.signing import sign
from data_exhaust.storage import BlobStore, open_blob_store
from data_exhaust.testing import MemoryBlobStore, MemoryJobStore

BASE = "http://testserver"
KEY = "uci-response-exhaust/0123ABCD/réponses.csv"
DATA = 'conversationId,message\nc1,नमस्ते\nc2,"é, ü"\n'.encode() * 3000  # ~150 kB
NOW = 1_800_000_000.0


@dataclass
class StubServices:
    """The parts of :class:`data_exhaust.services.Services` the download route uses: the
    blob store, settings, the job manager (in memory) and the audit log (real SQLite)."""

    blobs: BlobStore
    settings: Settings
    jobs: JobManager
    audit: AuditLog


class VanishingStore(MemoryBlobStore):
    """A blob purged between the route's ``stat`` and ``read`` (the retention sweep racing)."""

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        self.delete_prefix(key)
        return super().read(key, start, end)


def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    body = {"responseCode": exc.code, "params": {"errmsg": exc.message}}
    return JSONResponse(body, status_code=exc.http_status)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


@pytest.fixture(params=["local", "memory"])
def blobs(request: pytest.FixtureRequest, settings: Settings) -> BlobStore:
    url = settings.resolved_storage_url if request.param == "local" else "memory://"
    store = open_blob_store(url, settings.secret)
    with store.writer(KEY) as fh:
        fh.write(DATA)
    return store


def make_client(blobs: BlobStore, settings: Settings) -> TestClient:
    app = FastAPI()
    app.include_router(router)
    url = f"sqlite:///{settings.data_dir / 'audit.db'}"
    migrate(url)
    jobs = JobManager(MemoryJobStore(), settings)
    app.state.services = StubServices(blobs, settings, jobs, AuditLog(make_engine(url)))
    app.add_exception_handler(ApiError, _api_error)
    return TestClient(app)


@pytest.fixture
def client(blobs: BlobStore, settings: Settings) -> Iterator[TestClient]:
    with make_client(blobs, settings) as test_client:
        yield test_client


def link(blobs: BlobStore, key: str = KEY, ttl: int = 600, now: float | None = None) -> str:
    return blobs.signed_url(key, BASE, ttl, now=now)[0]


def refusal(response: Response) -> str:
    assert response.status_code == 403
    assert response.json()["responseCode"] == "FORBIDDEN"
    message: str = response.json()["params"]["errmsg"]
    return message


# --- a valid link -----------------------------------------------------------------------------


def test_valid_link_downloads_the_exact_bytes(client: TestClient, blobs: BlobStore) -> None:
    response = client.get(link(blobs))
    assert response.status_code == 200
    assert response.content == DATA
    info = blobs.stat(KEY)
    assert info is not None
    headers = response.headers
    assert headers["content-length"] == str(len(DATA))
    assert headers["etag"] == info.etag
    assert headers["last-modified"].endswith(" GMT")
    assert headers["accept-ranges"] == "bytes"
    assert headers["cache-control"] == "private, no-store"
    assert headers["content-type"] == "text/csv; charset=utf-8"
    assert headers["content-disposition"] == (
        "attachment; filename=\"r_ponses.csv\"; filename*=UTF-8''r%C3%A9ponses.csv"
    )


def test_head_sends_the_headers_only(client: TestClient, blobs: BlobStore) -> None:
    response = client.head(link(blobs))
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(DATA))
    ranged = client.head(link(blobs), headers={"Range": "bytes=0-9"})
    assert ranged.status_code == 206
    assert ranged.headers["content-length"] == "10"


@pytest.mark.parametrize(
    ("name", "content_type", "disposition"),
    [
        ("out.csv.gz", "application/gzip", 'attachment; filename="out.csv.gz"'),
        ("out.JSONL", "application/x-ndjson", 'attachment; filename="out.JSONL"'),
        ("out.parquet", "application/vnd.apache.parquet", 'attachment; filename="out.parquet"'),
        ("out.zip", "application/zip", 'attachment; filename="out.zip"'),
        ("README", "application/octet-stream", 'attachment; filename="README"'),
        (
            'a "b".bin',
            "application/octet-stream",
            "attachment; filename=\"a _b_.bin\"; filename*=UTF-8''a%20%22b%22.bin",
        ),
    ],
)
def test_content_type_and_disposition(
    client: TestClient, blobs: BlobStore, name: str, content_type: str, disposition: str
) -> None:
    key = f"d/r/{name}"
    with blobs.writer(key) as fh:
        fh.write(b"x")
    response = client.get(link(blobs, key))
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["content-disposition"] == disposition
    assert response.headers["x-content-type-options"] == "nosniff"


# --- refused links ----------------------------------------------------------------------------


def test_tampered_links_are_invalid(
    client: TestClient, blobs: BlobStore, settings: Settings
) -> None:
    other = "uci-response-exhaust/0123ABCD/other.csv"
    with blobs.writer(other) as fh:
        fh.write(b"someone else's file")
    expires = int(NOW) + 10**6
    signature = sign(KEY, expires, settings.secret)
    path = f"/download/{quote(KEY)}"
    good = client.get(path, params={"expires": expires, "signature": signature})
    assert good.content == DATA
    refused: list[tuple[str, dict[str, str | int]]] = [
        (f"/download/{quote(other)}", {"expires": expires, "signature": signature}),
        (path, {"expires": expires + 1, "signature": signature}),
        (
            path,
            {
                "expires": expires,
                "signature": signature[:-1] + ("1" if signature.endswith("0") else "0"),
            },
        ),
        (path, {"expires": expires, "signature": signature.upper()}),
        (path, {"expires": expires, "signature": sign(KEY, expires, b"not-the-secret")}),
    ]
    for url, params in refused:
        assert refusal(client.get(url, params=params)) == "invalid signature", params


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?signature=abc",
        "?expires=1900000000",
        "?expires=&signature=",
        "?expires=soon&signature=abc",
        "?expires=1e10&signature=abc",
        "?expires=-5&signature=abc",
        "?expires=%201900000000&signature=abc",
        "?expires=1_900_000_000&signature=abc",
        "?expires=" + "9" * 5000 + "&signature=abc",
        "?expires=1900000000&signature=%C3%A9",
    ],
)
def test_missing_or_malformed_params_are_invalid(client: TestClient, query: str) -> None:
    assert refusal(client.get(f"/download/{quote(KEY)}{query}")) == "invalid signature"


def test_expired_link(client: TestClient, blobs: BlobStore) -> None:
    expired = link(blobs, ttl=60, now=1_000_000.0)
    assert refusal(client.get(expired)) == "link expired"
    assert client.head(expired).status_code == 403  # HEAD: same status, no body


def test_expired_and_tampered_link_is_invalid(client: TestClient, blobs: BlobStore) -> None:
    expired = link(blobs, ttl=60, now=1_000_000.0)
    revived = expired.replace("expires=1000060", "expires=1900000000")
    assert revived != expired
    assert refusal(client.get(revived)) == "invalid signature"


# --- purged files -----------------------------------------------------------------------------


def test_purged_blob_is_not_found(client: TestClient, blobs: BlobStore) -> None:
    url = link(blobs)
    assert blobs.delete_prefix("uci-response-exhaust/0123ABCD/") == 1
    response = client.get(url)
    assert response.status_code == 404
    assert response.json() == {"responseCode": "RESOURCE_NOT_FOUND", "params": {"errmsg": PURGED}}


def test_blob_purged_while_the_request_runs(settings: Settings) -> None:
    blobs = VanishingStore(settings.secret)
    with blobs.writer(KEY) as fh:
        fh.write(DATA)
    with make_client(blobs, settings) as client:
        response = client.get(link(blobs))
    assert response.status_code == 404
    assert response.json()["params"]["errmsg"] == PURGED


# --- ranges and validators --------------------------------------------------------------------

SIZE = len(DATA)


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-9", 0, 10),
        ("bytes=10-", 10, SIZE),
        ("bytes=-5", SIZE - 5, SIZE),
        ("bytes=-999999999", 0, SIZE),
        ("bytes=70000-70000", 70000, 70001),
        (f"bytes=100-{SIZE * 2}", 100, SIZE),
        (" Bytes = 1 - 2 ", 1, 3),
    ],
)
def test_ranges(client: TestClient, blobs: BlobStore, header: str, start: int, end: int) -> None:
    response = client.get(link(blobs), headers={"Range": header})
    assert response.status_code == 206
    assert response.content == DATA[start:end]
    assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{SIZE}"
    assert response.headers["content-length"] == str(end - start)


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", f"bytes={SIZE + 10}-{SIZE + 20}", "bytes=-0"])
def test_unsatisfiable_range(client: TestClient, blobs: BlobStore, header: str) -> None:
    response = client.get(link(blobs), headers={"Range": header})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{SIZE}"
    assert response.content == b""


@pytest.mark.parametrize(
    "header", ["bytes=abc", "items=0-5", "bytes=5-1", "bytes=0-1,3-4", "bytes=-", "bytes 0-5", ""]
)
def test_malformed_range_is_ignored(client: TestClient, blobs: BlobStore, header: str) -> None:
    response = client.get(link(blobs), headers={"Range": header})
    assert response.status_code == 200
    assert response.content == DATA
    assert "content-range" not in response.headers


def test_if_none_match(client: TestClient, blobs: BlobStore) -> None:
    etag = client.get(link(blobs)).headers["etag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        response = client.get(link(blobs), headers={"If-None-Match": header})
        assert response.status_code == 304, header
        assert response.content == b""
        assert response.headers["etag"] == etag
    assert client.get(link(blobs), headers={"If-None-Match": '"other"'}).status_code == 200


def test_if_modified_since(client: TestClient, blobs: BlobStore) -> None:
    last_modified = client.get(link(blobs)).headers["last-modified"]
    response = client.get(link(blobs), headers={"If-Modified-Since": last_modified})
    assert response.status_code == 304
    old = {"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}
    assert client.get(link(blobs), headers=old).status_code == 200
    assert client.get(link(blobs), headers={"If-Modified-Since": "garbage"}).status_code == 200


def test_if_range(client: TestClient, blobs: BlobStore) -> None:
    first = client.get(link(blobs))
    etag, last_modified = first.headers["etag"], first.headers["last-modified"]
    for validator in (etag, last_modified):
        response = client.get(link(blobs), headers={"Range": "bytes=0-9", "If-Range": validator})
        assert response.status_code == 206
        assert response.content == DATA[:10]
    for stale in ('"stale"', f"W/{etag}", "Mon, 01 Jan 2001 00:00:00 GMT"):
        response = client.get(link(blobs), headers={"Range": "bytes=0-9", "If-Range": stale})
        assert response.status_code == 200
        assert response.content == DATA


# --- path traversal ---------------------------------------------------------------------------

TRAVERSALS = [
    "%2e%2e/secret.key",
    "%2E%2E%2Fsecret.key",
    "..%2fsecret.key",
    "blobs/%2e%2e/%2e%2e/secret.key",
    "%2e%2e%5csecret.key",
    "%2Fetc%2Fpasswd",
    "/etc/passwd",
    ".tmp/x.part",
    "a/%00/b",
]


@pytest.mark.parametrize("raw", TRAVERSALS)
def test_path_traversal_never_reads_outside_the_store(
    client: TestClient, settings: Settings, raw: str
) -> None:
    # The attacker even holds a valid signature for the decoded key: only key validation stops it.
    key = raw.replace("%2e", ".").replace("%2E", ".").replace("%2f", "/").replace("%2F", "/")
    key = key.replace("%5c", "\\").replace("%00", "\x00")
    expires = int(NOW) + 10**6
    signature = sign(key, expires, settings.secret)
    response = client.get(f"/download/{raw}?expires={expires}&signature={signature}")
    assert settings.secret not in response.content
    assert refusal(response) == "invalid signature"


def test_a_dotdot_url_reaches_no_file(client: TestClient, settings: Settings) -> None:
    """httpx normalises ``..`` away, so the request matches no route; it never reads a file."""
    expires = int(NOW) + 10**6
    signature = sign("../secret.key", expires, settings.secret)
    response = client.get(f"/download/../secret.key?expires={expires}&signature={signature}")
    assert response.status_code in (403, 404)
    assert settings.secret not in response.content


def test_openapi_lists_get_and_head_without_duplicate_ids(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    operations = schema["paths"]["/download/{key}"]
    assert set(operations) == {"get", "head"}
    assert operations["get"]["operationId"] != operations["head"]["operationId"]
    assert operations["get"]["tags"] == ["files"]
