"""firmware/mqtt_client.py on the MicroPython VM (64K heap) against a real Mosquitto
(host_tools/broker.py) with paho-mqtt as the cloud side: publish/subscribe and the ACL, refusal
and backoff, QoS 1 redelivery, handler errors, retransmission across a broker restart, the will,
keepalive, reconnect and resubscribe, oversize packets, and TLS. The VM agent and the cloud client
are in tests/mqttkit.py; the wire-level tests against a raw-socket fake broker are in
tests/test_mqtt_vm_wire.py."""
import queue
import time

import pytest

from host_tools.broker import Broker
from host_tools.tls import write_pki
from tests.mqttkit import DEV, DN, UP, USERS, Cloud
from tests.mqttkit import compiled_client, make_agents  # noqa: F401 (the mpy_dir and agents fixtures)


@pytest.fixture
def cloud(broker):
    c = Cloud(broker.port)
    yield c
    c.close()


# ---- tests against Mosquitto ----------------------------------------------------------------
def test_connect_publish_subscribe(broker, cloud, agents):
    a = agents({"port": broker.port, "subs": [[DN + "#", 1, "ok"]]})
    a.wait_ev("state", up=True)
    time.sleep(0.2)  # SUBACK
    a.send(op="pub", id=1, topic=UP + "rec", payload="rec-1", qos=1)
    a.send(op="pub", id=2, topic=UP + "hb", payload="hb-1", qos=0)
    assert a.wait_ev("pubdone", id=1)["r"] >= 1
    got = {cloud.get()[:3] for _ in range(2)}
    assert got == {(UP + "rec", b"rec-1", 1), (UP + "hb", b"hb-1", 0)}
    # cloud -> device, QoS 1 and 0
    cloud.pub(DN + "cmd", b"open", 1)
    m = a.wait_ev("msg", topic=DN + "cmd")
    assert m["payload"] == "open" and m["dup"] is False
    cloud.pub(DN + "time", b"t0", 0)
    a.wait_ev("msg", topic=DN + "time")
    # the ACL holds: a device publish outside its up/ tree is PUBACKed and dropped
    a.send(op="pub", id=3, topic="v1/dev/dev2/up/rec", payload="spoof", qos=1)
    a.wait_ev("pubdone", id=3)
    with pytest.raises(queue.Empty):
        cloud.get(0.3)
    # round trip latency with TCP_NODELAY on all sides
    t0 = time.monotonic()
    a.send(op="pub", id=4, topic=UP + "rec", payload="rtt", qos=1)
    cloud.get()
    a.wait_ev("pubdone", id=4)
    assert time.monotonic() - t0 < 0.5
    a.close()


def test_bad_password_refused_then_retried_with_backoff(broker, agents):
    a = agents({"port": broker.port, "password": "wrong", "backoff_min": 100, "backoff_max": 800})
    errs = [a.wait(lambda e: e["ev"] == "error" and e["where"] == "connect", 5, "refusal") for _ in range(6)]
    assert all("connack refused" in e["err"] and ", 5)" in e["err"] for e in errs)  # 5: not authorized
    gaps = [(errs[i + 1]["t"] - errs[i]["t"]) for i in range(5)]
    for k, g in enumerate(gaps):  # k-th wait is uniform in [100, min(800, 100 * 2^k)] ms
        assert 90 <= g <= min(800, 100 << k) + 150, gaps
    broker.add_user(DEV, "wrong")  # SIGHUP reloads the password file
    a.wait_ev("state", up=True, timeout=3)
    assert a.stats()["stats"]["refused"] >= 6
    a.close()


