"""Sealing small secrets (a job's zip password) with AES-256-GCM under the server secret.

The key is derived from ``EXHAUST_SECRET_KEY`` with HKDF, so rotating that secret makes sealed
values unreadable: jobs holding them fail with a message asking to resubmit.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = b"v1"


class SealError(ValueError):
    """A sealed value cannot be opened (tampered, or sealed under another secret)."""


def _key(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret)


def seal(secret: bytes, plaintext: str, purpose: bytes = b"job-secrets") -> str:
    nonce = os.urandom(12)
    sealed = AESGCM(_key(secret, purpose)).encrypt(nonce, plaintext.encode(), VERSION)
    return (VERSION + b"." + base64.urlsafe_b64encode(nonce + sealed)).decode()


def unseal(secret: bytes, token: str, purpose: bytes = b"job-secrets") -> str:
    version, _, payload = token.encode().partition(b".")
    if version != VERSION:
        raise SealError("unknown sealed-value version")
    raw = base64.urlsafe_b64decode(payload)
    try:
        plain = AESGCM(_key(secret, purpose)).decrypt(raw[:12], raw[12:], VERSION)
    except InvalidTag:
        raise SealError("sealed value cannot be opened with this server secret") from None
    return plain.decode()
