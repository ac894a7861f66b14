"""Ingest on the 3-node NATS cluster as competing consumers (host_tools/cloud/jetstream.py): device
records captured by the replicated JetStream stream EDGEPAY_UP, shared by ingest workers on one
durable pull consumer, acked to the stream only after the ledger commit.

- two workers split the records of several devices, each committed exactly once;
- a worker killed with -9 mid-batch: its unacked messages go to the other after ack_wait;
- poison messages (a forged MAC, garbage, oversize, an unknown device) are terminated and counted,
  and nothing waits behind them;
- the node leading the stream killed during ingest: nothing lost (replicas=3);
- a device's credentials reach neither the stream nor its consumer;
- `edgepay serve`'s ingest part takes [broker] servers and consumes from the stream.

The devices are MQTT 3.1.1 stand-ins (tests/test_ingest.py FakeDevice: signed, chained records,
kept until an ack covers them). Skipped without nats-server / nats-py; failed in CI."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from host_tools.cloud.ingest import IngestWorker
from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.registry import Registry
from tests.natskit import start_cluster
from tests.test_ingest import FakeDevice, assert_ledger_is_exactly, wait_for

ROOT = Path(__file__).resolve().parents[1]
CLOUD = ("cloud", "cloud-pw")
STREAM = "EDGEPAY_UP"


@pytest.fixture(scope="module")
def cluster():
    c = start_cluster(dict([CLOUD]), (CLOUD[0],))
    yield c
    c.close()


def js_call(cluster, fn):
    """Run `await fn(js)` on a short-lived cloud NATS connection; its result."""
    import nats

    async def go():
        nc = await nats.connect(list(cluster.nats_urls()), user=CLOUD[0], password=CLOUD[1], connect_timeout=2)
        try:
            return await fn(nc.jetstream(timeout=5))
        finally:
            await nc.close()
    return asyncio.run(go())


@pytest.fixture
def env(cluster, tmp_path):
    """A fresh stream, a registry and SQLite ledger file, helpers for workers and devices."""
    import nats.js.errors

    async def drop(js):
        try:
            await js.delete_stream(STREAM)
        except nats.js.errors.NotFoundError:
            pass
    js_call(cluster, drop)
    e = SimpleNamespace(cluster=cluster, tmp=tmp_path, url=f"sqlite:///{tmp_path / 'ledger.db'}",
                        registry_path=str(tmp_path / "registry.db"), workers=[], devices=[], procs=[], ledgers=[])
    e.registry = Registry(e.registry_path)
    e.checker = open_ledger(e.url)

    def settings(node=0):
        return BrokerSettings("127.0.0.1", cluster.nodes[node].mqtt_port, *CLOUD, engine="nats",
                              servers=cluster.nats_urls())

    def worker(node=0, **kw):
        opts = {"ack_wait_s": 2.0, "fetch_max": 20, "acks": os.environ.get("ACKS", "nats"), **kw.pop("feed", {})}
        led = open_ledger(e.url)
        e.ledgers.append(led)
        w = IngestWorker(e.registry, led, settings(node), feed_options=opts, **kw).start()
        e.workers.append(w)
        return w

    def device(name, node=0):
        cluster.add_user(name, f"{name}-pw")
        d = FakeDevice(SimpleNamespace(port=cluster.nodes[node].mqtt_port), e.registry, name, f"{name}-pw",
                       checker=e.checker)
        e.devices.append(d)
        subscribed(d)
        return d
    e.settings, e.worker, e.device = settings, worker, device
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


def subscribed(d, timeout=10.0):
    """Subscribe the device's ack topic again and wait for the grant: a QoS 1 subscription on NATS
    is a JetStream consumer, whose creation can outlast a busy moment of the cluster."""
    import queue
    got: queue.Queue = queue.Queue()
    d.connects = 0

    def again(c, u, f, rc, p):   # as a device does: a clean session is subscribed again at each connect
        d.connects += 1
        c.subscribe(d.ack_topic, 1)

    def granted(c, u, mid, rcs, p):  # ...and a refused one ends the link (firmware/mqtt_client.py)
        got.put([r.value for r in rcs])
        if any(r.is_failure for r in rcs) and d.connects:
            sock = c.socket()
            if sock is not None:
                sock.close()
    d.client.on_connect = again
    d.client.on_subscribe = granted
    for _ in range(3):
        d.client.subscribe(d.ack_topic, 1)
        try:
            if got.get(timeout=timeout) == [1]:
                return
        except queue.Empty:
            pass
    raise AssertionError(f"{d.id}: its ack subscription was never granted")


def stream_state(cluster):
    async def info(js):
        s = await js.stream_info(STREAM)
        c = await js.consumer_info(STREAM, "ingest")
        return {"messages": s.state.messages, "leader": s.cluster.leader if s.cluster else None,
                "replicas": 1 + len(s.cluster.replicas or []) if s.cluster else 1,
                "pending": c.num_pending, "ack_pending": c.num_ack_pending, "redelivered": c.num_redelivered}
    return js_call(cluster, info)


def send_sessions(devices, sessions, amount=500):
    for d in devices:
        for s in range(sessions):
            d.send(d.chain.session(f"s{s}", amount + s))


def all_acked(devices, timeout=30.0, retry=True, workers=()):
    """Every device's records acked; retry: the devices resend what is unacked every 3 s."""
    try:
        wait_for(lambda: all(d.all_acked() for d in devices), timeout,
                 tick=(lambda: [d.retry() for d in devices]) if retry else None, every=3.0, what="every record acked")
    except AssertionError as e:
        state = [(d.id, d.upto, d.chain.seq, len(d.unacked), getattr(d, "connects", None)) for d in devices]
        raise AssertionError(f"{e}: (device, acked upto, last seq, unacked, connects) {state}; "
                             f"workers {[w.stats for w in workers]}") from None
    for d in devices:
        assert d.violations == [], d.violations


