"""`edgepay ota` (host_tools/cli/ota.py): every argument refusal of deploy (nothing created), the
shape of status --json, pause/resume/cancel (a cancel sends ota_abort), and a whole deploy with
--serve-chunks: stand-in devices pull the release from the CLI's own chunk server and confirm."""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from host_tools.cli import cli
from host_tools.cloud.registry import Registry
from host_tools.cloud.rollout_store import RolloutStore
from tests.conftest import USERS
from tests.otastandin import StandIn, write_release

V, SEQ = "1.4.0", 7


@pytest.fixture
def env(tmp_path):
    """(edgepay, release stem, keys by device, db path): gates g-0..g-2, a vending v-0, a revoked g-9."""
    reg = Registry(tmp_path / "registry.db")
    keys = {}
    for name, kind, board in [("g-0", "gate", "sim-gate"), ("g-1", "gate", "sim-gate"), ("g-2", "gate", "sim-gate"),
                              ("v-0", "vending", "sim-vending"), ("g-9", "gate", "sim-gate")]:
        keys[name] = os.urandom(32)
        reg.add(name, keys[name], kind, board)
    reg.set_status("g-9", "revoked")
    reg.close()
    payload = os.urandom(6000)
    stem, m, signed = write_release(tmp_path / "rel", payload, version=V, seq=SEQ, chunk=1024)
    db = str(tmp_path / "ledger.db")
    state = {"broker": "127.0.0.1:1"}

    def edgepay(*args, json_out=True):
        base = ["--registry", str(tmp_path / "registry.db"), "--broker", state["broker"], "--user", "cloud",
                "--password", USERS["cloud"]] + (["--json"] if json_out else [])
        r = CliRunner().invoke(cli, [*base, *args, "--db", db],
                               catch_exceptions=False)
        assert "Traceback" not in r.output
        return r
    edgepay.state = state  # type: ignore[attr-defined]
    return edgepay, stem, keys, db, payload


def test_deploy_refuses_bad_arguments_and_creates_nothing(env, tmp_path):
    edgepay, stem, _, db, _ = env
    man = f"{stem}.manifest"
    other_dir = tmp_path / "two"
    write_release(other_dir, os.urandom(100), version="1.0.0")
    write_release(other_dir, os.urandom(100), version="1.0.1")
    bad_bin = tmp_path / "badbin"
    s2, _, _ = write_release(bad_bin, os.urandom(100), version="2.0.0")
    Path(f"{s2}.bin").write_bytes(b"other")
    from host_tools.release import keygen
    _, _, stranger_pub = keygen(tmp_path / "keys")
    cases = [
        ((man,), 2, "no devices"),
        ((man, "--device", "g-0", "--board", "sim-gate"), 2, "not both"),
        ((man, "--board", "sim-vending"), 2, "is for sim-gate/gate"),
        ((man, "--kind", "rental"), 2, "is for sim-gate/gate"),
        ((man, "--device", "g-0", "--device", "g-0"), 2, "twice"),
        ((man, "--device", "nope"), 1, "unknown device"),
        ((man, "--device", "v-0"), 1, "v-0 is a sim-vending/vending"),
        ((man, "--device", "g-9"), 1, "revoked"),
        ((str(other_dir), "--device", "g-0"), 1, "holds 2 releases"),
        ((str(tmp_path / "none.manifest"), "--device", "g-0"), 1, "no release"),
        ((str(tmp_path), "--device", "g-0"), 1, "no release in"),
        ((f"{s2}.manifest", "--device", "g-0"), 1, "not the payload its manifest names"),
        ((man, "--device", "g-0", "--cohorts", "5,x"), 2, "--cohorts"),
        ((man, "--device", "g-0", "--cohorts", "50,25,100"), 2, "rising"),
        ((man, "--device", "g-0", "--rate", "0"), 2, "rate"),
        ((man, "--device", "g-0", "--abort-share", "1.5"), 2, "abort_share"),
        ((man, "--device", "g-0", "--timeout", "0"), 2, "timeout"),
        ((man, "--device", "g-0", "--serve-chunks", "--no-wait"), 2, "--serve-chunks"),
        ((man, "--device", "g-0", "--pub", str(stranger_pub)), 1, "unknown_key"),
    ]
    for args, code, says in cases:
        r = edgepay("ota", "deploy", *args)
        assert r.exit_code == code and says in json.loads(r.stdout)["error"], (args, r.stdout)
    st = RolloutStore.open(db)
    try:
        assert st.campaigns() == []
    finally:
        st.close()
    r = edgepay("ota", "deploy", man, "--board", "sim-gate", "--no-wait")
    assert r.exit_code == 0, r.stdout
    assert json.loads(r.stdout)["devices"] == 3           # the class's active devices, not g-9 nor v-0
    r = edgepay("ota", "deploy", man, "--device", "g-0", "--no-wait")
    assert r.exit_code == 2 and "exists (give --id)" in json.loads(r.stdout)["error"]


