"""Release manifests (host_tools/protocol/manifest.py, SPEC §10): signed and verified, standard
COSE_Sign1 both ways with pycose, every refusal reason, and the device's pre-install checks."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from host_tools.protocol import Tag, encode
from host_tools.protocol.manifest import (Manifest, ManifestError, key_id, sig_structure, sign_manifest,
                                          verify_manifest)

PAYLOAD = b"edgepay release payload" * 100


@pytest.fixture
def key():
    return Ed25519PrivateKey.generate()   # a test key, made when the test runs


def manifest(**kw) -> Manifest:
    base = dict(board="sim-gate", kind="gate", version="1.4.0", seq=7, size=len(PAYLOAD),
                sha256=hashlib.sha256(PAYLOAD).digest())
    return Manifest(**{**base, **kw})


def refuse(code, raw, trusted, revoked=frozenset()):
    with pytest.raises(ManifestError) as e:
        verify_manifest(raw, trusted, revoked)
    assert e.value.code == code, e.value
    return e.value


def test_round_trip_with_every_optional_field(key):
    m = manifest(window=(1_800_000_000, 1_800_086_400), from_version="1.2.0", allow_lower=True, chunk=512)
    raw = sign_manifest(key, m)
    assert len(raw) < 512
    assert verify_manifest(raw, {key_id(key.public_key()): key.public_key()}) == m
    assert verify_manifest(sign_manifest(key, manifest()), {key_id(key.public_key()): key.public_key()}) == manifest()


def test_it_is_a_standard_cose_sign1_both_ways(key):
    pycose = pytest.importorskip("pycose")  # noqa: F841
    from cryptography.hazmat.primitives.serialization import Encoding, PrivateFormat, PublicFormat, NoEncryption
    from pycose.algorithms import EdDSA
    from pycose.headers import KID, Algorithm
    from pycose.keys import OKPKey
    from pycose.keys.curves import Ed25519
    from pycose.messages import Sign1Message
    d = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    x = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    okp = OKPKey(crv=Ed25519, d=d, x=x)
    kid = key_id(key.public_key())
    # pycose verifies ours
    raw = sign_manifest(key, manifest())
    tagged = cbor2.loads(raw)
    assert tagged.tag == 18
    msg = Sign1Message.from_cose_obj([tagged.value[0], dict(tagged.value[1]), tagged.value[2], tagged.value[3]], True)
    msg.key = okp
    assert msg.verify_signature()
    # ours verifies pycose's (Ed25519 is deterministic: the very same bytes)
    theirs = Sign1Message(phdr={Algorithm: EdDSA, KID: kid}, payload=encode(manifest().to_wire()), key=okp)
    raw2 = encode(Tag(18, cbor2.loads(theirs.encode(tag=False))))
    assert verify_manifest(raw2, {kid: key.public_key()}) == manifest()


def test_every_refusal_has_its_reason(key):
    pub, kid = key.public_key(), key_id(key.public_key())
    trusted = {kid: pub}
    raw = sign_manifest(key, manifest())
    other = Ed25519PrivateKey.generate()
    refuse("unknown_key", sign_manifest(other, manifest()), trusted)
    refuse("revoked_key", raw, trusted, {kid})
    tagged = cbor2.loads(raw)
    prot, _, payload, sig = tagged.value
    forged = encode(manifest(seq=99).to_wire())
    refuse("bad_signature", encode(Tag(18, [prot, {}, forged, sig])), trusted)
    refuse("bad_signature", encode(Tag(18, [prot, {}, payload, sig[:-1] + bytes([sig[-1] ^ 1])])), trusted)
    refuse("bad_signature", encode(Tag(18, [prot, {}, payload, sig[:32]])), trusted)
    es256 = encode({1: -7, 4: kid})
    refuse("bad_alg", encode(Tag(18, [es256, {}, payload, other.sign(sig_structure(es256, payload))])), trusted)
    refuse("bad_manifest", encode(Tag(17, [prot, {}, payload, sig])), trusted)          # a Mac0, not a Sign1
    refuse("bad_manifest", encode(Tag(18, [prot, {1: -8}, payload, sig])), trusted)     # unprotected header
    refuse("bad_manifest", encode(Tag(18, [prot, {}, payload])), trusted)
    refuse("bad_manifest", raw + b"\x00", trusted)                                      # trailing byte
    refuse("bad_manifest", b"\x00" * 600, trusted)                                      # oversize
    # a well-signed payload that is not a valid manifest
    for bad in ({**manifest().to_wire(), 99: 1}, {k: v for k, v in manifest().to_wire().items() if k != 6},
                {**manifest().to_wire(), 6: b"short"}, {**manifest().to_wire(), 4: 0},
                {**manifest().to_wire(), 7: 100}, {**manifest().to_wire(), 9: "zip"},
                {**manifest().to_wire(), 10: [5, 5]}, {**manifest().to_wire(), 12: False}):
        p = encode(bad)
        e = refuse("bad_manifest", encode(Tag(18, [prot, {}, p, key.sign(sig_structure(prot, p))])), trusted)
        assert e.detail


def test_signing_refuses_an_invalid_manifest(key):
    for bad in (dict(seq=0), dict(size=0), dict(version=""), dict(sha256=b"x"), dict(format="tar"),
                dict(window=(5, 1)), dict(journal=0)):
        with pytest.raises(ManifestError, match="bad_manifest"):
            sign_manifest(key, manifest(**bad))


def test_the_devices_checks_before_install():
    m = manifest()
    m.check_for("sim-gate", "gate", installed_seq=6, slot_bytes=64 * 1024, journal=1)
    cases = [(dict(board="sim-rental"), "wrong_class"), (dict(installed_seq=7), "downgrade"),
             (dict(slot_bytes=100), "too_large"), (dict(journal=2), "journal_format")]
    for kw, code in cases:
        args = dict(board="sim-gate", kind="gate", installed_seq=6, slot_bytes=64 * 1024, journal=1, **{})
        args.update(kw)
        with pytest.raises(ManifestError) as e:
            m.check_for(**args)
        assert e.value.code == code
    # an emergency rollback is possible only through a manifest that says so
    low = dataclasses.replace(m, seq=3, allow_lower=True)
    low.check_for("sim-gate", "gate", installed_seq=6, slot_bytes=64 * 1024, journal=1)
    gated = dataclasses.replace(m, from_version="1.3.0")
    with pytest.raises(ManifestError, match="from_version"):
        gated.check_for("sim-gate", "gate", 6, 64 * 1024, 1, installed_version="1.2.9")
    gated.check_for("sim-gate", "gate", 6, 64 * 1024, 1, installed_version="1.10.0")


# ---- `edgepay release` -------------------------------------------------------------------------
def test_release_keygen_build_verify(tmp_path):
    import json

    from click.testing import CliRunner

    from host_tools.cli import cli
    from host_tools.release import unpack

    def edgepay(*args):
        r = CliRunner().invoke(cli, ["--json", *args], catch_exceptions=False)
        assert "Traceback" not in r.output
        return r
    keys = tmp_path / "keys"
    r = edgepay("release", "keygen", "--out", str(keys))
    assert r.exit_code == 0, r.output
    k = json.loads(r.stdout)
    assert (keys.stat().st_mode & 0o777) == 0o700 and (Path(k["private"]).stat().st_mode & 0o777) == 0o600
    # never inside a git work tree (this repository, for one)
    r = edgepay("release", "keygen", "--out", str(Path(__file__).parent / "keys-here"))
    assert r.exit_code == 1 and "git work tree" in r.stdout
    r = edgepay("release", "build", "--board", "sim-gate", "--version", "1.4.0", "--seq", "7",
                "--key", k["private"], "--out", str(tmp_path / "rel"))
    assert r.exit_code == 0, r.output
    b = json.loads(r.stdout)
    assert b["kid"] == k["kid"] and b["format"] == "bundle" and b["journal"] == 1 and b["manifest_bytes"] < 512
    files = unpack(Path(b["payload"]).read_bytes())
    assert "main.py" in files and "agent.mpy" in files and "apps/gate.mpy" in files and "apps/rental.mpy" not in files
    r = edgepay("release", "verify", b["manifest"], "--pub", k["public"], "--payload", b["payload"])
    assert r.exit_code == 0 and json.loads(r.stdout)["ok"], r.output
    r = edgepay("release", "verify", b["manifest"], "--pub", k["public"], "--revoked", k["kid"])
    assert r.exit_code == 1 and "revoked_key" in r.stdout
    other = tmp_path / "other"
    o2 = json.loads(edgepay("release", "keygen", "--out", str(other)).stdout)
    r = edgepay("release", "verify", b["manifest"], "--pub", o2["public"])
    assert r.exit_code == 1 and "unknown_key" in r.stdout
    tampered = tmp_path / "t.bin"
    tampered.write_bytes(Path(b["payload"]).read_bytes() + b"x")
    r = edgepay("release", "verify", b["manifest"], "--pub", k["public"], "--payload", str(tampered))
    assert r.exit_code == 1 and "digest_mismatch" in r.stdout
    r = edgepay("release", "build", "--board", "esp32-devkitc-gate", "--version", "1.4.0", "--seq", "7",
                "--key", k["private"], "--out", str(tmp_path / "rel"))
    assert r.exit_code == 1 and "OTA image" in r.stdout
    r = edgepay("release", "build", "--board", "sim-gate", "--version", "1.4.0", "--seq", "7",
                "--key", k["public"], "--out", str(tmp_path / "rel"))
    assert r.exit_code == 1 and "not a release key" in r.stdout
