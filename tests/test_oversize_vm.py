"""One oversize message must never keep a device offline (issue 10 §2). The device agent on the
MicroPython VM against a real Mosquitto: the broker's packet bound refuses an oversize publish
before it can be queued; with the bound off, the device streams past it without allocating,
acknowledges it (so a persistent session forgets it), counts it (heartbeat, get_state) and raises
one `oversize` alarm a minute. Sizes: one byte over the bound, 1 MiB, 17 MiB; QoS 0 and 1; the
device online, and offline with the message queued in its session. Afterwards a legitimate command
runs within a few seconds. And the cloud side drops a device-topic payload over the bound unread."""
import os
import re
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from host_tools.broker import MAX_PACKET, Broker
from host_tools.cloud.commands import State
from host_tools.cloud.mqtt import BrokerSettings, CloudMQTT
from host_tools.cloud.registry import Registry
from host_tools.protocol import MAX_MESSAGE
from tests.agentkit import CLOUD, Watcher, cloud, provision
from tests.conftest import USERS
from tests.vm import FIRMWARE, VM_SCRIPTS, micropython

CMD = "v1/dev/dev1/dn/cmd"
MIB = 1 << 20
# remaining lengths: one byte over the device's (and broker's) bound, 1 MiB, 17 MiB
SIZES = {"over": MAX_PACKET + 1, "1MiB": MIB, "17MiB": 17 * MIB}
QUICK = 5.0  # s: a legitimate command after an oversize one (the 17 MiB skip takes ~0.5 s here)


