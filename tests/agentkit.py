"""Test kit for the agent: provision a device onto a simulated board, a cloud command client,
and a watcher that verifies every uplink message with the host codec."""
from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.commands import CommandClient
from host_tools.cloud.registry import Registry
from host_tools.protocol import ProtocolError, open_message
from host_tools.sim.board import SimBoard
from host_tools.sim.provision import FAST, provision_sim  # noqa: F401 (FAST re-exported)

CLOUD = ("cloud", "cloud-pw")


def provision(broker, registry: Registry, root: Path, device: str, kind: str = "gate",
              settings: dict | None = None, **extra) -> SimBoard:
    return provision_sim(broker, registry, root, device, kind, settings, **extra)


class Watcher:
    """Subscribes to v1/dev/+/up/#, verifies each message; keeps (topic, msg|error, retain)."""

    def __init__(self, broker, registry: Registry, topic_filter: str = "v1/dev/+/up/#"):
        self.registry = registry
        self.q: queue.Queue = queue.Queue()
        self.all: list = []
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{os.urandom(4).hex()}")
        self.c.username_pw_set(*CLOUD)
        ready = threading.Event()
        self.c.on_connect = lambda c, u, f, r, p: (c.subscribe(topic_filter, 1), ready.set())
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", broker.cloud_port)
        self.c.loop_start()
        assert ready.wait(5)
        time.sleep(0.2)

    def _on(self, c, u, m):
        dev = m.topic.split("/")[2]
        try:
            d = self.registry.get(dev)
            msg = open_message(d.key, d.kid, m.topic, m.payload)
        except ProtocolError as e:
            msg = {"error": e.code}
        item = (m.topic, msg, bool(m.retain))
        self.all.append(item)
        self.q.put(item)

    def expect(self, pred, timeout=10.0, what="message"):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout}s; saw {self.all[-6:]}")
            try:
                item = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if pred(*item):
                return item

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def cloud(broker, registry) -> CommandClient:
    """A command client with no time responder: its devices' clocks stay untrusted until
    `sync_time(device)` (or `serve_time()`) answers them (SPEC §5)."""
    return CommandClient(registry, BrokerSettings("127.0.0.1", broker.cloud_port, *CLOUD)).connect()


class AgentRig:
    """A registry, a verifying watcher and a command client around VM boards on one broker: the
    `env` of the VM agent tests. `board(device, start=…, **provision)`; close() kills them all."""

    def __init__(self, broker, root: Path, serve_time: bool = False, settings: dict | None = None,
                 start: bool = False):
        self.broker, self.tmp = broker, Path(root)
        self.reg = Registry()
        self.w = Watcher(broker, self.reg)
        self.c = cloud(broker, self.reg)
        if serve_time:
            self.c.serve_time()  # devices ask the time at every connect (SPEC §5)
        self._settings, self._start = settings, start
        self.boards: list[SimBoard] = []

    def board(self, device: str = "dev1", **kw) -> SimBoard:
        if self._settings is not None:
            kw.setdefault("settings", dict(self._settings))
        b = provision(self.broker, self.reg, self.tmp, device, **kw)
        self.boards.append(b)
        return b.start() if self._start else b

    def close(self) -> None:
        for b in self.boards:
            b.kill()
        self.c.close()
        self.w.close()
