"""Device key rotation, the cloud's side (SPEC §11, issue 15 §1), against a real Mosquitto, the
ingest worker and a stand-in device on the host codec (tests/rekeykit.py): the whole rotation,
a wrong proof never promoted, the old kid after the switch (refused for new messages, a journaled
record below the switch point ingested exactly once), a replayed rekey, a rekey for another device,
a rotation interrupted and resumed, and `edgepay device rekey`. The registry and the ledger run on
SQLite and on PostgreSQL."""
from __future__ import annotations

import json
import os
import time

import paho.mqtt.client as paho
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from host_tools.cli import cli
from host_tools.cloud import cmdspec
from host_tools.cloud.commands import CommandClient
from host_tools.cloud.ingest import IngestWorker
from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.registry import Registry
from host_tools.cloud.rekey import RekeyError, rotate
from host_tools.protocol import keywrap, seal, topic
from tests.rekeykit import RekeyDevice

CLOUD = ("cloud", "cloud-pw")


def wait_for(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def env(broker, ledger_url):
    class Env:
        pass
    e = Env()
    e.broker = broker
    e.registry = Registry(ledger_url)
    e.ledger = open_ledger(ledger_url)
    e.settings = BrokerSettings("127.0.0.1", broker.cloud_port, *CLOUD)
    e.client = CommandClient(e.registry, e.settings).connect()
    e.devices = []

    def device(name: str) -> RekeyDevice:
        key = os.urandom(32)
        e.registry.add(name, key, "gate", "sim-gate")
        if name not in broker.users:
            broker.add_user(name, f"{name}-pw")
        d = RekeyDevice(broker.port, name, broker.users[name], key)
        e.devices.append(d)
        return d
    e.device = device
    e.worker = None

    def ingest() -> IngestWorker:
        e.worker = IngestWorker(e.registry, open_ledger(ledger_url), e.settings).start()
        return e.worker
    e.ingest = ingest
    yield e
    for d in e.devices:
        d.close()
    if e.worker is not None:
        e.worker.stop()
    e.client.close()
    e.ledger.close()
    e.registry.close()


def publish_as_cloud(broker, t: str, raw: bytes) -> None:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"cloud-{os.urandom(3).hex()}")
    c.username_pw_set(*CLOUD)
    c.connect("127.0.0.1", broker.cloud_port)
    c.loop_start()
    c.publish(t, raw, qos=1).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def test_rekey_args_are_checked_host_side():
    assert cmdspec.check("rekey", {"version": 2, "wrapped": "ab" * 40}) == {1: 2, 2: bytes.fromhex("ab" * 40)}
    assert cmdspec.check("rekey", {1: 2, 2: b"\x00" * 40}) == {1: 2, 2: b"\x00" * 40}
    for args, says in [({1: 2, 2: "ab" * 32}, "must be 40 bytes, not 32"), ({1: -1, 2: "ab" * 40}, "unsigned"),
                       ({1: 2}, "needs 2:wrapped"), ({1: 2, 2: "xyz"}, "bytes as hex")]:
        with pytest.raises(cmdspec.ArgProblem, match=says):
            cmdspec.check("rekey", args)


