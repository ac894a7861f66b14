"""Re-provisioning a revoked (compromised) device under its own id (issue 15 §1): a key known to be
compromised is not rotated by wrapping under itself; the board gets a fresh key over its serial link,
as at first provisioning, and every earlier key becomes `compromised` (verify-only for audit, never
money). The registry on SQLite and PostgreSQL; `edgepay provision --reprovision` on a real
Mosquitto (the old password refused, the new accepted; refusals for active, unknown, decommissioned
ids); the new config flashed over the serial link (tests/serialboard.py) and the agent booting from
it; ingest after re-provisioning: the new kid's records are money, a record journaled under the
compromised kid is quarantined (compromised_key) and acked, never committed."""
from __future__ import annotations

import json
import os
import time
from dataclasses import replace

import pytest
from click.testing import CliRunner

from host_tools.cli import cli
from host_tools.cloud.registry import CompromisedKey, Registry, RegistryError, open_uplink
from host_tools.protocol import ProtocolError, build_mac0, encode_payload, seal, topic
from tests import test_rekey, test_revoke
from tests.test_rekey import wait_for
from tests.test_revoke import _connect

env = test_rekey.env                # the rekey tests' fixture: broker, ingest, a stand-in device
own_broker = test_revoke.own_broker  # a Mosquitto of the test's own, with its broker dir


@pytest.fixture
def url(ledger_url):
    return ledger_url  # conftest: SQLite, then PostgreSQL


def hb(seq: int) -> dict:
    return {"type": "heartbeat", "seq": seq, "uptime": 1, "heap": 1000, "jdepth": 0, "clock": 1}


def up(key: bytes, kid: str, seq: int, dev: str = "gate-1") -> tuple[str, bytes]:
    t = topic(dev, "heartbeat")
    return t, seal(key, kid, t, hb(seq))


# ---- the registry ---------------------------------------------------------------------------
def test_reprovision_makes_every_earlier_key_compromised(url):
    master = os.urandom(32)
    reg = Registry(url, master_key=master)
    try:
        k1 = os.urandom(32)
        dev = reg.add("gate-1", k1, "gate", "sim-gate")
        _, k2 = reg.offer_next("gate-1")
        reg.verify_uplink(dev, *up(k2, "gate-1:2", 12))   # rotated: key 1 retired at 12
        _, k3 = reg.offer_next("gate-1")                   # a rotation under way when it was stolen
        k4 = os.urandom(32)
        with pytest.raises(RegistryError, match="is active: only a revoked device"):
            reg.reprovision("gate-1", k4, "gate", "sim-gate")
        with pytest.raises(RegistryError, match="unknown device"):
            reg.reprovision("nope", k4, "gate", "sim-gate")
        stale = reg.get("gate-1")                           # read before the re-provisioning
        reg.set_status("gate-1", "revoked")
        d = reg.reprovision("gate-1", k4, "gate", "sim-gate")
        assert (d.key_version, d.key, d.status, d.switch_seq) == (4, k4, "active", None)  # above the next key too
        assert [(k.version, k.state) for k in reg.keys("gate-1")] == \
            [(1, "compromised"), (2, "compromised"), (3, "compromised"), (4, "current")]
        blob = bytes(reg.db._read("SELECT key FROM devices WHERE device_id='gate-1'")[0][0])
        assert blob.startswith(b"EPK1") and k4 not in blob   # sealed under the master key like any
        with pytest.raises(RegistryError, match="is active"):
            reg.reprovision("gate-1", os.urandom(32), "gate", "sim-gate")
        # the new kid verifies, from a stale device too (re-read: its kid is current now)
        assert reg.verify_uplink(d, *up(k4, "gate-1:4", 30))[1].key_version == 4
        assert reg.verify_uplink(stale, *up(k4, "gate-1:4", 31))[1].key_version == 4
        # every earlier kid that verifies is compromised: never the device's, whatever the seq
        # (below the old switch point too), whoever asks (a fresh device, one read before, one
        # cached as revoked by another process, which is read again)
        other = replace(stale, status="revoked", read_at=time.monotonic() + 3600)
        for key, kid, seq in ((k1, "gate-1:1", 5), (k1, "gate-1:1", 40), (k2, "gate-1:2", 13), (k3, "gate-1:3", 41)):
            for via in (d, stale, other):
                with pytest.raises(CompromisedKey) as e:
                    reg.verify_uplink(via, *up(key, kid, seq))
                assert e.value.code == "bad_kid" and e.value.quarantine_code == "compromised_key"
                assert e.value.payload == encode_payload(hb(seq), topic("gate-1", "heartbeat"))
        with pytest.raises(ProtocolError) as e:   # a forgery under an old kid: bad_mac as ever
            reg.verify_uplink(d, *up(os.urandom(32), "gate-1:1", 50))
        assert e.value.code == "bad_mac" and not isinstance(e.value, CompromisedKey)
        cache = {"gate-1": stale}   # the queue's and the watch's helper: refused bad_kid
        assert open_uplink(reg, cache, *up(k2, "gate-1:2", 51))[2] == "bad_kid"
        assert open_uplink(reg, cache, *up(k4, "gate-1:4", 52))[2] is None
        # the re-provisioned key rotates over the air as any (it was never on the network)
        v, k5 = reg.offer_next("gate-1")
        assert v == 5
        reg.verify_uplink(reg.get("gate-1"), *up(k5, "gate-1:5", 60))
        assert [(k.version, k.state) for k in reg.keys("gate-1")][-2:] == [(4, "retired"), (5, "current")]
        with pytest.raises(CompromisedKey):
            reg.verify_uplink(reg.get("gate-1"), *up(k1, "gate-1:1", 5))
        # a decommissioned device is not re-provisioned as it is
        reg.add("gate-2", os.urandom(32), "gate", "sim-gate")
        reg.set_status("gate-2", "decommissioned")
        with pytest.raises(RegistryError, match="decommissioned"):
            reg.reprovision("gate-2", os.urandom(32), "gate", "sim-gate")
        assert [(k.version, k.state) for k in reg.keys("gate-2")] == [(1, "current")]
    finally:
        reg.close()


