"""firmware/mqtt_client.py on the MicroPython VM (64K heap) against a raw-socket fake broker
(CPython, written from the spec), where the wire itself must be observed: DUP flag and packet ids
on retransmission, the in-flight window, PUBACK timing, oversize and malformed packets, and the
connect timeout. The VM agent is in tests/mqttkit.py; the tests against a real Mosquitto are in
tests/test_mqtt_vm.py."""
import socket
import struct
import time

import pytest

from tests.mqttkit import DN, UP
from tests.mqttkit import compiled_client, make_agents  # noqa: F401 (the mpy_dir and agents fixtures)


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
    a.wait_ev("state", up=True)  # the VM has taken the CONNACK (a loaded machine is slow to)
    a.send(op="pub", id=1, topic=UP + "rec", payload="r1", qos=1)
    p = c.read_publish(timeout=10)
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


def test_a_refused_subscription_ends_the_link_and_the_next_one_subscribes_again(fake, agents):
    """SUBACK 0x80 (a cluster re-electing the stream behind a QoS 1 subscription after a node is
    lost): the client does not stay on a connection where it cannot hear its commands or acks; it
    reconnects after its backoff and subscribes again, and a granted subscription then holds."""
    a = agents({"port": fake.port, "keepalive": 10, "subs": [[DN + "#", 1, "ok"]]})
    c = fake.accept()
    t, fl, body = c.read()  # SUBSCRIBE
    assert t == 8
    c.send(bytes([0x90, 3]) + body[:2] + b"\x80")
    a.wait(lambda e: e["ev"] == "error" and "subscription refused" in e["err"], 3, "refused")
    c2 = fake.accept()
    t, fl, body = c2.read()  # subscribed again on the new link
    assert t == 8 and DN.encode() in body
    c2.send(bytes([0x90, 3]) + body[:2] + b"\x01")
    a.wait_ev("state", up=True)
    c2.send(_pub_pkt(DN + "cmd", b"heard", qos=1, pid=9))
    assert c2.read(timeout=3)[0] == 4   # PUBACK: the subscription holds
    assert a.stats()["stats"]["reconnects"] == 1
    c.close()
    c2.close()
