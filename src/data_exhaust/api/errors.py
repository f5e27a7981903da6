"""API errors: every failure answers the api.md envelope with a response code and a message."""

from __future__ import annotations

HTTP_STATUS = {
    "OK": 200,
    "CLIENT_ERROR": 400,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "RESOURCE_NOT_FOUND": 404,
    "CONFLICT": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "TOO_MANY_REQUESTS": 429,
    "SERVER_ERROR": 500,
    "SERVICE_UNAVAILABLE": 503,
}


class ApiError(Exception):
    """Raised anywhere in a route; answered with ``responseCode`` and ``params.errmsg``."""

    def __init__(self, code: str, message: str) -> None:
        if code not in HTTP_STATUS:
            raise ValueError(f"unknown response code {code}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]


def client_error(message: str) -> ApiError:
    return ApiError("CLIENT_ERROR", message)
