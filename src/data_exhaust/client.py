"""A typed HTTP client for the Data Exhaust API (what the CLI's client commands use)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from data_exhaust import __version__

FINISHED = ("SUCCESS", "FAILED", "STOPPED")


class ClientError(Exception):
    """The server refused a call; ``code`` is its responseCode, the message its errmsg."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status


class ExhaustClient:
    def __init__(
        self,
        server: str,
        api_key: str,
        channel: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.channel = channel
        self.http = httpx.Client(
            base_url=server.rstrip("/"),
            timeout=timeout,
            transport=transport,
            headers={
                "Authorization": f"Bearer {api_key}",
                "X-Channel-ID": channel,
                "User-Agent": f"data-exhaust-client/{__version__}",
            },
        )

    def __enter__(self) -> ExhaustClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.http.request(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            raise ClientError("SERVER_ERROR", response.text[:200], response.status_code) from None
        if response.status_code >= 400 or body.get("responseCode") not in ("OK", "SUCCESS"):
            params = body.get("params") or {}
            raise ClientError(
                str(body.get("responseCode")), str(params.get("errmsg")), response.status_code
            )
        result: dict[str, Any] = body["result"]
        return result

    def submit(
        self,
        dataset: str,
        tag: str,
        config: dict[str, Any],
        *,
        output_format: str = "csv",
        requested_by: str | None = None,
        encryption_key: str | None = None,
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "tag": tag,
            "dataset": dataset,
            "datasetConfig": config,
            "output_format": output_format,
        }
        if requested_by:
            request["requestedBy"] = requested_by
        if encryption_key:
            request["encryptionKey"] = encryption_key
        body = {
            "id": "ekstep.analytics.dataset.request.submit",
            "ver": "1.0",
            "params": {},
            "request": request,
        }
        return self._call("POST", "/dataset/v1/request/submit", json=body)

    def read(self, tag: str, request_id: str) -> dict[str, Any]:
        return self._call(
            "GET", f"/dataset/v1/request/read/{tag}", params={"requestId": request_id}
        )

    def list_jobs(self, tag: str, limit: int = 100) -> list[dict[str, Any]]:
        result = self._call("GET", f"/dataset/v1/request/list/{tag}", params={"limit": limit})
        jobs: list[dict[str, Any]] = result["jobs"]
        return jobs

    def stop(self, tag: str, request_id: str) -> dict[str, Any]:
        return self._call(
            "POST", f"/dataset/v1/request/stop/{tag}", params={"requestId": request_id}
        )

    def wait(
        self,
        tag: str,
        request_id: str,
        *,
        timeout: float = 600.0,
        on_poll: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job finishes (back-off 0.2 s to 5 s); TimeoutError after ``timeout``."""
        deadline, delay = time.monotonic() + timeout, 0.2
        while True:
            job = self.read(tag, request_id)
            if on_poll is not None:
                on_poll(job)
            if job["status"] in FINISHED:
                return job
            if time.monotonic() + delay > deadline:
                raise TimeoutError(f"job {request_id} still {job['status']} after {timeout:.0f} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)

    def download(
        self,
        url: str,
        dest: Path,
        *,
        sha256: str | None = None,
        on_chunk: Callable[[int], None] | None = None,
    ) -> Path:
        """Stream ``url`` into ``dest`` atomically (through ``dest.part``), checking the sha256.

        With a ``sha256`` to check against, a ``.part`` left by an interrupted download is
        resumed with ``Range``; a server that answers the whole file (200) or cannot serve the
        range (416) is read again from the start. A mismatch deletes the partial file and
        raises ClientError ``CHECKSUM_MISMATCH``.
        """
        tmp = dest.with_name(dest.name + ".part")
        digest, offset = hashlib.sha256(), 0
        if sha256 and tmp.exists():
            offset = _hash_file(tmp, digest)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with httpx.stream("GET", url, headers=headers, timeout=self.http.timeout) as response:
            if response.status_code == 416 and offset:  # the part is not a prefix: restart
                tmp.unlink()
                return self.download(url, dest, sha256=sha256, on_chunk=on_chunk)
            if response.status_code not in (200, 206):
                response.read()
                raise ClientError("DOWNLOAD_FAILED", response.text[:200], response.status_code)
            if response.status_code == 200:  # the whole file, whatever was asked
                digest = hashlib.sha256()
            elif on_chunk is not None:
                on_chunk(offset)
            _append(response, tmp, digest, on_chunk)
        if sha256 and digest.hexdigest() != sha256:
            tmp.unlink()
            raise ClientError("CHECKSUM_MISMATCH", f"{dest.name}: sha256 differs", 200)
        tmp.replace(dest)
        return dest


def _hash_file(path: Path, digest: Any) -> int:
    """Feed ``path`` into ``digest``; its size."""
    size = 0
    with path.open("rb") as existing:
        while chunk := existing.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size


def _append(
    response: httpx.Response, tmp: Path, digest: Any, on_chunk: Callable[[int], None] | None
) -> None:
    with tmp.open("ab" if response.status_code == 206 else "wb") as out:
        for chunk in response.iter_bytes():
            out.write(chunk)
            digest.update(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
