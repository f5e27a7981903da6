"""``GET|HEAD /download/<key>?expires=&signature=``: serve a blob through a signed link (api.md §8).

Design decisions:

* No API key: the HMAC signature is the authorisation. Every way a link can be wrong (missing or
  non-integer ``expires``, missing signature, a key that is not a valid blob key, a changed key,
  expiry or signature) answers the same 403 ``"invalid signature"`` and is checked before the
  store is touched, so a forged link learns nothing, not even whether a blob exists. Only a
  genuine link past its expiry gets ``"link expired"``; a genuine link whose blob was purged
  gets 404 with a hint to submit the request again.
* ``expires`` and ``signature`` are declared as optional strings and parsed here: FastAPI's own
  validation would answer 422, which the spec forbids for this route.
* Ranges (RFC 9110 §14): one ``bytes=`` range (``a-b``, ``a-``, ``-n``) gives 206; an
  unsatisfiable one gives 416 with ``Content-Range: bytes */size``; a malformed or multi-range
  header is ignored (200), which the RFC allows. ``If-Range`` must match the strong ETag (or the
  exact ``Last-Modified``) for the range to apply. ``If-None-Match`` (or, without it,
  ``If-Modified-Since``) gives 304.
* The body is a :class:`StreamingResponse` over :meth:`BlobStore.read` (64 KiB chunks, read in
  the thread pool). The first chunk is read before the response starts so that a blob purged
  between ``stat`` and ``read`` is still a clean 404.
* ``Cache-Control: private, no-store``: result files may hold personal data; shared caches and
  disks must not keep them. ``X-Content-Type-Options: nosniff`` stops browsers guessing types.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from data_exhaust.api.deps import ServicesDep
from data_exhaust.api.errors import ApiError
from data_exhaust.audit import Download, now, request_id_of
from data_exhaust.services import Services
from data_exhaust.signing import INVALID_SIGNATURE, LinkError
from data_exhaust.storage import BlobInfo, BlobStore, validate_key

router = APIRouter(tags=["files"])

PURGED = (
    "file not found; it may have been purged after the retention period — submit the request again"
)
CONTENT_TYPES = {
    ".csv": "text/csv; charset=utf-8",
    ".gz": "application/gzip",
    ".jsonl": "application/x-ndjson",
    ".parquet": "application/vnd.apache.parquet",
    ".zip": "application/zip",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"
_EXPIRES = re.compile(r"[0-9]{1,15}")
_RANGE = re.compile(r"\s*bytes\s*=\s*([0-9]{0,19})\s*-\s*([0-9]{0,19})\s*", re.IGNORECASE)

ExpiresParam = Annotated[
    str | None, Query(description="Expiry of the link, epoch seconds (signed).")
]
SignatureParam = Annotated[str | None, Query(description="Hex HMAC-SHA256 of the key and expiry.")]
ByParam = Annotated[str | None, Query(description="Id of the API key the link was issued to.")]


def _audit(services: Services, request: Request, key: str, by: str | None, status: int) -> None:
    """Record the download (who, which request, which file, when, from where)."""
    request_id = request_id_of(key)
    channel = None
    if request_id is not None:
        job = services.jobs.find(request_id)
        channel = job.channel if job else None
    address = request.client.host if request.client else None
    services.audit.record(
        Download(
            request_id, key, by, channel, address, request.headers.get("user-agent"), status, now()
        )
    )


class RangeNotSatisfiable(Exception):
    """The ``Range`` asks for bytes the blob does not have (answered 416)."""


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The ``[start, end)`` a single ``bytes=`` range asks for; None to ignore the header.

    Raises :class:`RangeNotSatisfiable` when the range is well formed but selects no byte.
    """
    match = _RANGE.fullmatch(header)
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - suffix), size
    start = int(first)
    if last and int(last) < start:
        return None  # invalid syntax (RFC 9110 §14.1.1): ignored like any malformed range
    if start >= size:
        raise RangeNotSatisfiable
    return start, size if not last else min(int(last) + 1, size)


def http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def content_type(key: str) -> str:
    name = key.rpartition("/")[2].lower()
    suffix = name[name.rfind(".") :] if "." in name else ""
    return CONTENT_TYPES.get(suffix, DEFAULT_CONTENT_TYPE)


def content_disposition(key: str) -> str:
    """``attachment`` with an ASCII ``filename`` and, when needed, an RFC 5987 ``filename*``."""
    name = key.rpartition("/")[2]
    fallback = "".join(ch if " " <= ch <= "~" and ch not in '"\\%' else "_" for ch in name)
    value = f'attachment; filename="{fallback}"'
    if fallback != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value


