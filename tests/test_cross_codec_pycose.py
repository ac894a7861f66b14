"""Cross-implementation tests of the firmware codec (firmware/, on the MicroPython VM) against
pycose: pycose verifies VM-built COSE_Mac0 messages, the VM verifies pycose-built ones (and seals
the same fields to the very same bytes), and both codecs refuse pycose's non-conforming variants
alike. The VM and the message strategies are in tests/crosscodeckit.py (as for
tests/test_cross_codec.py).

Deterministic (derandomize=True, no example database). EDGEPAY_CROSS_N sets the number of cases
per property (default 300).
"""
from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, note

from tests.crosscodeckit import (
    KEY, KID, VM, Case, J, cases, cross_settings, device_seals, expected, host_open, show, tally,
    vm_open, vm_seal,
)
from tests.crosscodeckit import cross_vm  # noqa: F401 (the module-scoped `vm` fixture)
from tests.test_fw_codec import enc  # hand-written deterministic encoder (neither codec)


# --- pycose interop for the firmware codec -----------------------------------------------------

pycose = pytest.importorskip("pycose")
from pycose.algorithms import HMAC256  # noqa: E402
from pycose.headers import KID as KID_HEADER  # noqa: E402
from pycose.headers import Algorithm  # noqa: E402
from pycose.keys import SymmetricKey  # noqa: E402
from pycose.messages import Mac0Message  # noqa: E402


def pycose_decode(data: bytes) -> Mac0Message:
    """pycose 1.1 + cbor2 6: cbor2 decodes a tag's content immutably (tuple, frozendict), which
    pycose's decode() refuses; take the tag off here and hand pycose a plain array (as in
    tests/test_host_codec_pycose.py)."""
    tagged = cbor2.loads(data)
    assert tagged.tag == 17
    protected, unprotected, payload, tag = tagged.value
    return Mac0Message.from_cose_obj([protected, dict(unprotected), payload, tag], True)


def pycose_build(c: Case, payload: bytes, tag: bool = True, kid_in_unprotected: bool = False,
                 aad: str | None = None) -> bytes:
    kid = c.kid.encode()
    # {1: 5, 4: kid}: inserted in ascending key order, which for these two small keys is the
    # bytewise order of their encodings, so pycose's cbor2.dumps writes the deterministic header
    phdr = {Algorithm: HMAC256} if kid_in_unprotected else {Algorithm: HMAC256, KID_HEADER: kid}
    uhdr = {KID_HEADER: kid} if kid_in_unprotected else {}
    m = Mac0Message(phdr=phdr, uhdr=uhdr, payload=payload,
                    external_aad=(aad or c.topic).encode())
    m.key = SymmetricKey(k=c.key)
    if not kid_in_unprotected:
        assert m.phdr_encoded == b"\xa2\x01\x05\x04" + enc(kid)
    return m.encode(tag=tag)


@cross_settings()
@given(c=cases())
def test_pycose_verifies_vm_messages(vm: VM, c: Case) -> None:
    show(c)
    r = vm_seal(vm, c)
    if not device_seals(c):  # a chunk's data over 512 bytes: the device opens it, never sends one
        assert r == {"error": "too_large"}, r
        return
    assert set(r) == {"hex"}, r
    data = bytes.fromhex(r["hex"])
    m = pycose_decode(data)
    m.key = SymmetricKey(k=c.key)
    m.external_aad = c.topic.encode()
    assert m.verify_tag()
    assert m.phdr == {Algorithm: HMAC256, KID_HEADER: c.kid.encode()} and m.uhdr == {}
    assert m.payload == enc(c.wire)
    m.external_aad = (c.topic + "x").encode()
    assert not m.verify_tag()
    tally("pycose_verifies_vm", c.name)


@cross_settings()
@given(c=cases())
def test_vm_verifies_pycose_messages(vm: VM, c: Case) -> None:
    show(c)
    data = pycose_build(c, enc(c.wire))
    note(f"pycose hex={data.hex()}")
    assert J(vm_open(vm, c.key, c.kid, c.topic, data)) == J({"decoded": expected(c)})
    # the same deterministic bytes (a chunk over 512 bytes of data: the device never sends one)
    assert vm_seal(vm, c) == ({"hex": data.hex()} if device_seals(c) else {"error": "too_large"})
    tally("vm_verifies_pycose", c.name)


def test_vm_refuses_pycose_variants(vm: VM) -> None:
    c = Case("heartbeat", {}, {0: 3, 8: 42, 10: 3600, 11: 81234, 12: 0, 13: -67, 14: 1},
             "gate-001", KEY, KID, "v1/dev/gate-001/up/hb")
    payload = enc(c.wire)
    good = pycose_build(c, payload)
    assert set(vm_open(vm, KEY, KID, c.topic, good)) == {"decoded"}
    for data, code in (
            (pycose_build(c, payload, aad="v1/dev/gate-001/up/evt"), "bad_mac"),
            (pycose_build(c, payload, kid_in_unprotected=True), "bad_envelope"),
            (pycose_build(c, payload, tag=False), "bad_tag"),
    ):
        assert vm_open(vm, KEY, KID, c.topic, data) == {"error": code}
        assert host_open(KEY, KID, c.topic, data) == {"error": code}
    # a header map pycose writes in insertion order {4: kid, 1: 5}: not deterministic
    m = Mac0Message(phdr={KID_HEADER: KID.encode(), Algorithm: HMAC256}, uhdr={},
                    payload=payload, external_aad=c.topic.encode())
    m.key = SymmetricKey(k=KEY)
    data = m.encode(tag=True)
    assert m.phdr_encoded[:2] == b"\xa2\x04"
    assert vm_open(vm, KEY, KID, c.topic, data) == {"error": "non_canonical"}
    assert host_open(KEY, KID, c.topic, data) == {"error": "non_canonical"}
