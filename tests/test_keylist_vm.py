"""The release key list on the real MicroPython VM and a real Mosquitto (SPEC §10 "The release key
list", issue 12 §1, issue 15 §4): a rotation in two signed steps (add the new key under the old,
revoke the old under the new), after which a manifest by the old key is refused revoked_key and one
by the new key accepted; every refusal (self-revoking, stale, unknown signer, tampered) changes
nothing; the list taken survives a reboot."""
from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from host_tools.cloud.chunkserver import ChunkServer, ReleaseStore
from host_tools.protocol.keylist import KeyList, kid_of, sign_keylist
from tests.otakit import Releases

DEV = "gate-1"


def raw_pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@pytest.fixture
def ota(site, tmp_path):
    rel = Releases(tmp_path / "rel")
    cs = ChunkServer(site.reg, site.c.mqtt, ReleaseStore(rel.dir))
    yield site, rel, cs
    cs.close()


def offer(site, release) -> tuple[str, dict | None]:
    """Offer a manifest; an accepted one is aborted at once (no download needed here)."""
    res = site.cmd(DEV, "ota", {1: release.signed}, timeout=15)
    if res.ok:
        assert site.cmd(DEV, "ota_abort").data == {"st": "aborted"}
    return res.code, res.data


def push(site, raw: bytes):
    return site.cmd(DEV, "set_release_keys", {1: raw}, timeout=15)


def stored(b) -> dict | None:
    return b.state("relkeys")  # the key list taken, on the board's flash


def test_a_release_key_is_rotated_and_the_old_one_revoked(ota):
    site, rel, _ = ota
    a, spare = rel.key, rel.spare                      # the two provisioned keys
    b_key = Ed25519PrivateKey.generate()               # the new release key
    stranger = Ed25519PrivateKey.generate()
    ka = kid_of(raw_pub(a))
    b = site.board(DEV, "gate", ota=rel.config())
    m_a = rel.build("sim-gate", "0.2.0", 2)
    m_b = rel.build("sim-gate", "0.2.1", 2, key=b_key)
    assert offer(site, m_b) == ("refused", {"why": "unknown_key"})   # not trusted yet

    def refused(raw, why):
        before = stored(b)
        res = push(site, raw)
        assert res.code == "refused" and res.data == {"why": why}, (why, res.code, res.data)
        assert stored(b) == before                                    # a refusal changes nothing

    keys_ab = (raw_pub(a), raw_pub(spare), raw_pub(b_key))
    refused(sign_keylist(a, KeyList(1, keys_ab[1:], (ka,))), "self_revoked")
    refused(sign_keylist(stranger, KeyList(1, keys_ab)), "unknown_key")
    good = sign_keylist(a, KeyList(1, keys_ab))
    tampered = bytearray(good)
    tampered[-5] ^= 1
    refused(bytes(tampered), "bad_signature")
    assert push(site, b"\x00").code == "refused"
    assert site.cmd(DEV, "set_release_keys", {1: "text"}).code == "bad_args"
    assert stored(b) is None
    # step 1: signed by a, adding b
    res = push(site, good)
    assert res.ok and res.data == {"v": 1, "keys": 3}, (res.code, res.data)
    refused(good, "stale_version")                                   # the same list again
    assert offer(site, m_b)[0] == "ok"                               # b trusted now
    # step 2: signed by b, revoking a
    res = push(site, sign_keylist(b_key, KeyList(2, keys_ab[1:], (ka,))))
    assert res.ok and res.data == {"v": 2, "keys": 2}, (res.code, res.data)
    refused(sign_keylist(a, KeyList(3, keys_ab)), "revoked_key")     # a can sign no list now
    refused(sign_keylist(spare, KeyList(2, keys_ab[1:])), "stale_version")
    assert offer(site, m_a) == ("refused", {"why": "revoked_key"})
    assert offer(site, m_b)[0] == "ok"
    # the list survives a reboot
    after = stored(b)
    assert after["v"] == 2 and ka.hex() in after["revoked"]
    b.stop()
    site.boot(b)
    assert offer(site, m_a) == ("refused", {"why": "revoked_key"})
    assert offer(site, m_b)[0] == "ok"
    refused(sign_keylist(b_key, KeyList(2, keys_ab[1:])), "stale_version")
    assert site.cmd(DEV, "get_state").ok


def _pem(key: Ed25519PrivateKey, d, name: str):
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat
    priv, pub = d / f"{name}.pem", d / f"{name}.pub.pem"
    priv.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def test_the_cli_signs_a_list_and_pushes_it(ota, tmp_path):
    import json as _json

    from click.testing import CliRunner

    from host_tools.cli import cli
    from tests.conftest import USERS
    site, rel, _ = ota
    site.board(DEV, "gate", ota=rel.config())
    a_priv, a_pub = _pem(rel.key, tmp_path, "a")
    _, s_pub = _pem(rel.spare, tmp_path, "spare")
    n_priv, n_pub = _pem(Ed25519PrivateKey.generate(), tmp_path, "new")
    ka = kid_of(raw_pub(rel.key)).hex()
    base = ["--registry", str(site.root / "registry.db"), "--broker", f"127.0.0.1:{site.broker.cloud_port}",
            "--user", "cloud", "--password", USERS["cloud"], "--json"]

    def edgepay(*args, code=0):
        r = CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)
        assert r.exit_code == code, r.output
        return _json.loads(r.output) if r.output.strip().startswith("{") else r.output

    one, two = tmp_path / "keys-1.cose", tmp_path / "keys-2.cose"
    edgepay("release", "keylist", "--sign-with", str(a_priv), "--version", "1", "--trust", str(a_pub),
            "--trust", str(s_pub), "--revoke", ka, "-o", str(tmp_path / "x"), code=2)          # self_revoked
    assert not (tmp_path / "x").exists()
    out = edgepay("release", "keylist", "--sign-with", str(a_priv), "--version", "1", "--trust", str(a_pub),
                  "--trust", str(s_pub), "--trust", str(n_pub), "-o", str(one))
    assert out["signed_by"] == ka and len(out["keys"]) == 3
    edgepay("release", "keylist", "--sign-with", str(n_priv), "--version", "2", "--trust", str(s_pub),
            "--trust", str(n_pub), "--revoke", ka, "-o", str(two))
    heap0 = site.cmd(DEV, "get_state").data["heap_used"]
    # the second list first: its signer is not trusted yet (exit 10, the device's reason)
    r = edgepay("release", "push-keys", DEV, "--file", str(two), code=10)
    assert r["results"][0]["data"] == {"why": "unknown_key"}
    r = edgepay("release", "push-keys", DEV, "--file", str(one))
    assert r["results"] == [{"device": DEV, "state": "SUCCEEDED", "code": "ok", "data": {"v": 1, "keys": 3}}]
    # the verifier (~12 KB live on the VM) is let go after a list, taken or refused, when no update
    # holds it: the live heap is where it was
    assert site.cmd(DEV, "get_state").data["heap_used"] - heap0 < 2048
    r = edgepay("release", "push-keys", DEV, "--file", str(two))
    assert r["results"][0]["data"] == {"v": 2, "keys": 2}
    assert offer(site, rel.build("sim-gate", "0.2.0", 2)) == ("refused", {"why": "revoked_key"})
    m = tmp_path / "m"
    m.write_bytes(rel.built["0.2.0"].signed)
    edgepay("release", "push-keys", DEV, "--file", str(m), code=2)                           # a manifest, not a list
    edgepay("release", "push-keys", "nobody", "--file", str(two), code=1)
