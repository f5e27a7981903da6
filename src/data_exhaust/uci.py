"""UCI's encrypted device ids: read once at import, then forgotten.

Format (UCI's choice, not ours; we only read it):

- cipher: AES in ECB mode (Java's ``AES/ECB/PKCS5Padding``), PKCS#7 padding to 16-byte blocks
  (Java calls it PKCS#5 for AES);
- key: the UTF-8 bytes of ``EXHAUST_UCI_SECRET``, which must be exactly 16, 24 or 32 bytes
  (AES-128, AES-192 or AES-256); no key derivation, no IV;
- text: the base64 of the ciphertext (standard alphabet with ``=`` padding as UCI writes it;
  the URL-safe alphabet ``-_``, missing padding and surrounding spaces are accepted too);
- plaintext: UTF-8; for phone users it is the phone number, optionally after one label such as
  ``phone:``, ``tel:`` or ``whatsapp:`` (letters, digits, ``+._-``, at most 20 characters,
  then ``:``), which is dropped. What remains must be a phone number as
  :func:`data_exhaust.registry.normalise_phone` accepts it (6 to 15 digits, optional ``+``,
  spaces, dashes, dots and brackets ignored). Anything else is rejected.

ECB is deterministic and leaks equal plaintext blocks; that is why the registry never stores
UCI's value: the phone is re-sealed at once with our authenticated cipher
(:mod:`data_exhaust.secrets_box`). :func:`encrypt` exists only to make test fixtures and
documented examples. Error messages never contain the ciphertext or the decrypted text.
"""

from __future__ import annotations

import base64
import binascii
import re

from data_exhaust.registry import normalise_phone

KEY_SIZES = (16, 24, 32)
LABEL = re.compile(r"[A-Za-z][A-Za-z0-9+._-]{0,19}:")


class UciError(ValueError):
    """An encrypted device id that cannot be read (the message never echoes it)."""


def uci_key(secret: str | None) -> bytes:
    """The AES key from ``EXHAUST_UCI_SECRET``, or a :class:`UciError` saying what is wrong."""
    if not secret:
        raise UciError(
            "EXHAUST_UCI_SECRET is not set: it is UCI's AES key, needed to read "
            "encrypted_device_id (ask the UCI administrators for it)"
        )
    key = secret.encode()
    if len(key) not in KEY_SIZES:
        raise UciError(
            f"EXHAUST_UCI_SECRET must be 16, 24 or 32 bytes (AES-128/192/256) as UTF-8; "
            f"it is {len(key)} bytes"
        )
    return key


def encrypt(plaintext: str, key: bytes) -> str:
    """UCI's encoding of ``plaintext`` (for test fixtures and examples only)."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    padder = padding.PKCS7(128).padder()
    data = padder.update(plaintext.encode()) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - UCI's format
    return base64.b64encode(encryptor.update(data) + encryptor.finalize()).decode()


def decrypt(token: str, key: bytes) -> str:
    """The plaintext of a UCI encrypted id."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    text = token.strip().replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise UciError("encrypted_device_id is not base64") from None
    if not raw or len(raw) % 16:
        raise UciError("encrypted_device_id is not AES ciphertext (not whole 16-byte blocks)")
    decryptor = Cipher(algorithms.AES(key), modes.ECB()).decryptor()  # noqa: S305 - UCI's format
    unpadder = padding.PKCS7(128).unpadder()
    try:
        data = unpadder.update(decryptor.update(raw) + decryptor.finalize())
        return (data + unpadder.finalize()).decode()
    except (ValueError, UnicodeDecodeError):
        raise UciError(
            "encrypted_device_id does not decrypt with EXHAUST_UCI_SECRET "
            "(wrong secret, or not a UCI device id)"
        ) from None


def phone_of(token: str, key: bytes) -> str:
    """The normalised phone behind a UCI encrypted device id."""
    plain = decrypt(token, key).strip()
    label = LABEL.match(plain)
    if label:
        plain = plain[label.end() :].strip()
    try:
        return normalise_phone(plain)
    except ValueError:
        raise UciError(
            "encrypted_device_id does not decrypt to a phone number "
            "(6 to 15 digits, optionally after a '+' or a label such as 'phone:')"
        ) from None
