"""Release manifests and payloads on the device (firmware/release.py, SPEC §10) on the MicroPython
VM, against the host codec (host_tools/protocol/manifest.py, host_tools/release.py): manifests
signed at test time with keys made at test time verify on both, every refusal reason has its case
and both codecs refuse each invalid manifest with the same reason, and an EPB1 archive built by
the host reads back file by file on the VM (a flipped byte is digest_mismatch)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from host_tools.protocol import Tag, encode
from host_tools.protocol.manifest import Manifest, ManifestError, key_id, sig_structure, sign_manifest, verify_manifest
from host_tools.release import build_release, pack, unpack
from tests.test_fw_ed25519 import L, vm_run
from tests.vm import ROOT

PAYLOAD = b"edgepay release payload" * 100
DEVICE = dict(board="sim-gate", kind="gate", seq=6, slot=64 * 1024, journal=1)


def raw_pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@pytest.fixture(scope="module")
def keys():
    """Three release keys made when the tests run (none in the repository): a, b trusted, c not."""
    return [Ed25519PrivateKey.generate() for _ in range(3)]


def manifest(**kw) -> Manifest:
    base = dict(board="sim-gate", kind="gate", version="1.4.0", seq=7, size=len(PAYLOAD),
                sha256=hashlib.sha256(PAYLOAD).digest())
    return Manifest(**{**base, **kw})


def resign(key: Ed25519PrivateKey, protected: bytes, payload: bytes, unprotected=None) -> bytes:
    """A Sign1 over any protected header and payload bytes (what sign_manifest would refuse)."""
    return encode(Tag(18, [protected, {} if unprotected is None else unprotected, payload,
                           key.sign(sig_structure(protected, payload))]))


def fields(m: Manifest) -> dict:
    d = dataclasses.asdict(m)
    d["sha256"] = m.sha256.hex()
    d["window"] = list(m.window) if m.window else None
    return d


def host_outcome(raw: bytes, trusted: dict, revoked: set, device: dict | None) -> dict:
    try:
        m = verify_manifest(raw, trusted, revoked)
        if device is not None:
            m.check_for(device["board"], device["kind"], device["seq"], device["slot"], device["journal"],
                        device.get("version"))
    except ManifestError as e:
        return {"error": e.code}
    return {"fields": fields(m)}


class Cases:
    """Manifest cases run on the VM in one process, each also through the host codec."""

    def __init__(self, keys):
        self.keys = keys
        self.trusted = {key_id(k.public_key()): k.public_key() for k in keys[:2]}
        self.items: list[tuple[str, bytes, set, dict | None, str | None, bool]] = []

    def add(self, name, raw, want, revoked=frozenset(), device=DEVICE, host_checks=True):
        """want: an error code, or None for a manifest that verifies; host_checks=False where the
        host's check_for has no such rule (the install window: it needs the device's clock)."""
        self.items.append((name, raw, set(revoked), device, want, host_checks))

    def run(self, agree_only=False):
        """Each case's VM outcome against its want and the host's; agree_only: against the host's alone."""
        vm = vm_run([{"op": "manifest", "raw": raw.hex(), "revoked": [k.hex() for k in rev],
                      "trusted": {k.hex(): v.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
                                  for k, v in self.trusted.items()},
                      **({"device": dev} if dev is not None else {})}
                     for _, raw, rev, dev, _, _ in self.items])
        bad = []
        for (name, raw, rev, dev, want, host_checks), got in zip(self.items, vm):
            got.pop("id")
            host = host_outcome(raw, self.trusted, rev, dev if host_checks else None)
            if agree_only:
                ok = got == host
            elif want is None:
                ok = "fields" in got and got == host
            else:
                ok = got == {"error": want} and (host == {"error": want} or not host_checks)
            if not ok:
                bad.append(f"{name}: want {want}, VM {got}, host {host}")
        assert not bad, "\n".join(bad)