def test_two_workers_share_the_stream_and_commit_each_record_once(env):
    w1, w2 = env.worker(0), env.worker(1)
    devs = [env.device(f"js-a{i}", node=i % 3) for i in range(6)]
    send_sessions(devs, 8)                                  # 6 x 24 records, interleaved
    all_acked(devs, retry=False, workers=[w1, w2])          # the stream and the acks, no device retry
    assert_ledger_is_exactly(env.checker, devs)
    s1, s2 = w1.stats, w2.stats
    assert s1["committed"] > 0 and s2["committed"] > 0, (s1["committed"], s2["committed"])
    assert s1["committed"] + s2["committed"] == sum(len(d.chain.sent) for d in devs)
    assert s1["terminated"] == s2["terminated"] == 0
    st = stream_state(env.cluster)
    assert st["replicas"] == 3
    wait_for(lambda: stream_state(env.cluster)["messages"] == 0, 10, what="work queue emptied by the acks")


def test_a_worker_killed_mid_batch_has_its_messages_redelivered_to_the_other(env):
    led = open_ledger(env.url)   # now: opening it would wait for the victim's write lock
    env.ledgers.append(led)
    stall = env.tmp / "stall.log"
    cmd = [sys.executable, str(ROOT / "tests" / "ingest_stalled.py"), "3000", str(stall),
           "--engine", "nats", "--port", str(env.cluster.nodes[0].mqtt_port), "--servers", ",".join(env.cluster.nats_urls()),
           "--ack-wait", "2", "--user", CLOUD[0], "--registry", env.registry_path, "--db", env.url, "--group", "ingest"]
    victim = subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "EDGEPAY_MQTT_PASSWORD": CLOUD[1]})
    env.procs.append(victim)
    assert victim.stdout.readline().strip() == "ready", victim.stderr.read() if victim.poll() is not None else ""
    devs = [env.device(f"js-k{i}", node=1 + i % 2) for i in range(4)]
    send_sessions(devs, 6)
    wait_for(lambda: stall.exists() and any(int(x) > 0 for x in stall.read_text().split()), 15,
             what="the victim holding a batch in its commit")
    # the survivor holds out-of-order records longer than ack_wait: the missing ones come back
    # from the stream, not from the devices (no retry tick)
    survivor = IngestWorker(env.registry, led, env.settings(2), hold_ms=20000,
                            feed_options={"ack_wait_s": 2.0, "fetch_max": 20}).start()
    env.workers.append(survivor)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    all_acked(devs, timeout=40, retry=False, workers=[survivor])
    assert_ledger_is_exactly(env.checker, devs)
    s = survivor.stats
    assert s["stream"]["redelivered"] > 0 and s["resend_requests"] == 0, s
    assert s["committed"] == sum(len(d.chain.sent) for d in devs)   # the victim committed nothing
    wait_for(lambda: stream_state(env.cluster)["messages"] == 0, 10, what="work queue emptied")


