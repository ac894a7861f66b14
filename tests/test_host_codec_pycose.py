"""The host (cloud) codec against pycose (test-only): pycose verifies host-sealed messages and the
golden vectors, the host opens pycose-built messages (the same deterministic bytes) and refuses
pycose's non-conforming variants, and every payload-level invalid vector carries a valid MAC.
The vectors and helpers are in tests/hostcodeckit.py."""
from __future__ import annotations

import cbor2
import pytest

from host_tools.protocol import encode_payload, open_message, seal
from tests.hostcodeckit import HB, HB_TOPIC, KEY, KID, VECTORS, message_of, rejects


# --- interoperability with pycose (test-only) --------------------------------------------------

pycose = pytest.importorskip("pycose")
from pycose.algorithms import HMAC256  # noqa: E402
from pycose.headers import KID as KID_HEADER  # noqa: E402
from pycose.headers import Algorithm  # noqa: E402
from pycose.keys import SymmetricKey  # noqa: E402
from pycose.messages import Mac0Message  # noqa: E402


def _pycose_decode(data: bytes) -> Mac0Message:
    """pycose 1.1's CoseMessage.decode() does not work with cbor2 6: cbor2 6 decodes the content
    of a tag as a tuple, and pycose requires a list ("Bytes cannot be decoded as COSE
    message"), and a dict, not a frozendict, for the unprotected header. So the tag is taken
    off with cbor2 here and a plain array handed to pycose."""
    tagged = cbor2.loads(data)
    assert tagged.tag == 17
    protected, unprotected, payload, tag = tagged.value
    return Mac0Message.from_cose_obj([protected, dict(unprotected), payload, tag], True)


def test_pycose_verifies_host_messages() -> None:
    for vector in VECTORS:
        if "decoded" not in vector:
            continue
        key = bytes.fromhex(vector["key"])
        data = seal(key, vector["kid"], vector["topic"], message_of(vector["decoded"]))
        msg = _pycose_decode(data)
        msg.key = SymmetricKey(k=key)
        msg.external_aad = vector["topic"].encode()
        assert msg.verify_tag()
        assert msg.phdr[Algorithm] is HMAC256 and msg.phdr[KID_HEADER] == vector["kid"].encode()
        msg.external_aad = b"v1/dev/gate-001/up/other"
        assert not msg.verify_tag()


def test_pycose_verifies_golden_vectors() -> None:
    for vector in VECTORS:
        if "decoded" not in vector:
            continue
        msg = _pycose_decode(bytes.fromhex(vector["hex"]))
        msg.key = SymmetricKey(k=bytes.fromhex(vector["key"]))
        msg.external_aad = vector["topic"].encode()
        assert msg.verify_tag(), vector["name"]


def test_host_verifies_pycose_messages() -> None:
    payload = encode_payload(HB)
    msg = Mac0Message(phdr={Algorithm: HMAC256, KID_HEADER: KID.encode()}, uhdr={},
                      payload=payload, external_aad=HB_TOPIC.encode())
    msg.key = SymmetricKey(k=KEY)
    data = msg.encode(tag=True)
    assert data == seal(KEY, KID, HB_TOPIC, HB)  # same deterministic bytes
    assert open_message(KEY, KID, HB_TOPIC, data) == HB
    rejects("bad_mac", open_message, KEY, KID, "v1/dev/gate-001/up/evt", data)
    # pycose puts the kid where it is told; in the unprotected header we refuse it
    msg = Mac0Message(phdr={Algorithm: HMAC256}, uhdr={KID_HEADER: KID.encode()},
                      payload=payload, external_aad=HB_TOPIC.encode())
    msg.key = SymmetricKey(k=KEY)
    rejects("bad_envelope", open_message, KEY, KID, HB_TOPIC, msg.encode(tag=True))
    # untagged (pycose's tag=False) is bad_tag
    msg = Mac0Message(phdr={Algorithm: HMAC256, KID_HEADER: KID.encode()}, uhdr={},
                      payload=payload, external_aad=HB_TOPIC.encode())
    msg.key = SymmetricKey(k=KEY)
    rejects("bad_tag", open_message, KEY, KID, HB_TOPIC, msg.encode(tag=False))


def test_payload_defects_carry_a_valid_mac() -> None:
    """Independent check (pycose) that every payload-level invalid vector is correctly MACed,
    so its error is the payload's own and not bad_mac."""
    payload_level = [v for v in VECTORS if v["name"].startswith(("cbor_", "schema_"))]
    assert len(payload_level) >= 30
    for vector in payload_level:
        msg = _pycose_decode(bytes.fromhex(vector["hex"]))
        msg.key = SymmetricKey(k=bytes.fromhex(vector["key"]))
        msg.external_aad = vector["topic"].encode()
        assert msg.verify_tag(), vector["name"]
        assert msg.phdr[KID_HEADER] == vector["kid"].encode()