def test_a_whole_rotation_and_the_records_across_the_switch(env):
    dev = env.device("gate-1")
    w = env.ingest()
    k1 = dev.key
    before = dev.record("s-1", 250, publish=False)  # journaled under key 1, not yet sent
    r = rotate(env.client, "gate-1", timeout=5)
    assert (r.was, r.version, r.resumed) == (1, 2, False)
    assert dev.version == 2 and dev.next is None and dev.key != k1
    reg = env.registry
    assert reg.get("gate-1").key == dev.key
    keys = reg.keys("gate-1")
    assert [(k.version, k.state) for k in keys] == [(1, "retired"), (2, "current")]
    switch = keys[0].switch_seq
    assert switch == dev.switched_at and before < switch  # the confirmation's answer, the first under key 2
    # the record journaled before the switch is sent now, unchanged, under key 1: it is money
    dev.resend()
    wait_for(lambda: dev.acked >= before, what="the old-kid record acknowledged under the new key")
    assert [x.seq for x in env.ledger.records("gate-1")] == [before]
    dev.journal[before] = env.ledger.records("gate-1")[0].raw
    dev.resend()  # again (a lost ack): still once
    after = dev.record("s-2", 300)  # under key 2
    wait_for(lambda: dev.acked >= after, what="the new-kid record acknowledged")
    assert [x.seq for x in env.ledger.records("gate-1")] == [before, after]
    # anything new under the retired kid is refused bad_kid, never money
    t = topic("gate-1", "sess_close")
    forged = seal(k1, "gate-1:1", t, {"type": "sess_close", "seq": after + 1, "prev": bytes(16), "sid": "s-3",
                                      "payer": "p", "t0": 1, "amount": 1, "cur": "EUR", "t1": 2})
    dev.c.publish(t, forged, qos=1).wait_for_publish(5)
    wait_for(lambda: w.stats["refused"].get("bad_kid", 0) >= 1, what="the retired kid refused")
    assert [x.seq for x in env.ledger.records("gate-1")] == [before, after]
    # a command under key 2 runs; the device refuses key 1 now
    c = env.client.send("gate-1", "get_state", timeout=5)
    assert c.ok and c.data["kv"] == 2
    publish_as_cloud(env.broker, topic("gate-1", "command"),
                     seal(k1, "gate-1:1", topic("gate-1", "command"),
                          {"type": "command", "aud": "gate-1", "exp": int(time.time()) + 60, "iat": int(time.time()),
                           "cti": os.urandom(8), "seq": 10_000, "name": "get_state"}))
    wait_for(lambda: "bad_kid" in dev.refused, what="the device refusing the old kid")


def test_a_wrong_proof_is_never_promoted_and_a_rerun_finishes(env):
    dev = env.device("gate-1")
    dev.wrong_proof = True
    with pytest.raises(RekeyError) as e:
        rotate(env.client, "gate-1", timeout=5)
    assert e.value.code == "bad_proof"
    assert env.registry.get("gate-1").key_version == 1 and env.registry.next_key("gate-1") is not None
    assert dev.version == 1 and dev.next is not None  # no confirmation was sent: it never switched
    assert env.client.send("gate-1", "get_state", timeout=5).ok  # the current key still works both ways
    dev.wrong_proof = False
    nxt = env.registry.next_key("gate-1")
    r = rotate(env.client, "gate-1", timeout=5)
    assert (r.version, r.resumed) == (2, True) and env.registry.get("gate-1").key == nxt.key == dev.key


def test_a_rotation_interrupted_after_the_switch_is_finished_by_a_rerun(env):
    """The device switched on the confirmation but its answer was lost: it refuses the current kid
    now. A rerun's rekey goes unanswered (bad_kid, unattributed); the confirmation finishes it."""
    dev = env.device("gate-1")
    version, key = env.registry.offer_next("gate-1")
    c = env.client.send("gate-1", "rekey", {1: version, 2: keywrap.wrap(dev.key, key)}, timeout=5)
    assert c.ok and keywrap.proof_matches(key, "gate-1:2", c.data["proof"])
    dev.silent = True
    conf = env.client.send("gate-1", "get_state", timeout=1, under_next=True)
    assert not conf.ok and dev.version == 2  # switched, answer lost
    assert env.registry.get("gate-1").key_version == 1
    dev.silent = False
    r = rotate(env.client, "gate-1", timeout=2)
    assert (r.version, r.resumed) == (2, True) and env.registry.get("gate-1").key == key
    assert "bad_kid" in dev.refused  # the rerun's rekey under key 1