def test_poison_messages_are_terminated_and_counted_while_the_rest_go_on(env):
    w = env.worker(0)
    good, other = env.device("js-p0", node=1), env.device("js-p1", node=2)
    env.cluster.add_user("js-ghost", "ghost-pw")   # a broker user the registry does not know
    ghost = FakeDevice(SimpleNamespace(port=env.cluster.nodes[0].mqtt_port), Registry(), "js-ghost", "ghost-pw")
    env.devices.append(ghost)
    good.send(good.chain.session("s0", 100))
    _, forged = good.chain.make("sess_open", sid="f", payer="p", t0=1, slot=1, key=os.urandom(32), advance=False)
    good.publish_raw(forged)                          # bad MAC
    good.publish_raw(b"\xff garbage \x00" * 3)         # not CBOR
    good.publish_raw(b"\xa0" * 3000)                   # over the 2048-byte message bound
    ghost.publish_raw(ghost.chain.make("sess_open", sid="g", payer="p", t0=1, slot=1)[1])  # unknown device
    good.send(good.chain.session("s1", 200))
    other.send(other.chain.session("s0", 300))
    all_acked([good, other], retry=False, workers=[w])
    assert_ledger_is_exactly(env.checker, [good, other])
    wait_for(lambda: w.stats["terminated"] >= 4, 5, what="four poison messages terminated")
    s = w.stats
    assert s["terminated"] == 4 and s["stream"]["terminated"] == 4, s
    assert s["refused"].get("bad_mac") == 1 and s["refused"].get("unknown_device") == 1, s["refused"]
    wait_for(lambda: stream_state(env.cluster)["messages"] == 0, 10, what="no poison left in the stream")
    assert stream_state(env.cluster)["redelivered"] == 0     # terminated, never retried


def test_the_stream_leader_killed_during_ingest_loses_nothing(env):
    cluster = env.cluster
    env.worker(0)
    env.worker(1)
    leader = stream_state(cluster)["leader"]
    dead = [n.name for n in cluster.nodes].index(leader)
    alive = [i for i in range(3) if i != dead]
    devs = [env.device(f"js-n{i}", node=alive[i % 2]) for i in range(4)]
    try:
        send_sessions(devs, 1)
        all_acked(devs, retry=False, workers=env.workers)   # every device subscribed and acked before the kill
        send_sessions(devs, 4)
        t0 = time.monotonic()
        cluster.kill(dead)
        send_sessions(devs, 4)
        # records the stream missed while it had no leader: the devices resend them
        all_acked(devs, timeout=45, workers=env.workers)
        print(f"\nstream leader {leader} killed -> every record committed and acked: {time.monotonic() - t0:.1f} s "
              f"(device connects: {[d.connects for d in devs]})")
        assert_ledger_is_exactly(env.checker, devs)
        assert stream_state(cluster)["leader"] != leader
    finally:
        cluster.restart(dead)


