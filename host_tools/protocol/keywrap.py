"""Device key rotation's key wrap, cloud side (SPEC §11): the next device key wrapped under the
current one with the AES Key Wrap of RFC 3394 (cryptography's aes_key_wrap), and the proof a
device returns that it holds the next key. Independent of firmware/ (they meet in
protocol/vectors/keywrap.json).

    wrapped = wrap(current_key, next_key)          # 40 bytes for a 256-bit key
    unwrap(current_key, wrapped) -> next_key       # KeyWrapError (code "unwrap") if it fails
    proof(next_key, "gate-001:2") -> 16 bytes      # HMAC-SHA256(key, b"edgepay-rekey:" + kid)[:16]
"""
from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

KEY_BYTES = 32
WRAPPED_BYTES = 40
PROOF_BYTES = 16
PROOF_LABEL = b"edgepay-rekey:"


class KeyWrapError(ValueError):
    """An unwrap that failed its integrity check, or a key or wrap of the wrong size."""

    code = "unwrap"

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__(f"unwrap: {detail}" if detail else "unwrap")


def _check_key(name: str, key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise KeyWrapError(f"{name} must be {KEY_BYTES} bytes")
    return bytes(key)


def wrap(kek: bytes, key: bytes) -> bytes:
    """``key`` (the next device key) wrapped under ``kek`` (the current one): 40 bytes."""
    return aes_key_wrap(_check_key("kek", kek), _check_key("key", key))


def unwrap(kek: bytes, wrapped: bytes) -> bytes:
    """The key inside ``wrapped``; KeyWrapError if it is not 40 bytes or fails the RFC 3394 check."""
    kek = _check_key("kek", kek)
    if not isinstance(wrapped, (bytes, bytearray)) or len(wrapped) != WRAPPED_BYTES:
        raise KeyWrapError(f"wrapped must be {WRAPPED_BYTES} bytes")
    try:
        return aes_key_unwrap(kek, bytes(wrapped))
    except InvalidUnwrap:
        raise KeyWrapError("integrity check failed (tampered, or wrapped under another key)") from None


def proof(key: bytes, kid: str) -> bytes:
    """The first 16 bytes of HMAC-SHA256(key, b"edgepay-rekey:" + kid): the device holds ``key``."""
    return hmac.new(bytes(key), PROOF_LABEL + kid.encode(), hashlib.sha256).digest()[:PROOF_BYTES]


def proof_matches(key: bytes, kid: str, got: object) -> bool:
    return isinstance(got, (bytes, bytearray)) and hmac.compare_digest(proof(key, kid), bytes(got))
