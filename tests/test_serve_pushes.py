"""Tariffs and bindings through the API (host_tools/service/pushes_api.py) on `edgepay serve`,
real Mosquitto: a tariff is checked, stored where the session service reads it, and sent signed; a
bad one is refused with nothing sent; bindings are set, read and removed; and with the `sessions`
part running, a tariff and a binding pushed over HTTP are what it grants an entry by, with no
Python written; the device's command and campaign histories."""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

from host_tools.cloud.registry import Registry
from host_tools.cloud.rollout import CommandAction, Rollouts
from host_tools.cloud.rollout_store import RolloutStore
from host_tools.service.config import ServiceConfig
from host_tools.service.run import Service
from tests.otastandin import StandIn
from tests.sessionkit import CLOUD, T_PARK, FakeDevice

TOKEN = "push-" + os.urandom(6).hex()


def call(url, method="GET", body=None):
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read().decode())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode() or "null")


def test_tariffs_and_bindings_pushed_over_http_are_what_sessions_charge_by(broker, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPAY_MQTT_PASSWORD", CLOUD[1])
    monkeypatch.setenv("PUSH_TOKEN", TOKEN)
    cfg = ServiceConfig(broker_port=broker.cloud_port, user=CLOUD[0], registry=str(tmp_path / "registry.db"),
                        ledger=f"sqlite:///{tmp_path / 'ledger.db'}", http_port=0, token_env="PUSH_TOKEN",
                        provider="scripted", instance="push-1")
    reg = Registry(cfg.registry)
    key = os.urandom(32)
    reg.add("gate-p1", key, "gate", "sim-gate")
    dev = StandIn(broker.cloud_port, "gate-p1", key, user=CLOUD[0], password=CLOUD[1],
                  script=lambda cmd: ("ok", None))
    fake = FakeDevice(broker, reg, "gate-p2", "gate")      # asks for entries; answers no commands
    try:
        with Service(cfg, only=["api", "sessions"]) as svc:
            u = svc.url
            tariff = {str(k): v for k, v in T_PARK.items()}
            st, out = call(f"{u}/v1/devices/gate-p1/tariff", "PUT", {"args": tariff})
            assert (st, out["state"]) == (200, "SUCCEEDED") and out["args"] == tariff
            assert dev.names() == ["set_tariff"] and dev.commands[0]["args"] == T_PARK
            st, got = call(f"{u}/v1/devices/gate-p1/tariff")
            assert st == 200 and got["args"] == tariff
            # refused before anything is stored or sent: a bad currency, an unknown key, no device
            for bad in ({**tariff, "2": "euro"}, {**tariff, "99": 1}, {"1": 2}):
                st, p = call(f"{u}/v1/devices/gate-p1/tariff", "PUT", {"args": bad})
                assert st == 422, (bad, p)
            assert dev.names() == ["set_tariff"] and call(f"{u}/v1/devices/gate-p1/tariff")[1]["args"] == tariff
            assert call(f"{u}/v1/devices/nope/tariff", "PUT", {"args": tariff})[0] == 404
            assert call(f"{u}/v1/devices/gate-p2/tariff")[0] == 404            # none pushed yet
            # bindings
            assert call(f"{u}/v1/bindings/SH-P1")[0] == 404
            assert call(f"{u}/v1/bindings/SH-P1", "PUT", {"account": "acct-9"}) == (200, {"ident": "SH-P1", "account": "acct-9"})
            assert call(f"{u}/v1/bindings/SH-P1")[1]["account"] == "acct-9"
            assert call(f"{u}/v1/bindings/SH-P1", "PUT", {"account": ""})[0] == 422
            # the sessions part grants by what was pushed (the fake device never answers set_tariff:
            # the tariff is stored before it is sent, so the part knows it all the same)
            st, out = call(f"{u}/v1/devices/gate-p2/tariff", "PUT", {"args": tariff, "timeout": 1})
            assert st == 200 and out["state"] == "TIMED_OUT"
            now = int(time.time())
            fake.auth_req("entry", "e-1", "SH-P1", iat=now, t0=now, slot=0)
            grant = fake.wait("auth", "e-1")[0]
            assert grant[2] is True and grant[3] == "gate-p2:e-1"
            assert call(f"{u}/v1/bindings/SH-P1", "DELETE")[0] == 200
            assert call(f"{u}/v1/bindings/SH-P1", "DELETE")[0] == 404
            fake.auth_req("entry", "e-2", "SH-P1", iat=now, t0=now, slot=0)
            assert fake.wait("auth", "e-2")[0][2] is False                       # unbound now
            # the device page's histories: its commands through the API, and its campaigns
            st, hist = call(f"{u}/v1/devices/gate-p1/commands")
            assert st == 200 and hist[-1]["name"] == "set_tariff" and hist[-1]["state"] == "SUCCEEDED"
            assert [h["http"] for h in hist] == ["422", "422", "422", "200"], hist   # newest first, refusals too
            st, page = call(f"{u}/v1/devices/gate-p1/commands?limit=2")
            assert st == 200 and len(page) == 2 and page[0]["id"] > page[1]["id"]
            assert call(f"{u}/v1/devices/gate-p1/campaigns") == (200, [])
            Rollouts(RolloutStore.open(cfg.ledger), {"command": CommandAction(svc.client)}).create(
                "hb-1", "command", {"name": "get_state", "args": []}, ["gate-p1", "gate-p2"])
            st, camps = call(f"{u}/v1/devices/gate-p1/campaigns")
            assert st == 200 and [(c["campaign"], c["action"], c["what"], c["state"]) for c in camps] == \
                [("hb-1", "command", "get_state", "pending")]
            assert call(f"{u}/v1/devices/nope/commands")[0] == 404
            st, audit = call(f"{u}/v1/audit")
            actions = [a["action"] for a in (audit if isinstance(audit, list) else audit.get("items", []))]
            assert st == 200 and {"tariff.push", "binding.set", "binding.remove"} <= set(actions), actions
    finally:
        dev.close()
        fake.close()
        reg.close()