# ---- ingest after re-provisioning -----------------------------------------------------------
def test_after_reprovisioning_the_new_kid_is_money_and_the_compromised_one_quarantined(env):
    dev = env.device("gate-1")
    w = env.ingest()
    first = dev.record("s-1", 100)
    wait_for(lambda: dev.acked >= first, what="before the theft")
    late = dev.record("s-2", 900, publish=False)     # journaled under key 1, not yet sent
    late_raw = dev.journal[late]
    env.registry.set_status("gate-1", "revoked")
    new = os.urandom(32)
    assert env.registry.reprovision("gate-1", new, "gate", "sim-gate").key_version == 2
    dev.version, dev.key = 2, new    # what flashing the new config does: journal and counter stay
    dev.resend()                     # the record journaled under key 1, unchanged
    wait_for(lambda: dev.acked >= late, what="the compromised-kid record acked (so it is not resent)")
    assert not dev.journal
    after = dev.record("s-3", 300)   # under the new key: money
    wait_for(lambda: dev.acked >= after, what="the new-kid record acked")
    assert [r.seq for r in env.ledger.records("gate-1")] == [first, after]
    q = env.ledger.quarantined("gate-1")
    assert [(x["seq"], x["raw"], x["reason"]) for x in q] == [(late, late_raw, "compromised_key")]
    assert env.ledger.totals("gate-1") == {"EUR": 100 + 300}   # the late session under the stolen key: no money
    # anything else under the compromised kid (no record) is refused bad_kid
    t = "v1/dev/gate-1/up/rec"
    k1 = env.registry.key_version("gate-1", 1).key
    refused = w.stats["refused"].get("bad_kid", 0)
    dev.c.publish(t, build_mac0(k1, b"gate-1:1", t, encode_payload(hb(after + 1), topic("gate-1", "heartbeat"))),
                  qos=1).wait_for_publish(5)
    wait_for(lambda: w.stats["refused"].get("bad_kid", 0) > refused, what="the non-record refused")
    assert len(env.ledger.quarantined("gate-1")) == 1 and env.ledger.totals("gate-1") == {"EUR": 400}


# ---- the CLI on a real Mosquitto ------------------------------------------------------------
def _edgepay(reg_path):
    def run(*args):
        r = CliRunner().invoke(cli, ["--json", "--registry", str(reg_path), *args], catch_exceptions=False)
        assert "Traceback" not in r.output
        return r
    return run