def test_status_json_shape_and_pause_resume(env):
    edgepay, stem, _, db, _ = env
    r = edgepay("ota", "status")
    assert r.exit_code == 1 and "no database" in r.stdout
    r = edgepay("ota", "deploy", str(stem.parent), "--kind", "gate", "--id", "roll-1", "--no-wait", "--cohorts", "50,100")
    assert r.exit_code == 0, r.stdout
    r = edgepay("ota", "status")
    (c,) = json.loads(r.stdout)
    assert c["id"] == "roll-1" and c["action"] == "ota" and c["state"] == "running" and c["devices"] == 3
    assert c["release"] == {"release": "sim-gate-1.4.0", "version": V, "seq": SEQ, "board": "sim-gate",
                            "kind": "gate", "rel": c["spec"]["rel"], "size": 6000, "chunk": 1024}
    r = edgepay("ota", "status", "roll-1")
    assert r.exit_code == 6                                   # still live
    s = json.loads(r.stdout)
    assert [t["device"] for t in s["targets"]] == ["g-0", "g-1", "g-2"]
    assert set(s["targets"][0]) == {"device", "state", "reason", "started_at", "finished_at", "ota"}
    assert s["targets"][0]["state"] == "pending" and s["targets"][0]["ota"] is None
    assert s["cohorts"] == [50, 100] and s["counts"] == {"pending": 3}
    assert edgepay("ota", "pause", "roll-1").exit_code == 0
    assert json.loads(edgepay("ota", "status", "roll-1").stdout)["state"] == "paused"
    assert json.loads(edgepay("ota", "resume", "roll-1").stdout)["state"] == "running"
    r = edgepay("ota", "status", "nope")
    assert r.exit_code == 1 and "no campaign" in r.stdout
    # a command campaign is not a firmware one
    r = edgepay("campaign", "create", "cmd-1", "display", "text=hi", "--device", "g-0")
    assert r.exit_code == 0, r.stdout
    r = edgepay("ota", "status", "cmd-1")
    assert r.exit_code == 1 and "is a command campaign" in r.stdout
    r = edgepay("ota", "pause", "cmd-1")
    assert r.exit_code == 1 and "is a command campaign" in r.stdout
    assert [c["id"] for c in json.loads(edgepay("ota", "status").stdout)] == ["roll-1"]
    # the human view renders (progress bars) without a traceback
    r = edgepay("ota", "status", "roll-1", json_out=False)
    assert "g-0" in r.stdout and "roll-1" in r.stdout


def test_deploy_with_serve_chunks_rolls_a_release_out_and_cancel_aborts(env, broker):
    """Three gates: two pull every chunk from the CLI's chunk server, check the digest and confirm;
    the campaign is done (exit 0). A second campaign to a silent gate is cancelled: ota_abort."""
    edgepay, stem, keys, db, payload = env
    edgepay.state["broker"] = f"127.0.0.1:{broker.cloud_port}"
    digest = hashlib.sha256(payload).digest()
    devs = []

    def updater(name: str):
        box: list[StandIn] = []

        def script(cmd):
            if cmd["name"] != "ota":
                return "ok", {"st": "aborted"}

            def go():
                d = box[0]
                got = d.download(digest[:8], len(payload), 1024)
                d.event("downloaded" if hashlib.sha256(got).digest() == digest else "failed", V, SEQ)
                d.event("confirmed", V, SEQ)
            threading.Thread(target=go, daemon=True).start()
            return "ok", {"st": "downloading"}
        d = StandIn(broker.cloud_port, name, keys[name], user="cloud", password=USERS["cloud"], script=script)
        box.append(d)
        devs.append(d)
        return d
    try:
        for n in ("g-0", "g-1"):
            updater(n)
        r = edgepay("ota", "deploy", f"{stem}.bin", "--device", "g-0", "--device", "g-1", "--cohorts", "50,100",
                    "--timeout", "30", "--serve-chunks", "--every", "0.1")
        assert r.exit_code == 0, r.output
        last = json.loads(r.stdout.splitlines()[-1])
        assert last["state"] == "done" and last["counts"] == {"succeeded": 2}
        s = json.loads(edgepay("ota", "status", "ota-sim-gate-1.4.0").stdout)
        assert {t["device"]: (t["state"], t["ota"]["st"]) for t in s["targets"]} == {
            "g-0": ("succeeded", "confirmed"), "g-1": ("succeeded", "confirmed")}
        silent = StandIn(broker.cloud_port, "g-2", keys["g-2"], user="cloud", password=USERS["cloud"],
                         script=lambda cmd: None if cmd["name"] == "ota" else ("ok", {"st": "aborted"}))
        devs.append(silent)
        r = edgepay("ota", "deploy", str(stem), "--device", "g-2", "--id", "c2", "--no-wait")
        assert r.exit_code == 0
        st = RolloutStore.open(db)   # as a runner elsewhere would have left it: g-2 started
        try:
            assert st.move("c2", "g-2", "started", None, 0.0, only_from=("pending",))
        finally:
            st.close()
        r = edgepay("ota", "cancel", "c2")
        assert r.exit_code == 0 and json.loads(r.stdout)["state"] == "cancelled"
        assert silent.wait_command("ota_abort")
        r = edgepay("ota", "status", "c2")
        assert r.exit_code == 5 and json.loads(r.stdout)["targets"][0]["state"] == "aborted"
    finally:
        for d in devs:
            d.close()