def test_a_device_cannot_touch_the_stream_or_its_consumer(env):
    """Its own credentials, over MQTT: every JetStream API, ack and inbox topic is refused; over
    core NATS: no connection at all. The stream, its consumer and the device's own ingest stay."""
    import queue
    import socket
    env.worker(0)
    dev = env.device("js-d0", node=0)
    dev.send(dev.chain.session("s0", 100))
    all_acked([dev], retry=False)
    got: queue.Queue = queue.Queue()
    dev.client.on_subscribe = lambda c, u, mid, rcs, p: got.put([r.value for r in rcs])
    for flt in ("$JS/API/#", "$JS/API/CONSUMER/MSG/NEXT/EDGEPAY_UP/ingest", "_INBOX/#", "$JS/ACK/#",
                "v1/dev/+/up/rec", "v1/dev/js-d0/up/rec"):
        dev.client.subscribe(flt, 1)
        assert got.get(timeout=5) == [0x80], flt
    for t in ("$JS/API/STREAM/DELETE/EDGEPAY_UP", "$JS/API/STREAM/PURGE/EDGEPAY_UP",
              "$JS/API/CONSUMER/DELETE/EDGEPAY_UP/ingest", "$JS/API/CONSUMER/MSG/NEXT/EDGEPAY_UP/ingest"):
        dev.client.publish(t, b"{}", 1)
    time.sleep(0.5)
    st = stream_state(env.cluster)                         # still there, its consumer too
    assert st["replicas"] == 3 and st["pending"] == 0
    with socket.create_connection(("127.0.0.1", env.cluster.nodes[0].client_port), timeout=5) as s:
        s.recv(4096)
        s.sendall(b'CONNECT {"user":"js-d0","pass":"js-d0-pw","verbose":false}\r\nPING\r\n')
        assert b"Authorization Violation" in s.recv(4096)  # no NATS connection: no JetStream API at all
    dev.send(dev.chain.session("s1", 200))                 # and its own records still go in
    all_acked([dev], retry=False)
    assert_ledger_is_exactly(env.checker, [dev])


def test_edgepay_serve_ingests_on_the_clusters_stream(env, monkeypatch):
    """`edgepay serve --only ingest` with [broker] engine = "nats" and servers: its ingest part is a
    competing consumer on the stream, not an MQTT subscriber."""
    from host_tools.service.config import ConfigError, load
    from host_tools.service.run import Service
    servers = ", ".join(f'"{u}"' for u in env.cluster.nats_urls())
    cfg = env.tmp / "edgepay.toml"
    cfg.write_text(f'[broker]\nport = {env.cluster.nodes[1].mqtt_port}\nengine = "nats"\nservers = [{servers}]\n'
                   f'password_env = "TEST_MQTT_PW"\n'
                   f'[store]\nregistry = "{env.registry_path}"\nledger = "{env.url}"\n')
    monkeypatch.setenv("TEST_MQTT_PW", CLOUD[1])
    svc = Service(load(cfg), only=["ingest"]).start()
    try:
        assert svc.ingest is not None and svc.ingest.subscription.startswith("jetstream:EDGEPAY_UP/ingest")
        assert svc.not_ready() == []
        dev = env.device("js-s0", node=2)
        dev.send(dev.chain.session("s0", 100))
        all_acked([dev], retry=False, workers=[svc.ingest])
        assert_ledger_is_exactly(env.checker, [dev])
        assert svc.ingest.stats["stream"]["acked"] == 3
    finally:
        svc.stop()
    cfg.write_text('[broker]\nservers = "nats://x:4222"\n')   # a string, not a list
    with pytest.raises(ConfigError, match="servers is a list"):
        load(cfg)
    assert load(None, env={"EDGEPAY_BROKER_SERVERS": "nats://a:4222, nats://b:4222"}).servers == \
        ("nats://a:4222", "nats://b:4222")