def test_the_cli_reprovisions_a_revoked_device_and_refuses_the_others(own_broker, tmp_path):
    b = own_broker
    edgepay = _edgepay(tmp_path / "registry.db")
    out = tmp_path / "gate-9"
    prov = ("provision", "gate-9", "--board", "sim-gate", "--out", str(out), "--broker-dir", str(b.dir),
            "--device-broker", f"127.0.0.1:{b.port}")
    r = edgepay(*prov, "--reprovision")
    assert r.exit_code == 1 and "provision it normally" in r.stdout, r.output       # unknown
    r = edgepay(*prov)
    assert r.exit_code == 0, r.output
    old = json.loads((out / "config.json").read_text())
    r = edgepay(*prov, "--reprovision")
    assert r.exit_code == 1 and "rotate it with edgepay device rekey gate-9" in r.stdout, r.output  # active
    r = edgepay("device", "revoke", "gate-9", "--broker-dir", str(b.dir))
    assert r.exit_code == 0, r.output
    r = edgepay(*prov)
    assert r.exit_code == 1 and "config.json exists" in r.stdout, r.output
    r = edgepay(*prov[:4], "--out", str(tmp_path / "elsewhere"), *prov[6:])
    assert r.exit_code == 1 and "revoked: give --reprovision" in r.stdout, r.output
    r = edgepay(*prov, "--reprovision", "--key-version", "7")
    assert r.exit_code == 2 and "version 2" in r.stdout, r.output
    r = edgepay(*prov, "--reprovision")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["kid"] == "gate-9:2" and res["reprovisioned"] and res["broker_reload"]["reloaded"]
    assert "key" not in res                             # never printed unless --show-key
    new = json.loads((out / "config.json").read_text())
    assert (new["kid"], new["device"]) == ("gate-9:2", "gate-9")
    assert new["key"] != old["key"] and new["broker"]["password"] != old["broker"]["password"]
    assert old["key"] not in r.output and new["key"] not in r.output
    assert [ln.split(":", 1)[0] for ln in (b.dir / "passwd").read_text().splitlines()].count("gate-9") == 1
    c, got = _connect(b.port, "gate-9", old["broker"]["password"])
    assert got and str(got[0]) == "Not authorized"      # the stolen board's password: refused
    c.loop_stop()
    c.disconnect()
    c, got = _connect(b.port, "gate-9", new["broker"]["password"])
    assert got == [0] and c.is_connected()              # the re-provisioned board's: accepted
    c.loop_stop()
    c.disconnect()
    r = edgepay("device", "keys", "gate-9")
    assert [(k["version"], k["state"]) for k in json.loads(r.stdout)["keys"]] == [(1, "compromised"), (2, "current")]
    r = CliRunner().invoke(cli, ["--registry", str(tmp_path / "registry.db"), "device", "keys", "gate-9"])
    assert "compromised" in r.output and "audit only" in r.output
    reg = Registry(tmp_path / "registry.db")
    try:
        d = reg.get("gate-9")
        assert (d.status, d.kid, d.key.hex()) == ("active", b"gate-9:2", new["key"])
    finally:
        reg.close()
    r = edgepay(*prov, "--reprovision")
    assert r.exit_code == 1 and "rekey" in r.stdout      # active again: rotated, not re-provisioned
    # a decommissioned device: said what to do
    prov8 = ("provision", "gate-8", "--board", "sim-gate", "--out", str(tmp_path / "gate-8"),
             "--broker-dir", str(b.dir), "--device-broker", f"127.0.0.1:{b.port}")
    assert edgepay(*prov8).exit_code == 0
    assert edgepay("device", "decommission", "gate-8", "--broker-dir", str(b.dir), "--force").exit_code == 0
    r = edgepay(*prov8, "--reprovision")
    assert r.exit_code == 1 and "decommissioned" in r.stdout and "edgepay device revoke gate-8" in r.stdout, r.output
    # another kind of board for the id: refused
    r = edgepay("provision", "gate-9", "--board", "sim-vending", "--out", str(tmp_path / "v"), "--broker-dir",
                str(b.dir), "--device-broker", f"127.0.0.1:{b.port}", "--reprovision")
    assert r.exit_code == 1, r.output


# ---- the new config over the serial link ----------------------------------------------------
@pytest.fixture
def serial_board(tmp_path):
    from tests.serialboard import FakeSerialBoard
    b = FakeSerialBoard(tmp_path / "flash").start()
    yield b
    b.stop()


