"""Revocation and decommissioning (issue 15 §3) against a real Mosquitto: `edgepay device revoke`
drops the device's broker credentials live (its connection ends, its next CONNECT is refused with
CONNACK 5, not a hang), the cloud sends it nothing and keeps what it still sends in quarantine;
`decommission` waits for its journal to drain."""
from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as paho
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from host_tools.broker import Broker
from host_tools.cli import cli
from host_tools.cloud.commands import CommandClient
from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.registry import Registry, RegistryError


@pytest.fixture
def own_broker(tmp_path):
    (tmp_path / "broker").mkdir()
    b = Broker(workdir=tmp_path / "broker")
    b.add_user("cloud", "cloud-pw", cloud=True)
    b.start()
    yield b
    b.close()


def _connect(port, user, password):
    got: list = []
    ev = threading.Event()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=paho.MQTTv311)
    c.username_pw_set(user, password)

    def on_connect(cl, u, flags, rc, props):
        got.append(rc)
        ev.set()
    c.on_connect = on_connect
    c.connect("127.0.0.1", port)
    c.loop_start()
    ev.wait(5)
    return c, got


def test_revoke_ends_the_devices_connection_and_refuses_the_next(own_broker, tmp_path):
    b = own_broker
    reg_path = tmp_path / "registry.db"

    def edgepay(*args):
        r = CliRunner().invoke(cli, ["--json", "--registry", str(reg_path), *args], catch_exceptions=False)
        assert "Traceback" not in r.output
        return r
    r = edgepay("provision", "gate-9", "--board", "sim-gate", "--out", str(tmp_path / "gate-9"),
                "--broker-dir", str(b.dir), "--device-broker", f"127.0.0.1:{b.port}")
    assert r.exit_code == 0, r.output
    pw = json.loads((tmp_path / "gate-9" / "config.json").read_text())["broker"]["password"]
    c, got = _connect(b.port, "gate-9", pw)
    assert got == [0] and c.is_connected()
    r = edgepay("device", "revoke", "gate-9", "--broker-dir", str(b.dir))
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["status"] == "revoked" and out["passwd_removed"] and out["broker_reload"]["reloaded"]
    deadline = time.monotonic() + 5
    while c.is_connected() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not c.is_connected()           # Mosquitto drops it when it rereads passwd
    c.loop_stop()
    c2, got2 = _connect(b.port, "gate-9", pw)
    assert got2 and str(got2[0]) == "Not authorized"   # CONNACK 5 (paho names it so): a clear refusal
    c2.loop_stop()
    c2.disconnect()
    # the cloud sends a revoked device nothing
    reg = Registry(reg_path)
    try:
        assert reg.get("gate-9").status == "revoked"
        cc = CommandClient(reg, BrokerSettings("127.0.0.1", b.cloud_port, "cloud", "cloud-pw"))
        with pytest.raises(RegistryError, match="revoked: it is sent nothing"):
            cc.submit("gate-9", "get_state")
    finally:
        reg.close()
    r = edgepay("device", "revoke", "nope", "--broker-dir", str(b.dir))
    assert r.exit_code == 1 and "unknown device" in r.stdout


def test_decommission_waits_for_the_journal(tmp_path):
    """Without a device to ask, decommission refuses (it cannot know the journal is drained) unless
    --force; forced, the device is retired and its broker line gone."""
    reg_path = tmp_path / "registry.db"
    bdir = tmp_path / "b"

    def edgepay(*args, env=None):
        r = CliRunner().invoke(cli, ["--json", "--registry", str(reg_path), *args], catch_exceptions=False, env=env)
        assert "Traceback" not in r.output
        return r
    r = edgepay("provision", "gate-8", "--board", "sim-gate", "--out", str(tmp_path / "gate-8"),
                "--broker-dir", str(bdir), "--device-broker", "127.0.0.1:9")
    assert r.exit_code == 0, r.output
    r = edgepay("--broker", "127.0.0.1:9", "device", "decommission", "gate-8", "--broker-dir", str(bdir),
                "--timeout", "1", env={"EDGEPAY_MQTT_PASSWORD": "x"})
    assert r.exit_code == 3 and "unreachable" in r.stdout, r.output   # it cannot ask: nothing done
    assert "gate-8" in (bdir / "passwd").read_text()      # nothing changed
    r = edgepay("device", "decommission", "gate-8", "--broker-dir", str(bdir), "--force")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["status"] == "decommissioned"
    assert "gate-8" not in (bdir / "passwd").read_text()
