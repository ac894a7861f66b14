"""Release key lists (SPEC §10 "The release key list") on both codecs: firmware/release.py's
open_keys on the MicroPython VM and host_tools/protocol/keylist.py, on lists signed at test time
with keys made at test time (as the manifest cases of test_fw_release.py: no key in the
repository). Valid lists leave the same trust on both; every invalid one is refused with the same
reason; a list is a standard COSE_Sign1 (pycose verifies it, and one pycose signs is accepted)."""
from __future__ import annotations

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from host_tools.protocol import Tag, encode
from host_tools.protocol.keylist import KeyList, KeyListError, Trust, accept_keylist, kid_of, sign_keylist
from host_tools.protocol.manifest import key_id, sig_structure
from tests.test_fw_ed25519 import vm_run


def raw_pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@pytest.fixture(scope="module")
def keys():
    """a, b trusted (as provisioned), c and d not."""
    return [Ed25519PrivateKey.generate() for _ in range(4)]


def resign(key, payload: dict | list | bytes, protected: bytes | None = None) -> bytes:
    p = payload if isinstance(payload, bytes) else encode(payload)
    prot = protected if protected is not None else encode({1: -8, 4: key_id(key.public_key())})
    return encode(Tag(18, [prot, {}, p, key.sign(sig_structure(prot, p))]))


def host(raw: bytes, now: Trust) -> dict:
    try:
        t = accept_keylist(raw, now)
    except KeyListError as e:
        return {"error": e.code}
    return {"v": t.version, "keys": {k.hex(): v.hex() for k, v in t.keys.items()}, "revoked": [k.hex() for k in t.revoked]}


def run(cases: list[tuple[str, bytes, Trust, str | None]]) -> None:
    vm = vm_run([{"op": "keylist", "raw": raw.hex(), "version": now.version,
                  "trusted": {k.hex(): v.hex() for k, v in now.keys.items()}, "revoked": [k.hex() for k in now.revoked]}
                 for _, raw, now, _ in cases])
    bad = []
    for (name, raw, now, want), got in zip(cases, vm):
        got.pop("id")
        h = host(raw, now)
        ok = got == h and (("v" in got) if want is None else got == {"error": want})
        if not ok:
            bad.append(f"{name}: want {want}, VM {got}, host {h}")
    assert not bad, "\n".join(bad)