def test_the_reprovisioned_config_is_flashed_over_the_serial_link(tmp_path, serial_board):
    edgepay = _edgepay(tmp_path / "r.db")
    out = tmp_path / "dev"
    prov = ("provision", "gate-9", "--board", "sim-gate", "--out", str(out), "--broker-dir", str(tmp_path / "b"),
            "--device-broker", "127.0.0.1:9")   # nothing listens on 9
    assert edgepay(*prov).exit_code == 0
    built = json.loads(edgepay("build", "--board", "sim-gate", "--out", str(tmp_path / "bld")).stdout)
    flash = ("flash", "--board", "sim-gate", "--port", serial_board.port, "--config", str(out / "config.json"),
             "--bundle", built["out"])
    r = edgepay(*flash)
    assert r.exit_code == 0, r.output
    # rotated once over the air before the theft: the re-provisioned key is version 3, above any
    # key the board stored (firmware/rekey.py boot: config.json's then wins)
    reg = Registry(tmp_path / "r.db")
    try:
        v, k = reg.offer_next("gate-9")
        reg.verify_uplink(reg.get("gate-9"), *up(k, f"gate-9:{v}", 3, dev="gate-9"))
    finally:
        reg.close()
    assert edgepay("device", "revoke", "gate-9", "--broker-dir", str(tmp_path / "b")).exit_code == 0
    r = edgepay(*prov, "--reprovision")
    assert r.exit_code == 0 and json.loads(r.stdout)["kid"] == "gate-9:3", r.output
    r = edgepay(*flash)
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["verified"] == "sha256" and "config.json" in {f["file"] for f in info["files"]}
    assert (serial_board.dir / "config.json").read_bytes() == (out / "config.json").read_bytes()
    assert json.loads((serial_board.dir / "config.json").read_text())["kid"] == "gate-9:3"
    # flash soft-reset the board: the agent boots from the new config on the same flash (its
    # boot counter, journal and seq counter kept: the chain goes on under the new key)
    wait_for(lambda: b"agent gate-9 boot 2" in serial_board.transcript, timeout=30, what="the agent's boot")
    assert serial_board.transcript.count(b"agent gate-9 boot 1") == 1


def test_a_compromised_kid_record_that_cannot_be_placed_is_kept_unplaced():
    """quarantine_record with CompromisedKey: a record is kept under compromised_key (placed, or,
    without a usable seq/prev, Unplaceable with that reason); no record at all is refused bad_kid."""
    from host_tools.cloud.ingest_quarantine import Unplaceable, quarantine_record
    from host_tools.cloud.ledger import GENESIS
    from host_tools.protocol import encode
    t = topic("gate-1", "sess_close")
    rec = encode_payload({"type": "sess_close", "seq": 7, "prev": GENESIS, "sid": "s", "payer": "p", "t0": 1,
                          "amount": 5, "cur": "EUR", "t1": 2}, t)
    r = quarantine_record("gate-1", rec, b"raw", CompromisedKey(b"gate-1:1", rec))
    assert (r.seq, r.quarantine, r.raw) == (7, "compromised_key", b"raw")
    bad = encode({0: 8, 8: 3})   # a sess_close with no prev: it cannot be placed
    with pytest.raises(Unplaceable) as e:
        quarantine_record("gate-1", bad, b"raw2", CompromisedKey(b"gate-1:1", bad))
    assert e.value.code == "compromised_key" and e.value.raw == b"raw2"
    beat = encode_payload(hb(3), topic("gate-1", "heartbeat"))
    with pytest.raises(CompromisedKey) as e:
        quarantine_record("gate-1", beat, b"raw3", CompromisedKey(b"gate-1:1", beat))
    assert e.value.code == "bad_kid"


