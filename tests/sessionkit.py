"""Shared by the session-service tests (test_sessions.py, test_sessions_kinds.py,
test_sessions_restart.py): a real Mosquitto, fake devices and the ScriptedProvider; the settle path
through a real IngestWorker and a SQLite ledger.

The fake devices are MQTT 3.1.1 clients with their own credentials (the device listener and its
ACL). They sign auth_req and records with the host codec, number everything from one counter
(records chained with DeviceChain), and verify every command they receive with open_message.
"""
from __future__ import annotations

import threading
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.ingest import IngestWorker
from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.payafter import ScriptedProvider
from host_tools.cloud.registry import Registry
from host_tools.cloud.sessions import SessionService
from host_tools.protocol import open_message, seal
from tests.test_ledger import DeviceChain

CLOUD = ("cloud", "cloud-pw")
T_PARK = {1: 1, 2: "EUR", 3: 15, 4: 3600, 5: 250, 6: 1800, 7: 3000}
T_RENT = {1: 1, 2: "USD", 3: 5, 4: 1800, 5: 100, 6: 500, 9: 2500}
T_VEND = {1: 7, 2: "GBP", 8: [["A1", 150], ["B2", 95], ["C3", 0]]}


def wait_for(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class FakeDevice:
    def __init__(self, broker, registry: Registry, name: str, kind: str):
        if name not in broker.users:
            broker.add_user(name, f"{name}-pw")
        self.id = name
        self.chain = DeviceChain(name)
        registry.add(name, self.chain.key, kind, "sim")
        self.req_topic = f"v1/dev/{name}/up/req"
        self.commands: list[dict] = []          # verified commands, in arrival order
        self.bad: list[str] = []
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv311)
        self.client.username_pw_set(name, broker.users[name])
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(f"v1/dev/{name}/dn/#", 1)
        self.client.loop_start()
        time.sleep(0.05)

    def _on_message(self, client, userdata, m):
        try:
            msg = open_message(self.chain.key, self.chain.kid, m.topic, m.payload)
        except Exception as e:  # noqa: BLE001
            self.bad.append(f"{m.topic}: {e}")
            return
        assert msg["aud"] == self.id
        with self._lock:
            self.commands.append(msg)

    def next_seq(self) -> int:
        self.chain.seq += 1          # one counter for everything the device sends
        return self.chain.seq

    def auth_req(self, purpose, sid, payer, **fields) -> bytes:
        msg = {"type": "auth_req", "seq": self.next_seq(), "iat": fields.pop("iat", int(time.time())),
               "sid": sid, "payer": payer, "purpose": purpose, **fields}
        raw = seal(self.chain.key, self.chain.kid, self.req_topic, msg)
        self.publish(raw)
        return raw

    def publish(self, raw, on_topic=None):
        self.client.publish(on_topic or self.req_topic, raw, qos=1).wait_for_publish(5)

    def record(self, type_name, **fields):
        _, raw = self.chain.make(type_name, **fields)
        self.publish(raw, self.chain.topic)
        return raw

    def cmds(self, name, sid=None):
        with self._lock:
            return [c["args"] for c in self.commands if c.get("name") == name
                    and (sid is None or c.get("args", {}).get(1) == sid)]

    def wait(self, name, sid, n=1, timeout=10.0):
        wait_for(lambda: len(self.cmds(name, sid)) >= n, timeout, f"{n} {name} for {sid} on {self.id}")
        return self.cmds(name, sid)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def env(broker, tmp_path):
    class Env:
        pass
    e = Env()
    e.broker = broker
    e.registry = Registry(str(tmp_path / "registry.db"))
    e.provider = ScriptedProvider()
    e.ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    e.svc = SessionService(e.registry, e.provider, BrokerSettings("127.0.0.1", broker.cloud_port, *CLOUD)).start()
    e.worker = IngestWorker(e.registry, e.ledger, BrokerSettings("127.0.0.1", broker.cloud_port, *CLOUD),
                            on_commit=e.svc.on_commit).start()
    e.devices = []

    def device(name, kind="gate", tariff=T_PARK):
        d = FakeDevice(broker, e.registry, name, kind)
        e.devices.append(d)
        if tariff is not None:
            e.svc.set_tariff(name, tariff)
            d.wait("set_tariff", None)
        return d
    e.device = device
    yield e
    for d in e.devices:
        d.close()
        assert not d.bad, d.bad
    e.worker.stop()
    e.svc.stop()
    e.ledger.close()
    e.registry.close()


def settled(e, dev, sid, status=("settled", "settled_flagged")):
    wait_for(lambda: e.svc.settle_status(dev, sid)["status"] in status, what=f"{dev}/{sid} settled")
    return e.svc.settle_status(dev, sid)
