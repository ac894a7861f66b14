"""COSE_Mac0 (RFC 9052 §6.2) with HMAC 256/256 and the MQTT topic as external AAD (SPEC §2)."""
from __future__ import annotations

import functools
import hmac as _hmac

import cbor2
from cryptography.hazmat.primitives import constant_time

from .cbor import ENVELOPE_TAG, MAX_MESSAGE, Tag, decode, encode
from .errors import ProtocolError

ALG_HMAC_256_256 = 5
HEADER_ALG = 1
HEADER_KID = 4
MAC_LEN = 32
KEY_LEN = 32


def _kid_bytes(kid: bytes | str) -> bytes:
    return kid.encode("utf-8") if isinstance(kid, str) else bytes(kid)


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LEN:
        raise ValueError("a device key is 32 bytes")
    return bytes(key)


def protected_header(kid: bytes | str) -> bytes:
    """The encoded protected header ``{1: 5, 4: kid}``."""
    return _protected(_kid_bytes(kid))


@functools.lru_cache(maxsize=4096)
def _protected(kid: bytes) -> bytes:  # one per key, made once
    return encode({HEADER_ALG: ALG_HMAC_256_256, HEADER_KID: kid})


@functools.lru_cache(maxsize=4096)
def _header(protected: bytes) -> dict:
    """The protected header's map, strictly decoded: the same few bytes per device come again and
    again (a refusal raises and is not cached). Read-only for its callers."""
    return decode(protected)


def mac_structure(protected: bytes, topic: str, payload: bytes) -> bytes:
    """``["MAC0", protected, external_aad, payload]``, deterministic CBOR (text and byte strings
    only: cbor2's plain encoding is the deterministic one)."""
    return cbor2.dumps(["MAC0", bytes(protected), topic.encode("utf-8"), bytes(payload)])


def compute_tag(key: bytes, protected: bytes, topic: str, payload: bytes) -> bytes:
    # the standard library's one-shot HMAC (OpenSSL): no object per message
    return _hmac.digest(_check_key(key), mac_structure(protected, topic, payload), "sha256")


def build_mac0(key: bytes, kid: bytes | str, topic: str, payload: bytes) -> bytes:
    """Wrap encoded payload bytes in a tagged COSE_Mac0 bound to ``topic``."""
    protected = protected_header(kid)
    payload = bytes(payload)
    tag = compute_tag(key, protected, topic, payload)
    message = cbor2.dumps(cbor2.CBORTag(ENVELOPE_TAG, [protected, {}, payload, tag]))
    if len(message) > MAX_MESSAGE:
        raise ProtocolError("too_large", f"message of {len(message)} bytes")
    return message


@functools.lru_cache(maxsize=4096)
def _prefix(kid: bytes) -> bytes:
    """d1 84 | bstr(protected) | a0: how every canonical envelope for this kid begins."""
    return b"\xd1\x84" + cbor2.dumps(_protected(kid)) + b"\xa0"


def _canonical_parts(kid: bytes, data: bytes) -> tuple[bytes, bytes] | None:
    """(payload, tag) when `data` is byte for byte the envelope a canonical sender writes for `kid`
    (a 32-byte tag last): then every check before the MAC holds, as the full decode would find.
    None for anything else, which the full decode judges for its exact error."""
    pre = _prefix(kid)
    n = len(pre)
    if len(data) < n + 35 or not data.startswith(pre):
        return None
    ib = data[n]
    if 0x40 <= ib < 0x58:
        start, size = n + 1, ib - 0x40
    elif ib == 0x58 and data[n + 1] >= 24:
        start, size = n + 2, data[n + 1]
    elif ib == 0x59 and data[n + 1]:
        start, size = n + 3, data[n + 1] << 8 | data[n + 2]
    else:
        return None
    end = start + size
    if len(data) != end + 34 or data[end] != 0x58 or data[end + 1] != 0x20:
        return None
    return data[start:end], data[end + 2:]


def verify_mac0(key: bytes, kid: bytes | str, topic: str, data: bytes) -> bytes:
    """Check a COSE_Mac0 in SPEC §7 order and return its payload bytes (not yet decoded)."""
    key = _check_key(key)
    if type(data) is bytes and len(data) <= MAX_MESSAGE:  # else the decode below says what is wrong
        kb = _kid_bytes(kid)
        parts = _canonical_parts(kb, data)
        if parts is not None:  # the common case: a well-formed envelope for this kid, judged at the MAC
            payload, tag = parts
            if not constant_time.bytes_eq(compute_tag(key, _protected(kb), topic, payload), tag):
                raise ProtocolError("bad_mac", "tag does not verify")
            return payload
    envelope = decode(data, envelope=True)  # size bound, then §3 errors
    if not isinstance(envelope, Tag) or envelope.tag != ENVELOPE_TAG:
        raise ProtocolError("bad_tag", "outermost item is not tag 17")
    body = envelope.value
    if not (isinstance(body, list) and len(body) == 4 and isinstance(body[0], bytes)
            and isinstance(body[1], dict) and isinstance(body[2], bytes)
            and isinstance(body[3], bytes)):
        raise ProtocolError("bad_envelope", "not [bstr, map, bstr, bstr]")
    protected, unprotected, payload, tag = body
    if unprotected:
        raise ProtocolError("bad_envelope", "unprotected header not empty")
    if not protected:
        raise ProtocolError("bad_envelope", "empty protected header")
    header = _header(protected)  # §3 errors of the header's own encoding
    if not (isinstance(header, dict) and set(header) == {HEADER_ALG, HEADER_KID}
            and isinstance(header[HEADER_KID], bytes)):
        raise ProtocolError("bad_envelope", "protected header is not {1: alg, 4: kid}")
    alg = header[HEADER_ALG]
    if type(alg) is not int or alg != ALG_HMAC_256_256:
        raise ProtocolError("bad_alg", f"alg {alg!r}")
    if not constant_time.bytes_eq(header[HEADER_KID], _kid_bytes(kid)):
        raise ProtocolError("bad_kid", "unexpected kid")
    if len(tag) != MAC_LEN:
        raise ProtocolError("bad_mac", f"tag of {len(tag)} bytes")
    if not constant_time.bytes_eq(compute_tag(key, protected, topic, payload), tag):
        raise ProtocolError("bad_mac", "tag does not verify")
    return payload
