"""firmware/mqtt_client.py on the MicroPython VM (64K heap) against a real Mosquitto
(host_tools/broker.py) with paho-mqtt as the cloud side, plus a raw-socket fake broker where the
wire itself must be observed (DUP flag, packet ids, PUBACK timing, window)."""
import json
import os
import queue
import socket
import struct
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from host_tools.broker import Broker
from host_tools.tls import write_pki
from tests.vm import FIRMWARE, VM_SCRIPTS, micropython

DEV = "dev1"
UP = "v1/dev/dev1/up/"
DN = "v1/dev/dev1/dn/"
USERS = {"cloud": "cloud-pw", "dev1": "dev1-pw"}


@pytest.fixture(scope="module")
def mpy_dir(tmp_path_factory):
    """The client compiled with mpy-cross, as a board would get it: compiling mqtt_client.py
    from source needs more than a 64K heap (the compiled module itself fits)."""
    d = tmp_path_factory.mktemp("mpy")
    mpy_cross = os.path.join(os.path.dirname(micropython()), "mpy-cross")
    for m in ("mqtt_frame", "mqtt_client"):
        subprocess.run([mpy_cross, "-o", str(d / (m + ".mpy")), str(FIRMWARE / (m + ".py"))], check=True)
    return d


class Agent:
    """tests/vm/mqtt_agent.py in a long-running VM; events are JSON lines stamped on arrival."""

    def __init__(self, mpy_dir, cfg, heap="64K"):
        env = dict(os.environ)
        env["MICROPYPATH"] = ":".join([str(mpy_dir), str(FIRMWARE), str(VM_SCRIPTS), ".frozen"])
        base = {"client_id": DEV, "user": DEV, "password": USERS[DEV], "keepalive": 10,
                "backoff_min": 100, "backoff_max": 800}
        base.update(cfg)
        self.p = subprocess.Popen([micropython(), "-X", "heapsize=" + heap, str(VM_SCRIPTS / "mqtt_agent.py"),
                                   json.dumps(base)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)
        self.events = []
        self.q = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                ev = {"ev": "raw", "line": line}
            ev["host_t"] = time.monotonic()
            self.events.append(ev)
            self.q.put(ev)
        self.q.put({"ev": "exit", "host_t": time.monotonic()})

    def send(self, **cmd):
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()

    def wait(self, pred, timeout=5.0, what=""):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timeout waiting for %s; events: %s\nstderr: %s"
                                     % (what, self.events[-15:], self._stderr()))
            try:
                ev = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if ev["ev"] == "exit":
                raise AssertionError("VM exited; events: %s\nstderr: %s" % (self.events[-15:], self._stderr()))
            if pred(ev):
                return ev

    def wait_ev(self, name, timeout=5.0, **match):
        return self.wait(lambda e: e["ev"] == name and all(e.get(k) == v for k, v in match.items()),
                         timeout, "%s %s" % (name, match))

    def stats(self):
        self.send(op="stats")
        return self.wait_ev("stats")

    def _stderr(self):
        if self.p.poll() is None:
            return "(running)"
        return self.p.stderr.read()[-2000:]

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()

    def close(self):
        if self.p.poll() is None:
            try:
                self.send(op="stop")
                self.p.wait(3)
            except Exception:
                self.kill()
        self.kill()
        assert "Traceback" not in (self.p.stderr.read() or "")


@pytest.fixture
def agents(mpy_dir):
    made = []

    def make(cfg, **kw):
        a = Agent(mpy_dir, cfg, **kw)
        made.append(a)
        return a
    yield make
    for a in made:
        a.kill()


class Cloud:
    """paho-mqtt 2.2 as the cloud (user "cloud", ACL readwrite v1/#)."""

    def __init__(self, port, user="cloud", subs=("v1/dev/+/up/#",), clean=True):
        self.msgs = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user, clean_session=clean)
        self.c.username_pw_set(user, USERS.get(user, user + "-pw"))
        ready = threading.Event()
        self.c.on_connect = lambda *a: ready.set()
        self.c.on_message = lambda c, u, m: self.msgs.put((m.topic, m.payload, m.qos, m.retain, time.monotonic()))
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        assert ready.wait(5)
        self.c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for s in subs:
            self.c.subscribe(s, 1)
        time.sleep(0.1)

    def pub(self, topic, payload, qos=1, retain=False):
        self.c.publish(topic, payload, qos, retain).wait_for_publish(5)

    def get(self, timeout=5.0, topic=None):
        deadline = time.monotonic() + timeout
        while True:
            m = self.msgs.get(timeout=max(0.01, deadline - time.monotonic()))
            if topic is None or m[0] == topic:
                return m

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def cloud(broker):
    c = Cloud(broker.port)
    yield c
    c.close()


