"""`edgepay provision --release-pub`: the release public keys a device trusts for firmware updates
(SPEC §10) go into its config's "ota" section by kid; a device given none, or one, is told so; a
file that is not an Ed25519 public key is refused in one line and nothing is provisioned."""
from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from host_tools.protocol.manifest import key_id
from host_tools.release import keygen, load_public
from tests.test_cli import bad, run


def test_release_keys_reach_the_config_by_kid(tmp_path):
    keys = tmp_path / "keys"  # outside any git tree, as keygen insists
    (_, _, pub1), (_, _, pub2) = keygen(keys), keygen(keys)
    out = tmp_path / "g"
    r = run("--registry", str(tmp_path / "r.db"), "--json", "provision", "gate-1", "--board", "sim-gate",
            "--out", str(out), "--broker-dir", str(tmp_path / "b"), "--release-pub", str(pub1),
            "--release-pub", str(pub2))
    cfg = json.loads((out / "config.json").read_text())
    want = {}
    for p in (pub1, pub2):
        k = load_public(p)
        want[key_id(k).hex()] = k.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    assert cfg["ota"] == {"keys": want, "revoked": []}
    assert json.loads(r.output)["release_keys"] == sorted(want)


def test_without_two_release_keys_the_operator_is_told(tmp_path):
    keys = tmp_path / "keys"
    _, _, pub = keygen(keys)
    r = run("--registry", str(tmp_path / "r.db"), "provision", "gate-1", "--board", "sim-gate",
            "--out", str(tmp_path / "g1"), "--broker-dir", str(tmp_path / "b"))
    assert "refuses every firmware update" in r.output
    assert "ota" not in json.loads((tmp_path / "g1" / "config.json").read_text())
    r = run("--registry", str(tmp_path / "r.db"), "provision", "gate-2", "--board", "sim-gate",
            "--out", str(tmp_path / "g2"), "--broker-dir", str(tmp_path / "b"), "--release-pub", str(pub))
    assert "one release key" in r.output


def test_a_file_that_is_not_a_release_key_is_refused(tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    bad("--registry", str(tmp_path / "r.db"), "provision", "gate-1", "--board", "sim-gate",
        "--out", str(tmp_path / "g"), "--broker-dir", str(tmp_path / "b"), "--release-pub", str(junk),
        says="not a release public key")
    assert not Path(tmp_path / "g" / "config.json").exists()