def test_lists_on_both_codecs(keys):
    a, b, c, d = keys
    ka, kb, kc = (kid_of(raw_pub(k)) for k in (a, b, c))
    now = Trust(0, {ka: raw_pub(a), kb: raw_pub(b)})
    kl = lambda v, ks, rev=(): KeyList(v, tuple(raw_pub(k) for k in ks), tuple(rev))  # noqa: E731
    good = sign_keylist(a, kl(1, (a, b, c)))
    tampered = bytearray(good)
    tampered[-1] ^= 1
    prot = encode({1: -8, 4: ka})
    wire = kl(1, (a, c)).to_wire()
    cases = [
        ("add c, signed by a", good, now, None),
        ("signed by b, revoking a", sign_keylist(b, kl(2, (b, c), (ka,))), now, None),
        ("four keys, sixteen revoked", sign_keylist(a, kl(9, (a, b, c, d), [bytes([i]) * 8 for i in range(16)])), now, None),
        ("a revoked key listed is not trusted", sign_keylist(b, kl(2, (a, b), (ka,))), now, None),
        ("a revocation stands", sign_keylist(b, kl(5, (b, c))), Trust(4, now.keys, (ka,)), None),
        ("self revoked", sign_keylist(a, kl(1, (b, c), (ka,))), now, "self_revoked"),
        ("stale: same version", sign_keylist(a, kl(3, (a, b))), Trust(3, now.keys), "stale_version"),
        ("stale: lower version", sign_keylist(a, kl(2, (a, b))), Trust(3, now.keys), "stale_version"),
        ("unknown key", sign_keylist(c, kl(1, (a, c))), now, "unknown_key"),
        ("already revoked signer", sign_keylist(a, kl(5, (a, b))), Trust(4, now.keys, (ka,)), "revoked_key"),
        ("tampered", bytes(tampered), now, "bad_signature"),
        ("tampered payload", encode(Tag(18, [prot, {}, encode({**wire, 2: 7}), cbor2.loads(good).value[3]])), now,
         "bad_signature"),
        ("bad alg", resign(a, wire, encode({1: -7, 4: ka})), now, "bad_alg"),
        ("leaves nothing", sign_keylist(a, kl(1, (b,), (kb,))), now, "empty"),
        ("revoked with the device's over 16", sign_keylist(b, kl(5, (b,), [bytes([i]) * 8 for i in range(16)])),
         Trust(4, now.keys, (ka,)), "bad_list"),
        ("a manifest is not a list", resign(a, {1: "sim-gate", 2: "gate"}), now, "bad_list"),
        ("wrong marker", resign(a, {**wire, 1: "key"}), now, "bad_list"),
        ("no keys", resign(a, {**wire, 3: []}), now, "bad_list"),
        ("five keys", resign(a, {**wire, 3: [raw_pub(k) for k in keys] + [b"\x01" * 32]}), now, "bad_list"),
        ("short key", resign(a, {**wire, 3: [b"\x01" * 31]}), now, "bad_list"),
        ("key twice", resign(a, {**wire, 3: [raw_pub(a), raw_pub(a)]}), now, "bad_list"),
        ("keys as a map", resign(a, {**wire, 3: {1: raw_pub(a)}}), now, "bad_list"),
        ("short revoked kid", resign(a, {**wire, 4: [b"1234567"]}), now, "bad_list"),
        ("17 revoked", resign(a, {**wire, 4: [bytes([i]) * 8 for i in range(17)]}), now, "bad_list"),
        ("version 0", resign(a, {**wire, 2: 0}), now, "bad_list"),
        ("version as bool", resign(a, {**wire, 2: True}), now, "bad_list"),
        ("unknown field", resign(a, {**wire, 5: 1}), now, "bad_list"),
        ("payload not CBOR", resign(a, b"\xff"), now, "bad_list"),
        ("not a Sign1", encode(Tag(17, cbor2.loads(good).value)), now, "bad_list"),
        ("trailing byte", good + b"\x00", now, "bad_list"),
        ("oversize", b"\x00" * 600, now, "bad_list"),
    ]
    assert kc not in now.keys
    run(cases)


def test_a_list_is_a_standard_cose_sign1(keys):
    from pycose.algorithms import EdDSA
    from pycose.headers import KID, Algorithm
    from pycose.keys import OKPKey
    from pycose.keys.curves import Ed25519
    from pycose.messages import Sign1Message
    a, b, c, _ = keys
    ka = kid_of(raw_pub(a))
    okp = OKPKey(crv=Ed25519, x=raw_pub(a), d=a.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
    kl = KeyList(1, (raw_pub(a), raw_pub(c)))
    tagged = cbor2.loads(sign_keylist(a, kl))
    assert tagged.tag == 18
    msg = Sign1Message.from_cose_obj([tagged.value[0], dict(tagged.value[1]), tagged.value[2], tagged.value[3]], True)
    msg.key = okp
    assert msg.verify_signature()
    theirs = Sign1Message(phdr={Algorithm: EdDSA, KID: ka}, payload=encode(kl.to_wire()), key=okp)
    raw = encode(Tag(18, cbor2.loads(theirs.encode(tag=False))))
    assert raw == sign_keylist(a, kl)  # Ed25519 is deterministic: the very same bytes
    now = Trust(0, {ka: raw_pub(a), kid_of(raw_pub(b)): raw_pub(b)})
    assert accept_keylist(raw, now).keys == {ka: raw_pub(a), kid_of(raw_pub(c)): raw_pub(c)}