def _authorise(
    blobs: BlobStore, key: str, expires: str | None, signature: str | None, by: str | None
) -> None:
    if expires is None or signature is None or not _EXPIRES.fullmatch(expires):
        raise ApiError("FORBIDDEN", INVALID_SIGNATURE)
    try:
        validate_key(key)
        blobs.verify_link(key, int(expires), signature, by=by or "")
    except ValueError:
        raise ApiError("FORBIDDEN", INVALID_SIGNATURE) from None
    except LinkError as exc:
        raise ApiError("FORBIDDEN", exc.message) from None


def _validators(info: BlobInfo) -> dict[str, str]:
    return {
        "ETag": info.etag,
        "Last-Modified": http_date(info.modified),
        "Cache-Control": "private, no-store",
    }


def _not_modified(headers: Mapping[str, str], info: BlobInfo) -> bool:
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        tags = [tag.strip() for tag in if_none_match.split(",")]
        return "*" in tags or any(tag.removeprefix("W/") == info.etag for tag in tags)
    if_modified_since = headers.get("if-modified-since")
    if if_modified_since is None:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError):
        return False
    since = since if since.tzinfo else since.replace(tzinfo=UTC)
    return info.modified.replace(microsecond=0) <= since


def _range_applies(headers: Mapping[str, str], info: BlobInfo) -> bool:
    """``If-Range``: the range is served only while the client's copy is current."""
    if_range = headers.get("if-range")
    if if_range is None:
        return True
    if_range = if_range.strip()
    if if_range.startswith(('"', "W/")):
        return if_range == info.etag  # strong comparison: a weak tag never matches
    return if_range == http_date(info.modified)


def _requested_range(headers: Mapping[str, str], info: BlobInfo) -> tuple[int, int] | None:
    """The ``[start, end)`` to send as a 206, or None for the whole blob."""
    range_header = headers.get("range")
    if range_header is None or not _range_applies(headers, info):
        return None
    return parse_range(range_header, info.size)


def _body(blobs: BlobStore, key: str, start: int, end: int) -> Iterator[bytes]:
    """The byte stream, its first chunk already read (a vanished blob is a 404 here)."""
    chunks = blobs.read(key, start, end)
    try:
        first = next(chunks, b"")
    except FileNotFoundError:
        raise ApiError("RESOURCE_NOT_FOUND", PURGED) from None
    return itertools.chain([first], chunks)


def download(
    key: str,
    request: Request,
    services: ServicesDep,
    expires: ExpiresParam = None,
    signature: SignatureParam = None,
    by: ByParam = None,
) -> Response:
    """Serve a result file through a signed, expiring link. No API key: the signature is it."""
    blobs = services.blobs
    _authorise(blobs, key, expires, signature, by)
    info = blobs.stat(key)
    if info is None:
        raise ApiError("RESOURCE_NOT_FOUND", PURGED)
    headers = _validators(info)
    if _not_modified(request.headers, info):
        return Response(status_code=304, headers=headers)
    headers["Accept-Ranges"] = "bytes"
    try:
        selected = _requested_range(request.headers, info)
    except RangeNotSatisfiable:
        headers["Content-Range"] = f"bytes */{info.size}"
        return Response(status_code=416, headers=headers)
    start, end = selected or (0, info.size)
    if selected:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
    status = 206 if selected else 200
    headers |= {
        "Content-Length": str(end - start),
        "Content-Type": content_type(key),
        "Content-Disposition": content_disposition(key),
        "X-Content-Type-Options": "nosniff",
    }
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    _audit(services, request, key, by, status)
    return StreamingResponse(_body(blobs, key, start, end), status_code=status, headers=headers)


_RESPONSES: dict[int | str, dict[str, str]] = {
    206: {"description": "The requested byte range (`Range: bytes=…`)."},
    304: {"description": "`If-None-Match` / `If-Modified-Since`: the client's copy is current."},
    403: {"description": "`invalid signature` or `link expired`."},
    404: {"description": "The file was purged after the retention period."},
    416: {"description": "The range selects no byte; `Content-Range: bytes */<size>`."},
}
# Two routes, not one with two methods: FastAPI derives one operation id per route from its
# first method, so GET+HEAD on one route would publish a duplicate operation id.
router.add_api_route(
    "/download/{key:path}",
    download,
    methods=["GET"],
    name="download",
    summary="Download a result file (signed link)",
    response_class=StreamingResponse,
    responses=_RESPONSES,
)
router.add_api_route(
    "/download/{key:path}",
    download,
    methods=["HEAD"],
    name="download_head",
    summary="Headers of a result file (signed link)",
    response_class=StreamingResponse,
    responses=_RESPONSES,
)