def test_manifests_verify_on_both_codecs(keys):
    a, b, _ = keys
    c = Cases(keys)
    c.add("plain", sign_manifest(a, manifest()), None)
    c.add("by the second trusted key", sign_manifest(b, manifest()), None)
    c.add("every optional field", sign_manifest(a, manifest(window=(1_800_000_000, 1_800_086_400), from_version="1.2.0",
                                                           allow_lower=True, chunk=512, format="image")),
          None, device={**DEVICE, "now": 1_800_000_000, "version": "1.2.0"}, host_checks=True)
    c.add("no device checks", sign_manifest(a, manifest(seq=1)), None, device=None)
    c.add("allowed rollback", sign_manifest(a, manifest(seq=3, allow_lower=True)), None)
    c.add("allowed rollback to the same seq", sign_manifest(a, manifest(seq=6, allow_lower=True)), None)
    c.add("unicode board", sign_manifest(a, manifest(board="sim-gaté")), None, device={**DEVICE, "board": "sim-gaté"})
    c.add("inside the window's last second", sign_manifest(a, manifest(window=(100, 200))), None,
          device={**DEVICE, "now": 199}, host_checks=False)
    c.add("from an equal version", sign_manifest(a, manifest(from_version="1.3.0")), None,
          device={**DEVICE, "version": "1.3.0"})
    c.add("from a newer version", sign_manifest(a, manifest(from_version="1.3.0")), None,
          device={**DEVICE, "version": "1.10.0"})
    c.add("from: the device's version unknown", sign_manifest(a, manifest(from_version="1.3.0")), None)
    c.run()


def test_every_refusal_has_its_reason_on_both_codecs(keys):
    a, b, other = keys
    kid_a = key_id(a.public_key())
    c = Cases(keys)
    raw = sign_manifest(a, manifest())
    prot, _, payload, sig = cbor2.loads(raw).value
    # the key
    c.add("wrong key", sign_manifest(other, manifest()), "unknown_key")
    c.add("revoked key", raw, "revoked_key", revoked={kid_a})
    c.add("revoked and untrusted", sign_manifest(other, manifest()), "revoked_key",
          revoked={key_id(other.public_key())})
    c.add("signed by b, a revoked", sign_manifest(b, manifest()), None, revoked={kid_a})
    # the signature
    forged = encode(manifest(seq=99).to_wire())
    c.add("tampered payload", encode(Tag(18, [prot, {}, forged, sig])), "bad_signature")
    c.add("tampered signature R", encode(Tag(18, [prot, {}, payload, bytes([sig[0] ^ 1]) + sig[1:]])), "bad_signature")
    c.add("tampered signature S", encode(Tag(18, [prot, {}, payload, sig[:-1] + bytes([sig[-1] ^ 1])])), "bad_signature")
    c.add("short signature", encode(Tag(18, [prot, {}, payload, sig[:32]])), "bad_signature")
    s = int.from_bytes(sig[32:], "little") + L
    c.add("non-canonical S", encode(Tag(18, [prot, {}, payload, sig[:32] + s.to_bytes(32, "little")])), "bad_signature")
    c.add("signed by another key under a's kid", encode(Tag(18, [prot, {}, payload, other.sign(sig_structure(prot, payload))])),
          "bad_signature")
    # the alg and the Sign1's shape
    es256 = encode({1: -7, 4: kid_a})
    c.add("bad alg", resign(a, es256, payload), "bad_alg")
    c.add("alg as text", resign(a, encode({1: "EdDSA", 4: kid_a}), payload), "bad_alg")
    c.add("a Mac0", encode(Tag(17, [prot, {}, payload, sig])), "bad_manifest")
    c.add("untagged", encode([prot, {}, payload, sig]), "bad_manifest")
    c.add("unprotected header", encode(Tag(18, [prot, {1: -8}, payload, sig])), "bad_manifest")
    c.add("three elements", encode(Tag(18, [prot, {}, payload])), "bad_manifest")
    c.add("trailing byte", raw + b"\x00", "bad_manifest")
    c.add("oversize", b"\x00" * 600, "bad_manifest")
    c.add("over 512 bytes", resign(a, prot, encode({**manifest().to_wire(), 99: "x" * 400})), "bad_manifest")
    c.add("non-canonical CBOR", raw[:1] + b"\x98\x04" + raw[2:], "bad_manifest")
    c.add("protected header without kid", resign(a, encode({1: -8}), payload), "bad_manifest")
    c.add("protected header with more", resign(a, encode({1: -8, 4: kid_a, 5: b"x"}), payload), "bad_manifest")
    c.add("kid as text", resign(a, encode({1: -8, 4: kid_a.hex()}), payload), "bad_manifest")
    # well signed, not a valid manifest
    wire = manifest().to_wire()
    for name, bad in [("unknown key 99", {**wire, 99: 1}), ("no sha256", {k: v for k, v in wire.items() if k != 6}),
                      ("short sha256", {**wire, 6: b"short"}), ("seq 0", {**wire, 4: 0}), ("seq 2^32", {**wire, 4: 2 ** 32}),
                      ("chunk 100", {**wire, 7: 100}), ("chunk 1537", {**wire, 7: 1537}), ("format zip", {**wire, 9: "zip"}),
                      ("empty window", {**wire, 10: [5, 5]}), ("window of one", {**wire, 10: [5]}),
                      ("window not a list", {**wire, 10: 5}), ("allow_lower false", {**wire, 12: False}),
                      ("size 0", {**wire, 5: 0}), ("size over 4 MiB", {**wire, 5: 4 * 1024 * 1024 + 1}),
                      ("journal 0", {**wire, 8: 0}), ("journal 256", {**wire, 8: 256}), ("empty version", {**wire, 3: ""}),
                      ("board 33 bytes", {**wire, 1: "b" * 33}), ("seq as bool", {**wire, 4: True}),
                      ("text key", {**wire, "x": 1}), ("from empty", {**wire, 11: ""}), ("payload not a map", [1, 2])]:
        c.add(name, resign(a, prot, encode(bad)), "bad_manifest")
    # the device's checks
    c.add("wrong class: board", sign_manifest(a, manifest(board="sim-rental")), "wrong_class")
    c.add("wrong class: kind", sign_manifest(a, manifest(kind="vending")), "wrong_class")
    c.add("downgrade: same seq", sign_manifest(a, manifest(seq=6)), "downgrade")
    c.add("downgrade: lower seq", sign_manifest(a, manifest(seq=2)), "downgrade")
    c.add("too large", sign_manifest(a, manifest()), "too_large", device={**DEVICE, "slot": len(PAYLOAD) - 1})
    c.add("journal format", sign_manifest(a, manifest(journal=2)), "journal_format")
    win = sign_manifest(a, manifest(window=(100, 200)))
    c.add("before the window", win, "outside_window", device={**DEVICE, "now": 99}, host_checks=False)
    c.add("at the window's end", win, "outside_window", device={**DEVICE, "now": 200}, host_checks=False)
    c.add("window, no trusted time", win, "outside_window", host_checks=False)
    c.add("from version", sign_manifest(a, manifest(from_version="1.3.0")), "from_version",
          device={**DEVICE, "version": "1.2.9"})
    c.add("from version: shorter", sign_manifest(a, manifest(from_version="1.3.0")), "from_version",
          device={**DEVICE, "version": "1.3"})
    # the first failure in SPEC order wins
    c.add("wrong class and downgrade", sign_manifest(a, manifest(board="x", seq=1)), "wrong_class")
    c.add("downgrade and too large", sign_manifest(a, manifest(seq=1)), "downgrade", device={**DEVICE, "slot": 1})
    c.add("unknown key before a bad signature", encode(Tag(18, [encode({1: -8, 4: b"12345678"}), {}, payload, sig])),
          "unknown_key")
    c.run()


