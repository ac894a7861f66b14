"""Test kit for firmware/mqtt_client.py on the MicroPython VM (tests/test_mqtt_vm.py,
tests/test_mqtt_vm_wire.py): the client compiled with mpy-cross, an Agent driving
tests/vm/mqtt_agent.py in a long-running VM (the `agents` fixture makes them), and Cloud, paho-mqtt
as the cloud side of a real Mosquitto."""
import json
import os
import queue
import socket
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from tests.vm import FIRMWARE, VM_SCRIPTS, micropython

DEV = "dev1"
UP = "v1/dev/dev1/up/"
DN = "v1/dev/dev1/dn/"
USERS = {"cloud": "cloud-pw", "dev1": "dev1-pw"}


@pytest.fixture(scope="module", name="mpy_dir")
def compiled_client(tmp_path_factory):
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


@pytest.fixture(name="agents")
def make_agents(mpy_dir):
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