def test_a_replayed_rekey_does_nothing(env):
    dev = env.device("gate-1")
    version, key = env.registry.offer_next("gate-1")
    assert env.client.send("gate-1", "rekey", {1: version, 2: keywrap.wrap(dev.key, key)}, timeout=5).ok
    raw = dev.raw_cmds[-1]
    held = dev.next
    publish_as_cloud(env.broker, topic("gate-1", "command"), raw)  # before the switch: an old seq
    wait_for(lambda: "stale_seq" in dev.refused or dev.results[-1].get("data", {}).get("dup"),
             what="the replay refused")
    assert dev.next == held and dev.version == 1
    assert rotate(env.client, "gate-1", timeout=5).version == 2
    publish_as_cloud(env.broker, topic("gate-1", "command"), raw)  # after it: the retired kid
    wait_for(lambda: "bad_kid" in dev.refused, what="the replay refused after the switch")
    assert dev.version == 2 and dev.next is None
    assert [(k.version, k.state) for k in env.registry.keys("gate-1")] == [(1, "retired"), (2, "current")]


def test_a_rekey_for_another_device_is_refused(env):
    a, b = env.device("gate-1"), env.device("gate-2")
    nk = os.urandom(32)
    t = topic("gate-2", "command")

    def rekey_cmd(aud: str, seq: int) -> dict:
        return {"type": "command", "aud": aud, "exp": int(time.time()) + 60, "iat": int(time.time()),
                "cti": os.urandom(8), "seq": seq, "name": "rekey", "args": {1: 2, 2: keywrap.wrap(a.key, nk)}}
    # gate-1's rekey (its key, its kid, for it) moved onto gate-2's topic: bad_kid
    publish_as_cloud(env.broker, t, seal(a.key, "gate-1:1", t, rekey_cmd("gate-1", 50)))
    wait_for(lambda: "bad_kid" in b.refused, what="another device's kid refused")
    # signed with gate-2's key but for gate-1: wrong_audience
    publish_as_cloud(env.broker, t, seal(b.key, "gate-2:1", t, rekey_cmd("gate-1", 51)))
    wait_for(lambda: "wrong_audience" in b.refused, what="another device's audience refused")
    assert a.next is None and b.next is None and (a.version, b.version) == (1, 1)
    # and a wrap under another device's key, for this one, does not unwrap
    version, key = env.registry.offer_next("gate-2")
    c = env.client.send("gate-2", "rekey", {1: version, 2: keywrap.wrap(a.key, key)}, timeout=5)
    assert c.code == "bad_args" and c.data == {"why": "unwrap"} and b.next is None


def test_a_revoked_device_is_not_rotated(env):
    env.device("gate-1")
    env.registry.set_status("gate-1", "revoked")
    with pytest.raises(RekeyError) as e:
        rotate(env.client, "gate-1", timeout=2)
    assert e.value.code == "revoked" and env.registry.next_key("gate-1") is None


def test_the_cli_rotates_each_device_and_says_which_failed(broker, tmp_path):
    reg_path = tmp_path / "registry.db"
    reg = Registry(reg_path)
    devs = []
    try:
        for name in ("gate-1", "gate-2"):
            key = os.urandom(32)
            reg.add(name, key, "gate", "sim-gate")
            broker.add_user(name, f"{name}-pw")
            devs.append(RekeyDevice(broker.port, name, f"{name}-pw", key))
        devs[1].wrong_proof = True
    finally:
        reg.close()
    base = ["--registry", str(reg_path), "--broker", f"127.0.0.1:{broker.cloud_port}", "--user", CLOUD[0]]
    env = {"EDGEPAY_MQTT_PASSWORD": CLOUD[1]}
    try:
        r = CliRunner().invoke(cli, ["--json", *base, "device", "rekey", "gate-1", "gate-2", "nope",
                                     "--timeout", "5"], env=env, catch_exceptions=False)
        assert r.exit_code == 1, r.output
        out = json.loads(r.stdout)
        by = {d["device"]: d for d in out["devices"]}
        assert by["gate-1"]["ok"] and by["gate-1"]["version"] == 2 and by["gate-1"]["kid"] == "gate-1:2"
        assert by["gate-2"]["error"] == "bad_proof" and by["nope"]["error"] == "unknown_device"
        assert (out["rotated"], out["failed"]) == (1, 2)
        assert devs[0].key.hex() not in r.output  # no key is printed
        devs[1].wrong_proof = False
        r = CliRunner().invoke(cli, [*base, "device", "rekey", "gate-2"], env=env, catch_exceptions=False)
        assert r.exit_code == 0 and "rotated gate-2: key 1 -> 2 (a rotation under way, finished)" in r.stdout, r.output
        r = CliRunner().invoke(cli, ["--json", "--registry", str(reg_path), "device", "keys", "gate-2"],
                               catch_exceptions=False)
        assert r.exit_code == 0, r.output
        rows = json.loads(r.stdout)["keys"]
        assert [(k["kid"], k["state"]) for k in rows] == [("gate-2:1", "retired"), ("gate-2:2", "current")]
        assert rows[0]["switch_seq"] == devs[1].switched_at and devs[1].key.hex() not in r.stdout
    finally:
        for d in devs:
            d.close()