# ---- a raw-socket fake broker (CPython, written from the spec) -----------------------------
class FakeConn:
    def __init__(self, s):
        self.s = s
        self.pings = 0

    def _recv(self, n, timeout):
        self.s.settimeout(timeout)
        b = b""
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise EOFError
            b += c
        return b

    def read(self, timeout=5.0, answer_ping=True):
        while True:
            first = self._recv(1, timeout)[0]
            n, shift = 0, 0
            while True:
                c = self._recv(1, timeout)[0]
                n |= (c & 0x7F) << shift
                shift += 7
                if not c & 0x80:
                    break
            body = self._recv(n, timeout) if n else b""
            if first == 0xC0 and answer_ping:
                self.pings += 1
                self.s.sendall(b"\xd0\x00")
                continue
            return first >> 4, first & 15, body

    def read_publish(self, timeout=5.0):
        t, fl, body = self.read(timeout)
        assert t == 3, (t, body)
        tl = struct.unpack(">H", body[:2])[0]
        topic = body[2:2 + tl].decode()
        qos = (fl >> 1) & 3
        pid = struct.unpack(">H", body[2 + tl:4 + tl])[0] if qos else 0
        return {"topic": topic, "qos": qos, "dup": bool(fl & 8), "retain": bool(fl & 1), "pid": pid,
                "payload": body[2 + tl + (2 if qos else 0):]}

    def send(self, b):
        self.s.sendall(b)

    def close(self):
        self.s.close()


class FakeBroker:
    def __init__(self):
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(4)
        self.port = self.srv.getsockname()[1]

    def accept(self, timeout=5.0, session_present=False):
        """Accept a client, read CONNECT, answer CONNACK; auto-answer its SUBSCRIBE if any."""
        self.srv.settimeout(timeout)
        s, _ = self.srv.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = FakeConn(s)
        t, fl, body = c.read(timeout)
        assert t == 1
        c.connect_body = body
        c.send(bytes([0x20, 2, 1 if session_present else 0, 0]))
        return c

    def close(self):
        self.srv.close()


def _pub_pkt(topic, payload, qos=1, pid=1, dup=False):
    t = topic.encode()
    body = struct.pack(">H", len(t)) + t + (struct.pack(">H", pid) if qos else b"") + payload
    n, rl = len(body), bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        rl.append(b | (0x80 if n else 0))
        if not n:
            break
    return bytes([0x30 | (8 if dup else 0) | (qos << 1)]) + bytes(rl) + body


@pytest.fixture
def fake():
    f = FakeBroker()
    yield f
    f.close()


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
    cloud.pub(DN + "cmd", b"A" * 3000, 1)
    e = a.wait(lambda e: e["ev"] == "error" and "PacketTooLarge" in e["err"], 3, "too large")
    assert "3000" in e["err"] or "30" in e["err"]
    cloud.pub(DN + "cmd", b"small", 1)
    a.wait_ev("msg", payload="small")
    st = a.stats()
    assert st["up"] and st["stats"]["oversize"] == 1
    assert not [e for e in a.events if e["ev"] == "msg" and len(e.get("payload", "")) > 512]
    a.close()


# ---- wire-level tests against the fake broker ----------------------------------------------
def test_qos1_retransmitted_with_dup_and_same_packet_id_after_reconnect(fake, agents):
    a = agents({"port": fake.port, "keepalive": 10, "ack_timeout": 0})
    c1 = fake.accept()
    a.wait_ev("state", up=True)
    a.send(op="pub", id=1, topic=UP + "rec", payload="r1", qos=1)
    a.send(op="pub", id=2, topic=UP + "rec", payload="r2", qos=1)
    p1, p2 = c1.read_publish(), c1.read_publish()
    assert not p1["dup"] and not p2["dup"] and p1["pid"] != p2["pid"]
    c1.send(bytes([0x40, 2]) + struct.pack(">H", p1["pid"]))  # ack only the first
    a.wait_ev("pubdone", id=1)
    c1.close()  # connection lost before r2 was acknowledged
    c2 = fake.accept(session_present=True)
    assert not (c2.connect_body[7] & 2)  # clean_session = 0
    r = c2.read_publish()
    assert (r["dup"], r["pid"], r["payload"], r["topic"]) == (True, p2["pid"], b"r2", UP + "rec")
    c2.send(bytes([0x40, 2]) + struct.pack(">H", r["pid"]))
    a.wait_ev("pubdone", id=2)
    assert a.stats()["stats"]["retransmits"] == 1
    c2.close()