def _varint(n):
    out = bytearray()
    while True:
        d, n = n & 0x7F, n >> 7
        out.append(d | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _s16(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def raw_publish(port, remaining, qos, topic=CMD):
    """Publish as the cloud user over a raw socket a PUBLISH whose remaining length is `remaining`
    (paho would resend one the broker refused at every reconnect). -> "puback" or "closed"."""
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        body = b"\x00\x04MQTT\x04\xc2\x00\x1e" + _s16("raw-" + os.urandom(3).hex()) + _s16(CLOUD[0]) + _s16(CLOUD[1])
        c.sendall(b"\x10" + _varint(len(body)) + body)
        assert c.recv(4) == b"\x20\x02\x00\x00"
        head = _s16(topic) + (b"\x00\x07" if qos else b"")
        c.sendall(bytes([0x30 | qos << 1]) + _varint(remaining) + head)
        left, blk = remaining - len(head), b"x" * 65536
        try:
            while left:
                k = min(left, len(blk))
                c.sendall(blk[:k])
                left -= k
            if not qos:
                c.sendall(b"\xc0\x00")  # PINGREQ: its PINGRESP says the PUBLISH was taken
            return "puback" if c.recv(4)[:1] in (b"\x40", b"\xd0") else "closed"
        except OSError:
            return "closed"
    finally:
        c.close()


def make_env(broker, tmp_path):
    reg = Registry()
    w = Watcher(broker, reg)
    c = cloud(broker, reg)
    c.serve_time()  # the device asks the time at every connect (SPEC §5): answered
    b = provision(broker, reg, tmp_path, "dev1")
    return SimpleNamespace(broker=broker, reg=reg, w=w, c=c, b=b)


def close_env(env):
    env.b.kill()
    env.c.close()
    env.w.close()


@pytest.fixture
def open_broker():
    """No packet bound: every oversize publish reaches the device (its own bound is tested)."""
    b = Broker(users=dict(USERS), cloud_users=("cloud",), max_packet=None)
    b.start()
    yield b
    b.close()


@pytest.fixture
def env(broker, tmp_path):
    e = make_env(broker, tmp_path)
    yield e
    close_env(e)


@pytest.fixture
def open_env(open_broker, tmp_path):
    e = make_env(open_broker, tmp_path)
    yield e
    close_env(e)


def online(env, timeout=15):
    """Online with a trusted clock (else the first commands of a boot wait for time: agent.py)."""
    mark = len(env.b.lines)
    env.w.expect(lambda t, m, r: t.endswith("/up/status") and m.get("online") is True, timeout, "online status")
    env.b.wait_for(r"time set \d+", 10, start=mark)
    time.sleep(0.3)  # SUBACK


def state_quickly(env, within=QUICK):
    t0 = time.monotonic()
    st = env.c.send("dev1", "get_state", timeout=within)
    took = time.monotonic() - t0
    assert st.state is State.SUCCEEDED, (st.state, env.b.log()[-1500:])
    return st.data, took


def ups(env, mark=0):
    return sum("mqtt up" in ln for ln in env.b.lines[mark:])


def oversize_publish(env, remaining, qos):
    # Mosquitto delivers a QoS 1 message at QoS 1 only: both go out from here with the publisher's QoS
    t = paho.Client(CallbackAPIVersion.VERSION2, client_id="big-" + os.urandom(3).hex())
    t.username_pw_set(*CLOUD)
    t.connect("127.0.0.1", env.broker.cloud_port)
    t.loop_start()
    payload = b"y" * (remaining - 2 - len(CMD) - (2 if qos else 0))
    assert t.publish(CMD, payload, qos=qos).wait_for_publish(20) is None
    t.loop_stop()
    t.disconnect()


# ---- the device's own bound (the broker lets everything through) ---------------------------------
@pytest.mark.parametrize("qos", [0, 1])
def test_device_skips_oversize_while_online(open_env, qos):
    env = open_env
    env.b.start()
    online(env)
    for i, (name, n) in enumerate(SIZES.items()):
        oversize_publish(env, n, qos)
        data, took = state_quickly(env)
        print("%s QoS%d: get_state %.2f s after" % (name, qos, took))
        assert data["rx"] == [0, i + 1, 0], name  # refused, oversize, dropped
    assert ups(env) == 1  # skipped on the one connection: no drop, no reconnect
    # one alarm for all three (at most one a minute), with the count; the heartbeat carries it too
    _, alarm, _ = env.w.expect(lambda t, m, r: m.get("type") == "alarm", 5, "oversize alarm")
    assert alarm["code"] == "oversize" and alarm["active"] is True and alarm["detail"] == {"size": SIZES["over"]}
    _, hb, _ = env.w.expect(lambda t, m, r: m.get("type") == "heartbeat" and m.get("rx_oversize") == 3, 12,
                            "heartbeat counting three")
    assert "rx_refused" not in hb and "rx_dropped" not in hb  # zero: left out
    time.sleep(0.5)
    assert [m for _, m, _ in env.w.all if m.get("type") == "alarm"] == [alarm]
    assert "MemoryError" not in env.b.log()


def test_device_skips_oversize_queued_while_offline(open_env):
    """Queued in the device's persistent session while it was off: skipped and acknowledged at
    the next connect, so the broker forgets them (the bug: redelivered at every connect, forever)."""
    env = open_env
    env.b.start()
    online(env)
    env.b.kill()
    time.sleep(0.3)
    for n in SIZES.values():
        oversize_publish(env, n, 1)
        oversize_publish(env, n, 0)  # not queued for an offline client (queue_qos0_messages false)
    mark = len(env.b.lines)
    env.b.restart()
    online(env)
    data, took = state_quickly(env)
    print("after three queued oversize messages: get_state %.2f s after online" % took)
    assert data["rx"][1] == 3 and ups(env, mark) == 1
    # acknowledged: the next boot gets none of them again
    env.b.kill()
    env.b.restart()
    online(env)
    data, _ = state_quickly(env)
    assert data["rx"][1] == 0 and data["boots"] == 3


def test_device_bound_is_exact(open_env):
    """A packet at the bound is read (its payload then fails the codec's message bound: too_large,
    answered); one byte more is skipped unread."""
    env = open_env
    env.b.start()
    online(env)
    oversize_publish(env, MAX_PACKET, 1)
    _, m, _ = env.w.expect(lambda t, m, r: t.endswith("/up/res") and m.get("cti") is None, 5, "too_large result")
    assert m["status"] == 7  # too_large
    oversize_publish(env, MAX_PACKET + 1, 1)
    data, _ = state_quickly(env)
    assert data["rx"][1] == 1


# ---- the broker's bound -----------------------------------------------------------------------
def test_broker_refuses_oversize_online_and_offline(env):
    env.b.start()
    online(env)
    for offline in (False, True):
        if offline:
            env.b.kill()
            time.sleep(0.3)
        for n in SIZES.values():
            for qos in (0, 1):
                assert raw_publish(env.broker.cloud_port, n, qos) == "closed", (n, qos)
        if offline:
            env.b.restart()
            online(env)
        data, took = state_quickly(env)
        assert data["rx"][1] == 0  # never reached the device
    # at the bound the broker takes it, and the device reads it (the two bounds are one)
    assert raw_publish(env.broker.cloud_port, MAX_PACKET, 1) == "puback"
    _, m, _ = env.w.expect(lambda t, m, r: t.endswith("/up/res") and m.get("cti") is None, 5, "too_large result")
    assert m["status"] == 7


def test_one_packet_bound_everywhere(tmp_path):
    """The device's bound (firmware/agent.py), the test Broker's and `edgepay broker conf`'s are
    one number, MAX_MESSAGE + headroom: raising the message bound moves them together."""
    fw = re.search(r"^MAX_PACKET = (\d+)", (FIRMWARE / "agent.py").read_text(), re.M)
    assert fw and int(fw.group(1)) == MAX_PACKET and MAX_PACKET > MAX_MESSAGE + 2 + 49 + 2 + 5
    b = Broker(users=dict(USERS), workdir=tmp_path)
    b._write_files()
    assert "max_packet_size %d" % (MAX_PACKET + 1) in b.conf.read_text().splitlines()


# ---- skipping allocates nothing ---------------------------------------------------------------
@pytest.fixture(scope="module")
def mpy_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mpy")
    cross = os.path.join(os.path.dirname(micropython()), "mpy-cross")
    for m in ("mqtt_frame", "mqtt_client"):
        subprocess.run([cross, "-o", str(d / (m + ".mpy")), str(FIRMWARE / (m + ".py"))], check=True)
    return d


def _stream(n):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def go():
        c, _ = srv.accept()
        blk, left = b"\0" * 65536, n
        try:
            while left:
                k = min(left, len(blk))
                c.sendall(blk[:k])
                left -= k
            c.recv(1)
        except OSError:
            pass
        c.close()
        srv.close()
    threading.Thread(target=go, daemon=True).start()
    return srv.getsockname()[1]


def _skip_alloc(mpy_dir: Path, n, mode, heap):
    import json
    env = dict(os.environ)
    env["MICROPYPATH"] = ":".join([str(mpy_dir), str(FIRMWARE), str(VM_SCRIPTS), ".frozen"])
    p = subprocess.run([micropython(), "-X", "heapsize=" + heap, str(VM_SCRIPTS / "skip_alloc.py"),
                        str(_stream(n)), str(n), mode], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_skip_allocates_nothing_per_chunk(mpy_dir):
    """GC off, the heap allocated while skipping: nothing per chunk (no slice, no coroutine per
    read); only asyncio's poller entry (~100 B of garbage) each time the socket runs dry and the
    skip waits. The loop it replaced (a slice and two coroutines per chunk) allocated ~190 KB a MiB."""
    got = [_skip_alloc(mpy_dir, n, "client", "2M") for n in (MIB, 17 * MIB, 256 * MIB - 1)]
    old = _skip_alloc(mpy_dir, MIB, "slices", "512K")
    for g in got:
        print("skip %d B: allocated %d B, %d waits, %d ms" % (g["n"], g["alloc"], g["waits"], g["ms"]))
    print("the old loop: %d B allocated for 1 MiB" % old["alloc"])
    for g in got:
        assert g["alloc"] <= 256 + 128 * g["waits"], g
        assert g["waits"] < g["n"] // 2300 // 10, g  # the socket is drained between waits
    assert old["alloc"] > 100_000
    assert got[-1]["ms"] < 20_000


# ---- the cloud side ---------------------------------------------------------------------------
def test_cloud_drops_device_payload_over_the_bound(broker):
    seen = []
    c = CloudMQTT(BrokerSettings("127.0.0.1", broker.cloud_port, *CLOUD)).connect()
    c.subscribe("v1/dev/+/up/#", lambda t, p: seen.append(len(p)))
    time.sleep(0.3)
    dev = paho.Client(CallbackAPIVersion.VERSION2, client_id="dev1")
    dev.username_pw_set("dev1", USERS["dev1"])
    dev.connect("127.0.0.1", broker.port)
    dev.loop_start()
    for n in (MAX_MESSAGE + 1, MAX_MESSAGE):  # over the message bound, under the broker's packet bound
        dev.publish("v1/dev/dev1/up/evt", b"z" * n, qos=1).wait_for_publish(5)
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen == [MAX_MESSAGE] and c.oversize == 1
    # and the cloud never publishes one (the broker would drop it, paho resend it forever)
    with pytest.raises(ValueError, match="message bound"):
        c.publish("v1/dev/dev1/dn/cmd", b"z" * (MAX_MESSAGE + 1))
    dev.loop_stop()
    dev.disconnect()
    c.close()
