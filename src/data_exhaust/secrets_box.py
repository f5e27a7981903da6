"""Encryption at rest of small secrets: phone numbers, a job's zip password.

AES-256-GCM (authenticated) under keys derived with HKDF from the server secret, one key per
purpose. A sealed value is plain base64 of ``fingerprint(4) | nonce(12) | ciphertext+tag``;
the fingerprint names the derived key, so values sealed under an older server secret still
open while that secret is listed in ``EXHAUST_PREVIOUS_SECRET_KEYS``. Rotation: make the old
secret "previous", set a new ``EXHAUST_SECRET_KEY``, run ``exhaust registry rotate-key`` (it
re-seals every stored value under the new key), then drop the previous secret.

``cryptography`` is imported when a value is first sealed or opened, not when the server
starts (here and in :mod:`data_exhaust.uci`): it was 8.7 MB of an idle server's 171 MB (7 MB
of it the pages of its Rust library), which every export's peak carried without using it
(bench/README.md, memory).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence

JOB_SECRETS = b"job-secrets"
PHONES = b"device-phone"


class SealError(ValueError):
    """A sealed value cannot be opened (tampered, or sealed under an unknown secret)."""


def _derive(secret: bytes, purpose: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret)


def _fingerprint(key: bytes) -> bytes:
    return hashlib.sha256(b"fingerprint" + key).digest()[:4]


class SecretBox:
    """Seals with the current server secret; opens with the current or a previous one."""

    def __init__(self, current: bytes, previous: Sequence[bytes] = ()) -> None:
        self._current = current
        self._secrets = [current, *previous]

    def _keys(self, purpose: bytes) -> dict[bytes, bytes]:
        derived = [_derive(secret, purpose) for secret in self._secrets]
        return {_fingerprint(key): key for key in reversed(derived)}

    def seal(self, plaintext: str, purpose: bytes) -> str:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key = _derive(self._current, purpose)
        nonce = os.urandom(12)
        sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), purpose)
        return base64.b64encode(_fingerprint(key) + nonce + sealed).decode()

    def unseal(self, token: str, purpose: bytes) -> str:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            raw = base64.b64decode(token, validate=True)
        except (binascii.Error, ValueError):
            raise SealError("sealed value is not base64") from None
        key = self._keys(purpose).get(raw[:4])
        if key is None or len(raw) < 4 + 12 + 16:
            raise SealError("sealed under a secret this server does not know; see key rotation")
        try:
            return AESGCM(key).decrypt(raw[4:16], raw[16:], purpose).decode()
        except InvalidTag:
            raise SealError("sealed value was altered") from None

    def is_current(self, token: str, purpose: bytes) -> bool:
        """Whether ``token`` is sealed under the current secret (rotation skips those)."""
        try:
            fingerprint = base64.b64decode(token, validate=True)[:4]
        except (binascii.Error, ValueError):
            return False
        return fingerprint == _fingerprint(_derive(self._current, purpose))
