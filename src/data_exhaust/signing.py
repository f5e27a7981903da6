"""Signed, expiring download links for the local blob store (api.md §8).

A link carries ``expires`` (epoch seconds) and ``signature`` = hex HMAC-SHA256, keyed with the
server secret, over ``f"{key}\\n{expires}"``. The expiry is the last field and an integer (it can
never contain a newline), so the message splits in exactly one way: no key/expiry pair can be
forged from another one's signature.

:func:`verify` checks the signature *before* the expiry: a link whose expiry was edited answers
"invalid signature", never "link expired", so a client learns nothing from tampering. The
comparison is constant-time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
import time

INVALID_SIGNATURE = "invalid signature"
LINK_EXPIRED = "link expired"


class LinkError(Exception):
    """A download link was refused; ``message`` is the sentence shown to the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _message(key: str, expires: int, by: str) -> bytes:
    # ``by`` (the API key id the link was issued to, for the audit log) is signed too, so it
    # cannot be changed to blame someone else; keys and expiries never contain a newline.
    tail = f"\n{by}" if by else ""
    return f"{key}\n{int(expires)}{tail}".encode()


def sign(key: str, expires: int, secret: bytes, by: str = "") -> str:
    """The hex HMAC-SHA256 of ``key``, ``expires`` (epoch s) and ``by`` under ``secret``."""
    if not secret:
        raise ValueError("the signing secret is empty")
    return hmac.new(secret, _message(key, expires, by), hashlib.sha256).hexdigest()


def verify(
    key: str, expires: int, signature: str, secret: bytes, now: float | None = None, by: str = ""
) -> None:
    """Return if the link is genuine and not expired, else raise :class:`LinkError`.

    The link stops working at ``expires``: it is expired when ``now >= expires``.
    """
    expected = sign(key, expires, secret, by)
    # compare_digest refuses non-ASCII str; such a signature cannot be ours anyway.
    if not signature.isascii() or not hmac.compare_digest(expected, signature):
        raise LinkError(INVALID_SIGNATURE)
    current = time.time() if now is None else now
    if current >= expires:
        raise LinkError(LINK_EXPIRED)
