"""The ingest worker (host_tools/cloud/ingest.py) with a real Mosquitto and fake devices.

The fake devices are MQTT 3.1.1 clients with their own credentials that make correctly signed,
chained records with the host codec (DeviceChain from test_ledger), keep every record until a
verified ack covers it, answer `resend: true` by sending every unacknowledged record again, and
(like a real device's retry timer) resend unacknowledged records when told to.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.ingest import IngestWorker
from host_tools.cloud.ledger import GENESIS
from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.registry import Registry
from host_tools.protocol import build_mac0, encode_payload, open_message, topic
from tests.test_ledger import DeviceChain

ROOT = Path(__file__).resolve().parents[1]
CLOUD = ("cloud", "cloud-pw")


def wait_for(cond, timeout=20.0, tick=None, every=1.0, what="condition"):
    deadline = time.monotonic() + timeout
    last_tick = time.monotonic()
    while time.monotonic() < deadline:
        if cond():
            return
        if tick is not None and time.monotonic() - last_tick >= every:
            last_tick = time.monotonic()
            tick()
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _nodelay(client, userdata, sock):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class FakeDevice:
    def __init__(self, broker, registry: Registry, device: str, password: str, checker=None):
        self.id = device
        self.chain = DeviceChain(device)
        registry.add(device, self.chain.key, "gate", "sim")
        self.topic = topic(device, "sess_open")
        self.ack_topic = topic(device, "ack")
        self.unacked: dict[int, bytes] = {}
        self.acks: list[dict] = []
        self.upto = 0
        self.violations: list[str] = []
        self.checker = checker   # a Ledger of its own: every ack must be covered by committed rows
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=paho.MQTTv311)
        self.client.username_pw_set(device, password)
        self.client.on_socket_open = _nodelay
        self.client.on_message = self._on_ack
        self.client.max_inflight_messages_set(100)
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(self.ack_topic, 1)
        self.client.loop_start()

    def _on_ack(self, client, userdata, m):
        try:
            ack = open_message(self.chain.key, self.chain.kid, m.topic, m.payload)
        except Exception as e:  # noqa: BLE001
            self.violations.append(f"bad ack: {e}")
            return
        if ack["aud"] != self.id:
            self.violations.append("ack for another device")
            return
        if self.checker is not None:
            have = {r.seq for r in self.checker.records(self.id)}
            sent = {s for s, _ in self.chain.sent if s <= ack["upto"]}
            if not sent <= have:
                self.violations.append(f"ack upto {ack['upto']} before commit of {sorted(sent - have)}")
        with self._lock:
            self.acks.append(ack)
            if ack["upto"] >= self.upto:
                self.upto = ack["upto"]
                for s in [s for s in self.unacked if s <= ack["upto"]]:
                    del self.unacked[s]
            resend = sorted(self.unacked.items()) if ack.get("resend") else []
        for _, raw in resend:
            self.client.publish(self.topic, raw, qos=1)

    def send(self, items, publish=True, retain=False):
        for seq, raw in items:
            with self._lock:
                self.unacked[seq] = raw
            if publish:
                self.client.publish(self.topic, raw, qos=1, retain=retain)

    def publish_raw(self, raw, on_topic=None, retain=False):
        self.client.publish(on_topic or self.topic, raw, qos=1, retain=retain).wait_for_publish(5)

    def retry(self):
        with self._lock:
            items = sorted(self.unacked.items())
        for _, raw in items:
            self.client.publish(self.topic, raw, qos=1)

    def all_acked(self):
        with self._lock:
            return not self.unacked and self.upto >= self.chain.seq

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def db_url(ledger_url):
    return ledger_url  # conftest: SQLite, then PostgreSQL


@pytest.fixture
def env(broker, db_url, tmp_path):
    """A registry file, the ledger url, helpers to start workers and devices; all closed after."""
    class Env:
        pass
    e = Env()
    e.broker, e.url, e.tmp = broker, db_url, tmp_path
    e.registry_path = str(tmp_path / "registry.db")
    e.registry = Registry(e.registry_path)
    e.checker = open_ledger(db_url)
    e.workers, e.devices, e.procs, e.ledgers = [], [], [], []

    def worker(**kw):
        led = open_ledger(db_url)
        e.ledgers.append(led)
        w = IngestWorker(e.registry, led, BrokerSettings("127.0.0.1", broker.cloud_port, *CLOUD), **kw).start()
        e.workers.append(w)
        return w

    def device(name, password=None):
        if name not in broker.users:
            broker.add_user(name, password or f"{name}-pw")
        d = FakeDevice(broker, e.registry, name, broker.users[name], checker=e.checker)
        e.devices.append(d)
        return d

    def proc(*extra, group="ingest", stall=None):
        return spawn_worker(e, *extra, group=group, stall=stall)
    e.worker, e.device, e.proc = worker, device, proc
    yield e
    for d in e.devices:
        d.close()
    for w in e.workers:
        w.stop()
    for p in e.procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)
    for led in e.ledgers + [e.checker]:
        led.close()
    e.registry.close()


def spawn_worker(e, *extra, group="ingest", stall=None):
    """An ingest worker process; with stall=(ms, file), every write transaction stalls before its
    COMMIT and logs its row count to file first (tests/ingest_stalled.py)."""
    run = [str(ROOT / "tests" / "ingest_stalled.py"), str(stall[0]), str(stall[1])] if stall else ["-m", "host_tools.cloud.ingest"]
    cmd = [sys.executable, *run, "--port", str(e.broker.cloud_port),
           "--user", CLOUD[0], "--registry", e.registry_path, "--db", e.url, "--group", group, *extra]
    p = subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "EDGEPAY_MQTT_PASSWORD": CLOUD[1]})
    e.procs.append(p)
    line = p.stdout.readline()
    assert line.strip() == "ready", f"worker did not start: {line!r} {p.stderr.read() if p.poll() is not None else ''}"
    return p


def assert_ledger_is_exactly(ledger, devices):
    for d in devices:
        recs = ledger.records(d.id)
        assert [(r.seq, r.raw) for r in recs] == d.chain.sent, f"{d.id}: ledger differs from what was sent"
        prev = GENESIS
        for r in recs:
            assert r.prev == prev
            prev = r.hash
        assert ledger.head(d.id).seq == d.chain.seq
        assert ledger.reconcile(d.id, d.chain.sent).ok
    assert ledger.count() == sum(len(d.chain.sent) for d in devices)


# ---- the happy path ------------------------------------------------------------------------------
def test_records_are_committed_then_acked(env):
    w = env.worker(batch_ms=5)
    devs = [env.device("dev1"), env.device("dev2")]
    for i, d in enumerate(devs):
        for k in range(3):
            d.send(d.chain.session(f"s{k}", 100 * (k + 1) + i, updates=2))
    wait_for(lambda: all(d.all_acked() for d in devs), what="every record acked")
    assert_ledger_is_exactly(env.checker, devs)
    assert all(not d.violations for d in devs), [d.violations for d in devs]
    assert all(a["upto"] <= d.chain.seq and "resend" not in a for d in devs for a in d.acks)
    s = w.stats
    assert s["committed"] == 24 and s["refused"] == {} and s["conflicts"] == 0 and s["acks"] >= 2
    assert env.checker.totals() == {"EUR": 2 * 600 + 3}
    assert [(x.sid, x.state, x.amount) for x in env.checker.sessions("dev1")] == [
        ("s0", "closed", 100), ("s1", "closed", 200), ("s2", "closed", 300)]


def test_ack_is_published_only_after_the_commit(env):
    """The worker's ack publish happens after Ledger.commit has returned (the transaction is
    durable): a slow commit delays the ack, and the ack never precedes it."""
    w = env.worker(batch_ms=1)
    events: list[tuple[str, float]] = []
    led = w.ledger

    commit = led._commit

    def slow():  # inside the write transaction, before its COMMIT
        time.sleep(0.3)
        events.append(("commit-start", time.monotonic()))
        commit()
    led._commit = slow
    orig = w._send_ack

    def send_ack(dev, upto, resend, **kw):
        events.append(("ack", time.monotonic()))
        orig(dev, upto, resend, **kw)
    w._send_ack = send_ack
    d = env.device("dev1")
    t0 = time.monotonic()
    d.send([d.chain.make("sess_open", sid="x", payer="p", t0=1)])
    wait_for(d.all_acked, what="ack")
    assert time.monotonic() - t0 >= 0.3
    assert [k for k, _ in events][:2] == ["commit-start", "ack"]
    assert not d.violations and env.checker.count() == 1


# ---- duplicates ----------------------------------------------------------------------------------
def test_duplicates_are_stored_once_and_acked_again(env):
    w1 = env.worker(group="ingest")
    w2 = env.worker(group="ingest")
    auditor = env.worker(group=None)   # a plain subscription: sees every message as well
    d = env.device("dev1")
    items = d.chain.session("a", 700, updates=3) + d.chain.session("b", 5)
    d.send(items)
    for _, raw in items[:3]:
        d.publish_raw(raw)                   # the same record published twice (a QoS1 redelivery)
    d.publish_raw(items[0][1], retain=True)  # retained: the flag is ignored, it is a duplicate
    wait_for(d.all_acked, what="all acked")
    n = env.checker.count()
    assert n == len(items)
    acks_before = len(d.acks)
    # replay old, acknowledged records: nothing new is stored, but they are acked again
    for _, raw in items:
        d.publish_raw(raw)
    wait_for(lambda: len(d.acks) > acks_before, what="ack of a replay")
    # a worker connecting later gets the retained copy: one more duplicate
    late = env.worker(group="late")
    wait_for(lambda: late.stats["duplicates"] >= 1, what="retained copy seen")
    time.sleep(0.3)
    assert env.checker.count() == n
    assert_ledger_is_exactly(env.checker, [d])
    stats = [w.stats for w in (w1, w2, auditor, late)]
    assert sum(s["committed"] for s in stats) == n
    assert sum(s["duplicates"] for s in stats) >= n + 3 + 1   # the auditor's copies, re-sends, replays
    assert late.stats["retained"] >= 1
    assert all(s["conflicts"] == 0 and s["out_of_chain"] == 0 and not s["refused"] for s in stats)
    assert not d.violations


# ---- gaps and resends ----------------------------------------------------------------------------
def test_gap_asks_for_a_resend_and_the_chain_completes(env):
    w = env.worker(hold_ms=150)
    d = env.device("dev1")
    items = d.chain.session("a", 300, updates=3)   # 1..5
    d.send(items[:2])
    d.send(items[2:3], publish=False)               # seq 3 is lost on the way
    wait_for(lambda: d.upto == 2, what="ack upto 2")
    d.send(items[3:])
    wait_for(d.all_acked, what="chain completed after the resend")
    assert any(a.get("resend") and a["upto"] == 2 for a in d.acks)
    s = w.stats
    assert s["gaps"] >= 1 and s["resend_requests"] >= 1 and s["committed"] == 5
    assert_ledger_is_exactly(env.checker, [d])
    assert not d.violations


def test_resend_requests_are_rate_limited(env):
    w = env.worker(hold_ms=0, resend_interval_s=30)
    d = env.device("dev1")
    items = d.chain.session("a", 300, updates=5)   # 1..7
    d.send(items[:1])
    wait_for(lambda: d.upto == 1, what="first ack")
    d.unacked.clear()                     # this device does not answer resend requests
    for seq, raw in items[2:]:
        d.publish_raw(raw)
        time.sleep(0.05)
    wait_for(lambda: w.stats["gaps"] >= 5, what="gaps seen")
    assert w.stats["resend_requests"] == 1
    assert env.checker.count() == 1


def test_out_of_order_across_two_workers_is_held_not_resent(env):
    """A shared subscription spreads one device's records over both workers: later records often
    reach the ledger before their predecessors. They are held briefly, not answered with resends."""
    workers = [env.worker(hold_ms=2000, batch_ms=2), env.worker(hold_ms=2000, batch_ms=2)]
    devs = [env.device("dev1"), env.device("dev2")]
    for d in devs:
        for k in range(10):
            d.send(d.chain.session(f"s{k}", 10 + k))
    wait_for(lambda: all(d.all_acked() for d in devs), what="all acked")
    assert_ledger_is_exactly(env.checker, devs)
    stats = [w.stats for w in workers]
    assert sum(s["committed"] for s in stats) == 60
    assert all(s["committed"] > 0 for s in stats)       # both took part
    assert sum(s["resend_requests"] for s in stats) == 0
    assert not any(d.violations for d in devs)


# ---- refused input -------------------------------------------------------------------------------
def test_forged_and_invalid_records_are_refused_and_reported(env, broker):
    w = env.worker(hold_ms=100)
    d1, d2 = env.device("dev1"), env.device("dev2")
    good = d1.chain.make("sess_open", sid="a", payer="p", t0=1)
    d1.send([good])
    wait_for(d1.all_acked, what="first record")
    c = d1.chain
    # forged MAC: one bit of the tag flipped
    seq, raw = c.make("sess_update", sid="a", amount=1, cur="EUR", t1=2, advance=False)
    d1.publish_raw(raw[:-1] + bytes([raw[-1] ^ 1]))
    # dev2's key under dev1's kid, and dev2's key and kid, on dev1's topic
    d1.publish_raw(c.make("sess_update", sid="a", amount=1, cur="EUR", t1=2, key=d2.chain.key, advance=False)[1])
    cloud = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    cloud.username_pw_set(*CLOUD)
    cloud.connect("127.0.0.1", broker.cloud_port)
    cloud.loop_start()
    other = d2.chain.make("sess_open", sid="z", payer="p", t0=1, advance=False)[1]
    cloud.publish(d1.topic, other, qos=1).wait_for_publish(5)             # dev2's record on dev1's topic
    # wrong topic: signed for up/evt, sent on up/rec; and a heartbeat signed for up/rec
    d1.publish_raw(c.make("sess_update", sid="a", amount=1, cur="EUR", t1=2, on_topic=topic("dev1", "event"),
                          advance=False)[1])
    hb = build_mac0(c.key, c.kid, d1.topic, encode_payload(
        {"type": "heartbeat", "seq": 50, "uptime": 1, "heap": 1, "jdepth": 0, "clock": 1}))
    d1.publish_raw(hb)
    d1.publish_raw(b"\x1c")  # not CBOR at all
    # a record for a device the registry does not know (the cloud user can write anywhere)
    cloud.publish("v1/dev/ghost/up/rec", other, qos=1).wait_for_publish(5)
    cloud.loop_stop()
    cloud.disconnect()
    # out of chain: links to genesis although a head exists; same seq as the head, other bytes
    d1.publish_raw(c.make("sess_open", sid="b", payer="p", t0=1, prev=GENESIS, advance=False)[1])
    dup = DeviceChain("dev1", key=c.key)
    d1.publish_raw(dup.make("sess_open", sid="a", payer="someone-else", t0=1)[1])
    wait_for(lambda: sum(w.stats["refused"].values()) >= 7 and w.stats["conflicts"] >= 1
             and w.stats["out_of_chain"] >= 1, what="all refusals counted")
    s = w.stats
    assert s["refused"] == {"bad_mac": 3, "bad_kid": 1, "bad_topic": 1, "malformed": 1, "unknown_device": 1}, s
    assert s["conflicts"] == 1 and s["out_of_chain"] == 1
    assert {a["kind"] for a in w.alarms} == {"conflict", "out_of_chain"}
    assert {r["kind"] for r in env.checker.rejects("dev1")} == {"conflict", "out_of_chain"}
    assert [r.raw for r in env.checker.records()] == [good[1]]
    # the device's real chain goes on undisturbed
    d1.send(c.session("b", 40))
    wait_for(d1.all_acked, what="chain continues")
    assert_ledger_is_exactly(env.checker, [d1])
    assert not d1.violations


# ---- crash: SIGKILL mid-batch ------------------------------------------------------------------
def test_worker_killed_mid_batch_loses_and_doubles_nothing(env):
    stall = env.tmp / "stall"
    victim = env.proc("--batch-ms", "20", stall=(400, stall))
    devs = [env.device(f"dev{i}", "pw") for i in (1, 2, 3)]
    for d in devs:
        for k in range(8):
            d.send(d.chain.session(f"s{k}", 7 * k + 1))
    # wait until the victim is inside a write transaction with rows, then SIGKILL it
    wait_for(lambda: stall.exists() and any(int(x) > 0 for x in stall.read_text().split()), what="a batch in flight")
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    committed_at_kill = env.checker.count()
    assert committed_at_kill < sum(len(d.chain.sent) for d in devs)
    # another worker takes over; the devices resend what was not acknowledged (their retry timer)
    env.proc("--batch-ms", "5")
    wait_for(lambda: all(d.all_acked() for d in devs), timeout=40,
             tick=lambda: [d.retry() for d in devs], every=1.0, what="all acked after the crash")
    assert_ledger_is_exactly(env.checker, devs)
    assert env.checker.rejects() == []
    assert not any(d.violations for d in devs)


def test_two_worker_processes_one_killed(env):
    """Two worker processes share the group; one is killed mid-batch; the other and a restarted
    one finish the job exactly once."""
    stall = env.tmp / "stall"
    victim = env.proc(stall=(300, stall))
    survivor = env.proc()
    devs = [env.device(f"dev{i}", "pw") for i in (1, 2)]
    for d in devs:
        for k in range(10):
            d.send(d.chain.session(f"s{k}", k + 1, updates=2))
    wait_for(lambda: stall.exists() and any(int(x) > 0 for x in stall.read_text().split()), what="a batch in flight")
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    env.proc()  # restarted
    wait_for(lambda: all(d.all_acked() for d in devs), timeout=40,
             tick=lambda: [d.retry() for d in devs], every=1.0, what="all acked")
    assert_ledger_is_exactly(env.checker, devs)
    survivor.send_signal(signal.SIGTERM)
    out, _ = survivor.communicate(timeout=20)
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["conflicts"] == 0 and stats["refused"] == {}