def test_a_fleet_rotation_runs_on_the_rollout_engine(broker, tmp_path):
    """`edgepay device rekey --kind gate`: a campaign of action rekey, cohorts and a failure kept
    per device (a wrong proof), then `edgepay campaign status` shows it."""
    reg_path, db = tmp_path / "registry.db", str(tmp_path / "ledger.db")
    reg = Registry(reg_path)
    devs = []
    try:
        for name in ("gate-1", "gate-2", "gate-3", "vend-1"):
            key = os.urandom(32)
            reg.add(name, key, "vending" if name.startswith("vend") else "gate", "sim-gate")
            broker.add_user(name, f"{name}-pw")
            devs.append(RekeyDevice(broker.port, name, f"{name}-pw", key))
        devs[2].wrong_proof = True
    finally:
        reg.close()
    base = ["--json", "--registry", str(reg_path), "--broker", f"127.0.0.1:{broker.cloud_port}", "--user", CLOUD[0]]
    env = {"EDGEPAY_MQTT_PASSWORD": CLOUD[1]}
    try:
        r = CliRunner().invoke(cli, [*base, "device", "rekey", "--kind", "gate", "--id", "rk-1", "--cohorts", "34,100",
                                     "--abort-share", "0.9", "--timeout", "3", "--db", db, "--every", "0.1"],
                               env=env, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        final = json.loads(r.stdout.strip().splitlines()[-1])
        assert final["id"] == "rk-1" and final["action"] == "rekey" and final["state"] == "done"
        assert final["counts"] == {"succeeded": 2, "failed": 1}
        r = CliRunner().invoke(cli, ["--json", "campaign", "status", "rk-1", "--db", db], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        assert "bad_proof" in r.stdout
        reg = Registry(reg_path)
        try:
            assert [reg.get(n).key_version for n in ("gate-1", "gate-2", "gate-3", "vend-1")] == [2, 2, 1, 1]
        finally:
            reg.close()
        assert (devs[0].version, devs[2].version, devs[3].version) == (2, 1, 1)
        r = CliRunner().invoke(cli, [*base, "device", "rekey", "gate-1", "--kind", "gate"], env=env)
        assert r.exit_code == 2 and "not both" in r.output
    finally:
        for d in devs:
            d.close()


def test_a_tampered_wrap_is_refused_by_the_device_and_the_rotation_says_so(env, monkeypatch):
    dev = env.device("gate-1")
    real = keywrap.wrap

    def tampered(kek: bytes, key: bytes) -> bytes:
        w = bytearray(real(kek, key))
        w[17] ^= 0x40  # one bit on the path
        return bytes(w)
    monkeypatch.setattr(keywrap, "wrap", tampered)
    with pytest.raises(RekeyError) as e:
        rotate(env.client, "gate-1", timeout=5)
    assert e.value.code == "refused" and "bad_args" in e.value.detail and "unwrap" in e.value.detail
    assert dev.next is None and dev.version == 1 and env.registry.get("gate-1").key_version == 1
    monkeypatch.setattr(keywrap, "wrap", real)
    assert rotate(env.client, "gate-1", timeout=5).version == 2
