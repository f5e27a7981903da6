"""Signed links: HMAC over key and expiry; the signature is checked before the expiry."""

from __future__ import annotations

import pytest

from data_exhaust.signing import LinkError, sign, verify

SECRET = b"test-secret"
KEY = "uci-response-exhaust/0123ABCD/responses.csv"
NOW = 1_800_000_000.0
EXPIRES = 1_800_000_600


def _refusal(key: str, expires: int, signature: str, now: float = NOW) -> str:
    with pytest.raises(LinkError) as info:
        verify(key, expires, signature, SECRET, now=now)
    return info.value.message


def test_round_trip() -> None:
    signature = sign(KEY, EXPIRES, SECRET)
    assert len(signature) == 64
    assert int(signature, 16) >= 0
    verify(KEY, EXPIRES, signature, SECRET, now=NOW)


def test_signature_is_deterministic_and_keyed() -> None:
    assert sign(KEY, EXPIRES, SECRET) == sign(KEY, EXPIRES, SECRET)
    assert sign(KEY, EXPIRES, SECRET) != sign(KEY, EXPIRES, b"other-secret")


@pytest.mark.parametrize(
    ("key", "expires", "tamper"),
    [
        (KEY + "x", EXPIRES, False),
        ("uci-response-exhaust/0123ABCD/other.csv", EXPIRES, False),
        (KEY, EXPIRES + 1, False),
        (KEY, EXPIRES, True),
    ],
    ids=["key-suffix", "other-key", "expiry", "signature"],
)
def test_any_change_is_an_invalid_signature(key: str, expires: int, tamper: bool) -> None:
    signature = sign(KEY, EXPIRES, SECRET)
    if tamper:
        signature = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    assert _refusal(key, expires, signature) == "invalid signature"


@pytest.mark.parametrize("signature", ["", "zz", "é" * 64, "A" * 64])
def test_garbage_signature_is_invalid(signature: str) -> None:
    assert _refusal(KEY, EXPIRES, signature) == "invalid signature"


def test_wrong_secret_is_invalid() -> None:
    signature = sign(KEY, EXPIRES, b"another-secret")
    assert _refusal(KEY, EXPIRES, signature) == "invalid signature"


def test_key_and_expiry_cannot_be_shifted_into_each_other() -> None:
    # A plain concatenation would sign "a12" for both pairs; the separator keeps them apart.
    assert sign("a1", 2, SECRET) != sign("a", 12, SECRET)
    assert sign("a/1", 2, SECRET) != sign("a/", 12, SECRET)


def test_expired_link() -> None:
    signature = sign(KEY, EXPIRES, SECRET)
    assert _refusal(KEY, EXPIRES, signature, now=EXPIRES + 1) == "link expired"
    assert _refusal(KEY, EXPIRES, signature, now=EXPIRES) == "link expired"
    verify(KEY, EXPIRES, signature, SECRET, now=EXPIRES - 0.5)


def test_expiry_in_the_past_without_explicit_now() -> None:
    signature = sign(KEY, 1_000, SECRET)
    assert _refusal(KEY, 1_000, signature, now=NOW) == "link expired"
    with pytest.raises(LinkError, match="link expired"):
        verify(KEY, 1_000, signature, SECRET)


def test_expired_and_tampered_is_an_invalid_signature() -> None:
    past = 1_000
    signature = sign(KEY, past, SECRET)
    assert _refusal(KEY, past + 1, signature) == "invalid signature"
    assert _refusal(KEY + "x", past, signature) == "invalid signature"
    # Pushing an expired link's expiry into the future does not revive it.
    assert _refusal(KEY, EXPIRES, signature) == "invalid signature"


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        sign(KEY, EXPIRES, b"")