def test_versions_that_cannot_be_ordered_are_refused_on_both(keys):
    # "1.rc.0" against "1.3.0": a number against text; both codecs refuse rather than guess
    c = Cases(keys)
    gated = sign_manifest(keys[0], manifest(from_version="1.3.0"))
    c.add("text against a number", gated, "from_version", device={**DEVICE, "version": "1.rc.0"})
    c.add("text against text", sign_manifest(keys[0], manifest(from_version="1.3.0-rc2")), "from_version",
          device={**DEVICE, "version": "1.3.0-rc1"})
    c.add("text after text", sign_manifest(keys[0], manifest(from_version="1.3.0-rc1")), None,
          device={**DEVICE, "version": "1.3.0-rc2"})
    c.run()


# ---- EPB1 archives -----------------------------------------------------------------------------
def board(name: str) -> dict:
    b = json.loads((ROOT / "boards" / f"{name}.json").read_text())
    b.setdefault("name", name)
    return b


@pytest.fixture(scope="module")
def release(keys):
    """The sim-gate board's bundle as a signed release, built by host_tools/release.py."""
    return build_release(board("sim-gate"), "1.4.0", 7, keys[0])


def archive_case(path: Path, m, buf=100) -> dict:
    return {"op": "archive", "file": str(path), "size": m.size, "sha256": m.sha256.hex(), "buf": buf}


def test_a_built_release_reads_back_file_by_file(release, tmp_path, keys):
    files = unpack(release.payload)
    assert "main.py" in files and "agent.mpy" in files
    p = tmp_path / "payload.epb1"
    p.write_bytes(release.payload + b"\xff" * 300)   # a slot is larger than its payload: never read past it
    want = [[k, len(v), hashlib.sha256(v).hexdigest()] for k, v in sorted(files.items())]
    trusted = {release.kid.hex(): raw_pub(keys[0]).hex()}
    m = release.manifest
    got = vm_run([
        {"op": "manifest", "raw": release.signed.hex(), "trusted": trusted, "device": {**DEVICE, "slot": 256 * 1024}},
        archive_case(p, m), archive_case(p, m, buf=1), archive_case(p, m, buf=4096),
        {"op": "payload", "file": str(p), "size": m.size, "sha256": m.sha256.hex()},
    ])
    assert got[0].get("fields", {}).get("sha256") == m.sha256.hex(), got[0]
    for g in got[1:4]:
        assert g.get("files") == want, g
    assert got[4].get("ok") is True, got[4]