def test_incoming_qos1_acked_only_after_handler_redelivered_if_device_dies(broker, cloud, agents):
    # the VM dies inside a slow handler: no PUBACK went out, so the persistent session redelivers
    a = agents({"port": broker.port, "subs": [[DN + "#", 1, "slow:3000"]]})
    a.wait_ev("state", up=True)
    time.sleep(0.2)
    cloud.pub(DN + "cmd", b"c1", 1)
    a.wait_ev("msg", payload="c1")
    a.kill()
    b = agents({"port": broker.port, "subs": [[DN + "#", 1, "ok"]]})
    assert b.wait_ev("state", up=True)["sp"] is True
    m = b.wait_ev("msg", payload="c1")
    assert m["dup"] is True
    b.close()


def test_handler_exceptions_do_not_kill_the_client(broker, cloud, agents):
    a = agents({"port": broker.port, "subs": [[DN + "cmd", 1, "raise"], [DN + "ack", 1, "mem"],
                                              [DN + "time", 1, "ok"]]})
    a.wait_ev("state", up=True)
    time.sleep(0.2)
    cloud.pub(DN + "cmd", b"x", 1)
    a.wait(lambda e: e["ev"] == "error" and e["where"] == "handler" and "boom" in e["err"], 3, "handler error")
    cloud.pub(DN + "ack", b"y", 1)
    a.wait(lambda e: e["ev"] == "error" and e["where"] == "handler" and "MemoryError" in e["err"], 3, "mem")
    cloud.pub(DN + "time", b"z", 1)
    a.wait_ev("msg", payload="z")
    st = a.stats()
    assert st["up"] and st["stats"]["handler_errors"] == 2 and st["stats"]["reconnects"] == 0
    # both were acknowledged (no poison redelivery after a reconnect)
    broker.restart()
    a.wait_ev("state", up=True)
    time.sleep(0.5)
    assert not [e for e in a.events if e["ev"] == "msg" and e.get("dup")]
    a.close()


def test_retransmit_after_broker_sigkill_restart(broker, cloud, agents):
    from host_tools.sim.netfault import FaultyProxy
    net = FaultyProxy(broker.port)  # holds the device back until the new subscriber is in place
    a = agents({"port": net.port, "keepalive": 10})
    a.wait_ev("state", up=True)
    broker.freeze()
    a.send(op="pub", id=1, topic=UP + "rec", payload="money-1", qos=1)
    time.sleep(0.3)
    net.partition(60)
    broker.kill()  # the frozen broker got the bytes but never answered; now it is gone
    cloud.close()
    broker.start()
    c2 = Cloud(broker.port)
    net.heal()
    a.wait_ev("pubdone", id=1, timeout=5)
    net.close()
    assert c2.get()[:2] == (UP + "rec", b"money-1")
    assert a.stats()["stats"]["retransmits"] >= 1
    c2.close()
    a.close()


def test_will_retained_after_vm_killed(broker, agents):
    a = agents({"port": broker.port, "will_topic": UP + "status", "will_msg": "offline",
                "will_qos": 1, "will_retain": True})
    a.wait_ev("state", up=True)
    a.kill()
    time.sleep(0.3)
    late = Cloud(broker.port, subs=(UP + "status",))  # subscribes after the fact: retained copy
    topic, payload, qos, retain, _ = late.get()
    assert (topic, payload, retain) == (UP + "status", b"offline", True)
    late.close()


def test_graceful_stop_sends_no_will(broker, agents):
    c = Cloud(broker.port, subs=(UP + "status",))
    a = agents({"port": broker.port, "will_topic": UP + "status", "will_msg": "offline"})
    a.wait_ev("state", up=True)
    a.send(op="stop")
    a.wait_ev("stopped")
    with pytest.raises(queue.Empty):
        c.get(0.5)
    c.close()