# ---- re-provisioned onto a fresh board --------------------------------------------------------
def test_a_fresh_board_under_the_reprovisioned_id_is_a_chain_of_its_own(env):
    """The new key goes to a replacement board: empty journal, seq from 1 again, genesis prev,
    the same session ids as the old board's first ones (the firmware numbers them by its boot
    counter). Its records are committed under the new key in the chain gate-1~2 (SPEC §6 "Chains
    and re-provisioning"): not CONFLICT or duplicates of the old seqs, not linked to the old
    chain, its sessions apart; a record of the old board under the compromised key is still
    quarantined compromised_key, in the old chain, and its ack never reaches the new board (whose
    unacknowledged record stays in its journal); each chain reconciles with its board's journal."""
    from host_tools.cloud.chains import chains, device_of, epoch_of
    from tests.rekeykit import RekeyDevice
    old = env.device("gate-1")
    w = env.ingest()
    s1, s2 = old.record("s-1", 100), old.record("s-2", 250)
    wait_for(lambda: old.acked >= s2, what="the old board's records")
    late = old.record("s-3", 900, publish=False)       # journaled by the old board, never sent
    late_raw = old.journal[late]
    old_records = [(r.seq, r.raw) for r in env.ledger.records("gate-1")]
    old.close()                                        # stolen: it never connects again
    env.devices.remove(old)
    env.registry.set_status("gate-1", "revoked")
    key = os.urandom(32)
    assert env.registry.reprovision("gate-1", key, "gate", "sim-gate").key_version == 2
    new = RekeyDevice(env.broker.port, "gate-1", env.broker.users["gate-1"], key, version=2)   # a fresh board
    env.devices.append(new)
    n1, n2 = new.record("s-1", 500), new.record("s-2", 700)
    assert (n1, n2) == (s1, s2)                        # the same seqs as the old board's ...
    wait_for(lambda: new.acked >= n2, what="the new board's records acked")
    got = env.ledger.records("gate-1~2")
    assert [r.seq for r in got] == [n1, n2] and got[0].prev == bytes(16)    # ... a chain of its own
    assert [(r.seq, r.raw) for r in env.ledger.records("gate-1")] == old_records   # the old one untouched
    assert w.stats["conflicts"] == 0 and w.stats["out_of_chain"] == 0 and w.stats["duplicates"] == 0
    assert {(s.device, s.sid, s.amount) for s in env.ledger.sessions("gate-1~2")} == {("gate-1~2", "s-1", 500),
                                                                                         ("gate-1~2", "s-2", 700)}
    assert env.ledger.totals("gate-1") == {"EUR": 350} and env.ledger.totals("gate-1~2") == {"EUR": 1200}
    assert chains(env.ledger, "gate-1") == ["gate-1", "gate-1~2"]
    assert (device_of("gate-1~2"), epoch_of("gate-1~2"), epoch_of("gate-1")) == ("gate-1", 2, None)
    # the old board's record under the compromised key reaches the cloud (it was in flight)
    pending = new.record("s-3", 40, publish=False)     # the new board's, not yet sent
    acked = new.acked
    quarantined_before = w.stats["quarantined"]
    new.c.publish("v1/dev/gate-1/up/rec", late_raw, qos=1).wait_for_publish(5)
    wait_for(lambda: w.stats["quarantined"] > quarantined_before, what="the compromised-key record quarantined")
    q = env.ledger.quarantined("gate-1")
    assert [(x["device"], x["seq"], x["raw"], x["reason"]) for x in q] == [("gate-1", late, late_raw, "compromised_key")]
    assert env.ledger.quarantined("gate-1~2") == []
    time.sleep(0.5)
    assert new.acked == acked and pending in new.journal   # no ack of the old chain reached the new board
    new.resend()
    wait_for(lambda: new.acked >= pending, what="the new board's third record")
    assert [r.seq for r in env.ledger.records("gate-1~2")] == [n1, n2, pending]
    assert env.ledger.totals("gate-1~2") == {"EUR": 1240} and env.ledger.totals("gate-1") == {"EUR": 350}
    # each board reconciles with its own chain
    rec = env.ledger.reconcile("gate-1~2", [(r.seq, r.raw) for r in env.ledger.records("gate-1~2")])
    assert (rec.missing, rec.mismatched, rec.extra) == ([], [], [])
    rec = env.ledger.reconcile("gate-1", old_records)
    assert (rec.missing, rec.mismatched, rec.extra) == ([], [], [])
    # the new board rotates its key over the air: its chain goes on under key 3
    from host_tools.cloud.rekey import rotate
    rotate(env.client, "gate-1", timeout=5)
    assert new.version == 3
    n4 = new.record("s-4", 60)
    wait_for(lambda: new.acked >= n4, what="a record under the rotated key")
    assert [r.seq for r in env.ledger.records("gate-1~2")] == [n1, n2, pending, n4]
    assert w.stats["conflicts"] == 0 and w.stats["out_of_chain"] == 0


def test_the_same_board_reprovisioned_goes_on_in_its_chain_and_a_second_genesis_is_refused(env):
    """The recovered board (journal kept) goes on under the device id; a genesis record of a
    device never re-provisioned is refused out_of_chain as ever (no chain of its own)."""
    dev = env.device("gate-1")
    w = env.ingest()
    a = dev.record("s-1", 100)
    wait_for(lambda: dev.acked >= a, what="before")
    env.registry.set_status("gate-1", "revoked")
    new = os.urandom(32)
    env.registry.reprovision("gate-1", new, "gate", "sim-gate")
    dev.version, dev.key = 2, new
    b = dev.record("s-2", 200)
    wait_for(lambda: dev.acked >= b, what="after, same board")
    assert [r.seq for r in env.ledger.records("gate-1")] == [a, b] and env.ledger.records("gate-1~2") == []
    other = env.device("gate-2")
    c = other.record("s-1", 5)
    wait_for(lambda: other.acked >= c, what="gate-2")
    other.prev, other.seq = bytes(16), 0            # its flash wiped, no re-provisioning
    other.record("s-9", 7)
    wait_for(lambda: w.stats["out_of_chain"] + w.stats["conflicts"] >= 1, what="the second genesis refused")
    assert [r.seq for r in env.ledger.records("gate-2")] == [c] and env.ledger.records("gate-2~1") == []