def test_a_flipped_byte_is_digest_mismatch(release, tmp_path):
    data = release.payload
    m = release.manifest
    files = unpack(data)
    first = sorted(files)[0]
    body_at = 4 + 1 + len(first.encode()) + 4        # the first file's first byte
    spots = {"magic": 1, "a path length": 4, "a path": 6, "a size": 4 + 1 + len(first.encode()) + 1,
             "file bytes": body_at, "the middle": len(data) // 2, "the last byte": len(data) - 1}
    cases, names = [], []
    for name, at in spots.items():
        bad = bytearray(data)
        bad[at] ^= 0x20
        p = tmp_path / f"flip{at}.epb1"
        p.write_bytes(bytes(bad))
        cases += [archive_case(p, m), {"op": "payload", "file": str(p), "size": m.size, "sha256": m.sha256.hex()}]
        names += [name, name + " (slot digest)"]
    short = tmp_path / "short.epb1"
    short.write_bytes(data[:-1])
    cases.append(archive_case(short, m))
    names.append("truncated")
    got = vm_run(cases)
    bad = [f"{n}: {g}" for n, g in zip(names, got) if g.get("error") != "digest_mismatch"]
    assert not bad, "\n".join(bad)


def test_a_signed_but_malformed_archive_is_bad_archive(tmp_path):
    """Digest right, structure wrong: bad_archive (an unsafe or unordered path, a file past the end)."""
    def raw(entries):
        out = bytearray(b"EPB1")
        for path, body in entries:
            out += bytes([len(path)]) + path + len(body).to_bytes(4, "big") + body
        return bytes(out)

    good = pack({"a.mpy": b"1" * 10, "apps/gate.mpy": b"2" * 300, "main.py": b"3"})
    archives = {
        "good": (good, None),
        "dot-dot": (raw([(b"../boot.py", b"x")]), "bad_archive"),
        "absolute": (raw([(b"/main.py", b"x")]), "bad_archive"),
        "empty segment": (raw([(b"apps//g.mpy", b"x")]), "bad_archive"),
        "out of order": (raw([(b"b", b"x"), (b"a", b"y")]), "bad_archive"),
        "duplicate": (raw([(b"a", b"x"), (b"a", b"y")]), "bad_archive"),
        "empty path": (raw([(b"", b"x")]), "bad_archive"),
        "bad UTF-8": (raw([(b"\xc0\xaf", b"x")]), "bad_archive"),
        "file past the end": (b"EPB1\x01a\x00\x00\x01\x00xyz", "bad_archive"),
        "not EPB1": (b"EPB2" + good[4:], "bad_archive"),
        "empty archive": (b"EPB1", None),
    }
    cases = []
    for name, (data, _) in archives.items():
        p = tmp_path / (name.replace(" ", "_") + ".bin")
        p.write_bytes(data)
        cases.append({"op": "archive", "file": str(p), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    got = vm_run(cases)
    for (name, (data, want)), g in zip(archives.items(), got):
        if want is None:
            assert "files" in g, (name, g)
        else:
            assert g.get("error") == want, (name, g)
    assert got[0]["files"] == [[k, len(v), hashlib.sha256(v).hexdigest()] for k, v in sorted(unpack(good).items())]


def test_mutated_manifests_get_the_same_outcome_from_both_codecs(keys):
    """Every byte of a signed manifest flipped in turn, and some truncations and insertions: the host
    and the VM agree on each outcome (almost all bad_manifest or bad_signature; never a crash)."""
    rng = random.Random(int(os.environ.get("EDGEPAY_MANIFEST_SEED", "12")))
    raw = sign_manifest(keys[0], manifest(window=(100, 200), from_version="1.2.0"))
    c = Cases(keys)
    for i in range(len(raw)):
        b = bytearray(raw)
        b[i] ^= 1 << rng.randrange(8)
        c.add(f"flip {i}", bytes(b), "?", device=None)
    for n in (0, 1, 2, 20, len(raw) - 65, len(raw) - 1):
        c.add(f"cut {n}", raw[:n], "?", device=None)
    for i in (1, 2, 30, len(raw) - 64):
        c.add(f"insert at {i}", raw[:i] + b"\x00" + raw[i:], "?", device=None)
    c.run(agree_only=True)
