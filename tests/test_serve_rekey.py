"""Key rotation through the HTTP API (issue 15 §1): POST /v1/devices/{id}/rekey is an admin's call,
audited, runs the real rotation (host_tools/cloud/rekey.py) against a stand-in device over a real
Mosquitto, and says why when it does not finish; the generic commands route refuses `rekey`."""
from __future__ import annotations

import os

import pytest

from host_tools.cloud.accounts import Accounts
from host_tools.cloud.commands import CommandClient
from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.registry import Registry
from host_tools.service.api import make_app
from tests.httpkit import Served
from tests.rekeykit import RekeyDevice
from tests.test_serve_auth import BOOT, FAST, Api, is_problem


@pytest.fixture
def site(broker, tmp_path):
    reg = Registry(tmp_path / "registry.db")
    acc = Accounts(reg.db, scrypt=FAST)
    client = CommandClient(reg, BrokerSettings("127.0.0.1", broker.cloud_port, "cloud", "cloud-pw")).connect()
    devs = []
    for name in ("gate-1", "gate-2"):
        key = os.urandom(32)
        reg.add(name, key, "gate", "sim-gate")
        broker.add_user(name, f"{name}-pw")
        devs.append(RekeyDevice(broker.port, name, f"{name}-pw", key))
    api = Api.__new__(Api)  # Api's call() and user() over this app
    api.reg, api.acc, api.client = reg, acc, client
    api.served = Served(make_app(reg, client, token=BOOT, accounts=acc, cookie_secure=False))
    api.url = api.served.url
    yield api, devs
    api.served.stop()
    for d in devs:
        d.close()
    client.close()
    reg.close()


def test_an_admin_rotates_a_key_through_the_api(site):
    api, (g1, g2) = site
    operator, admin = api.user("otto", "operator"), api.user("ada", "admin")
    r = api.call("/v1/devices/gate-1/rekey", "POST", {"timeout": 5}, operator)
    assert is_problem(r, 403, "forbidden") and r[1]["required"] == "admin" and g1.version == 1
    st, out, _ = api.call("/v1/devices/gate-1/rekey", "POST", {"timeout": 5}, admin)
    assert st == 200, out
    assert out == {"device": "gate-1", "was": 1, "version": 2, "kid": "gate-1:2", "resumed": False}
    assert g1.version == 2 and api.reg.get("gate-1").key == g1.key and g1.key.hex() not in str(out)
    g2.wrong_proof = True
    r = api.call("/v1/devices/gate-2/rekey", "POST", {"timeout": 5}, admin)
    assert is_problem(r, 409, "conflict") and r[1]["reason"] == "bad_proof" and g2.version == 1
    # the generic route sends no rekey (its key would not be the registry's next one)
    r = api.call("/v1/devices/gate-1/commands", "POST", {"name": "rekey", "args": {"1": 3, "2": "00" * 40}}, admin)
    assert is_problem(r, 422, "invalid") and "rekey" in r[1]["detail"]
    api.reg.set_status("gate-2", "revoked")
    assert is_problem(api.call("/v1/devices/gate-2/rekey", "POST", {}, admin), 409, "conflict")
    audit = [(e["action"], e["target"], e["status"], e["detail"]) for e in api.acc.audit(limit=20, actions=("device.rekey",))]
    assert ("device.rekey", "gate-1", "200", {"was": 1, "version": 2, "resumed": False}) in audit
    assert ("device.rekey", "gate-2", "409", {"reason": "bad_proof"}) in audit
    assert any(a[2] == "403" for a in audit)  # the operator's refusal is recorded too