def test_keepalive_detects_frozen_broker(broker, agents):
    ka = 2
    a = agents({"port": broker.port, "keepalive": ka, "backoff_min": 100, "backoff_max": 400})
    a.wait_ev("state", up=True)
    time.sleep(1.3)  # somewhere in the ping cycle
    t0 = time.monotonic()
    broker.freeze()
    down = a.wait_ev("state", up=False, timeout=ka * 2)
    detect = down["host_t"] - t0
    broker.thaw()
    up = a.wait_ev("state", up=True, timeout=5)
    print("dead-connection detection %.2f s with keepalive %d s; back up %.2f s after thaw"
          % (detect, ka, up["host_t"] - down["host_t"]))
    assert detect <= 1.5 * ka
    a.close()


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_reconnect_after_restart_and_resubscribe(broker, agents, kill):
    a = agents({"port": broker.port, "backoff_min": 100, "backoff_max": 800,
                "subs": [[DN + "#", 1, "ok"]]})
    a.wait_ev("state", up=True)
    t0 = time.monotonic()
    broker.restart(kill=kill)  # persistence off: the broker forgot the subscription
    down = a.wait_ev("state", up=False, timeout=3)
    up = a.wait_ev("state", up=True, timeout=3)
    print("%s: down seen %.3f s, up again %.3f s after the restart began"
          % ("SIGKILL" if kill else "SIGTERM", down["host_t"] - t0, up["host_t"] - t0))
    assert up["host_t"] - down["host_t"] <= 0.8 + 0.5  # first backoff is at most backoff_min.. bounded
    time.sleep(0.2)
    c = Cloud(broker.port)
    c.pub(DN + "cmd", b"after-restart", 1)
    a.wait_ev("msg", payload="after-restart")  # resubscribed
    c.close()
    a.close()


def test_too_large_incoming_publish_refused_without_crash(broker, cloud, agents):
    a = agents({"port": broker.port, "max_packet": 512, "subs": [[DN + "#", 1, "ok"]]})
    a.wait_ev("state", up=True)
    time.sleep(0.2)
    cloud.pub(DN + "cmd", b"A" * 1500, 1)  # under the broker's packet bound, over this client's
    e = a.wait(lambda e: e["ev"] == "error" and "PacketTooLarge" in e["err"], 3, "too large")
    assert "1522, 512" in e["err"]  # remaining length 2 + topic 18 + pid 2 + 1500
    cloud.pub(DN + "cmd", b"small", 1)
    a.wait_ev("msg", payload="small")
    st = a.stats()
    assert st["up"] and st["stats"]["oversize"] == 1
    assert not [e for e in a.events if e["ev"] == "msg" and len(e.get("payload", "")) > 512]
    a.close()


# ---- TLS (test-time PKI from `cryptography`; nothing secret is stored in the repo) ----------


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    pki = write_pki(d)
    b = Broker(users=dict(USERS), tls={"cafile": pki["ca"], "certfile": pki["cert"], "keyfile": pki["key"]})
    b.start()
    b.pki = pki
    yield b
    b.close()


@pytest.mark.parametrize("ca", ["ca", "ca-der"])
def test_tls_verifies_broker_certificate(tls_broker, agents, ca):
    c = Cloud(tls_broker.port)
    a = agents({"port": tls_broker.tls_port, "ca": tls_broker.pki[ca], "server_hostname": "localhost"})
    a.wait_ev("state", up=True, timeout=5)
    a.send(op="pub", id=1, topic=UP + "rec", payload="over-tls", qos=1)
    a.wait_ev("pubdone", id=1)
    assert c.get()[:2] == (UP + "rec", b"over-tls")
    c.close()
    a.close()


@pytest.mark.parametrize("case", ["other-ca", "wrong-hostname"])
def test_tls_refuses_unverified_broker(tls_broker, agents, case):
    ca = tls_broker.pki["other-ca" if case == "other-ca" else "ca"]
    host = "localhost" if case == "other-ca" else "broker.example"
    a = agents({"port": tls_broker.tls_port, "ca": ca, "server_hostname": host,
                "backoff_min": 100, "backoff_max": 200})
    errs = [a.wait(lambda e: e["ev"] == "error" and e["where"] == "connect", 3, "tls refusal") for _ in range(2)]
    want = "not correctly signed" if case == "other-ca" else "Common Name"
    assert all(want in e["err"] for e in errs), errs
    assert not [e for e in a.events if e["ev"] == "state" and e["up"]]