def test_qos1_retransmitted_after_ack_timeout_same_connection(fake, agents):
    a = agents({"port": fake.port, "keepalive": 10, "ack_timeout": 400})
    c = fake.accept()
    a.send(op="pub", id=1, topic=UP + "rec", payload="r1", qos=1)
    p = c.read_publish()
    t0 = time.monotonic()
    q = c.read_publish(timeout=2)
    assert 0.3 <= time.monotonic() - t0 <= 1.0
    assert (q["dup"], q["pid"], q["payload"]) == (True, p["pid"], b"r1")
    c.send(bytes([0x40, 2]) + struct.pack(">H", p["pid"]))
    a.wait_ev("pubdone", id=1)
    c.close()


def test_inflight_window_is_bounded(fake, agents):
    a = agents({"port": fake.port, "keepalive": 10, "max_inflight": 3, "ack_timeout": 0})
    c = fake.accept()
    a.wait_ev("state", up=True)
    for i in range(5):
        a.send(op="pub", id=i, topic=UP + "rec", payload="m%d" % i, qos=1)
    got = [c.read_publish() for _ in range(3)]
    with pytest.raises(socket.timeout):
        c.read_publish(timeout=0.4)  # window full: the 4th waits
    c.send(bytes([0x40, 2]) + struct.pack(">H", got[0]["pid"]))
    got.append(c.read_publish())
    assert [g["payload"] for g in got] == [b"m0", b"m1", b"m2", b"m3"]
    assert len({g["pid"] for g in got}) == 4
    for g in got[1:]:
        c.send(bytes([0x40, 2]) + struct.pack(">H", g["pid"]))
    last = c.read_publish()
    c.send(bytes([0x40, 2]) + struct.pack(">H", last["pid"]))
    for i in range(5):
        a.wait_ev("pubdone", id=i)
    c.close()


def test_incoming_qos1_puback_sent_after_handler_returns(fake, agents):
    a = agents({"port": fake.port, "keepalive": 10, "subs": [[DN + "#", 1, "slow:500"]]})
    c = fake.accept()
    t, fl, body = c.read()  # SUBSCRIBE
    assert t == 8 and fl == 2
    c.send(bytes([0x90, 3]) + body[:2] + b"\x01")
    t0 = time.monotonic()
    c.send(_pub_pkt(DN + "cmd", b"go", qos=1, pid=777))
    t, fl, body = c.read(timeout=3)
    t_ack = time.monotonic()
    assert (t, body) == (4, struct.pack(">H", 777))
    handled = a.wait_ev("handled", payload="go")
    assert t_ack - t0 >= 0.45
    assert handled["host_t"] <= t_ack + 0.05  # "handled" printed before the PUBACK left
    c.close()


def test_too_large_non_publish_packet_drops_connection_and_reconnects(fake, agents):
    a = agents({"port": fake.port, "keepalive": 10, "max_packet": 256})
    c = fake.accept()
    a.wait_ev("state", up=True)
    c.send(b"\x90\xff\xff\xff\x7f")  # SUBACK claiming 256 MB; nothing follows
    e = a.wait(lambda e: e["ev"] == "error" and "PacketTooLarge" in e["err"], 3, "refused")
    assert [x for x in a.events if x["ev"] == "state" and not x["up"]]
    c2 = fake.accept()
    a.wait_ev("state", up=True)
    c2.send(b"\xf0\x00")  # reserved packet type: malformed, dropped, reconnects
    a.wait(lambda e: e["ev"] == "error" and "Malformed" in e["err"], 3, "malformed")
    fake.accept()
    a.wait_ev("state", up=True)
    st = a.stats()
    assert st["stats"]["reconnects"] == 2 and st["mem_free"] > 8000
    assert e


def test_connect_timeout_on_silent_server(fake, agents):
    # TCP accepted but CONNACK never comes: the connect attempt times out and is retried
    a = agents({"port": fake.port, "connect_timeout": 500, "backoff_min": 100, "backoff_max": 200})
    fake.srv.settimeout(3)
    s1, _ = fake.srv.accept()
    e = a.wait(lambda e: e["ev"] == "error" and e["where"] == "connect", 2, "timeout")
    assert "Timeout" in e["err"]
    s2, _ = fake.srv.accept()  # it tried again
    s1.close()
    s2.close()


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
