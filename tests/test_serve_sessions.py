"""The `sessions` part of `edgepay serve` (host_tools/service/sessions_part.py), real Mosquitto:
it answers a device's auth_req through the configured provider, and a request sent while it is
down is answered when it comes back under the same instance name; with ingest beside it a
committed close settles and becomes one `session.settled` webhook; the settings it refuses (no
provider, a bad one, one that is not a PayAfterProvider) each name what is wrong."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from host_tools.cloud import fees
from host_tools.cloud.webhooks import Webhooks
from host_tools.cloud.registry import Registry
from host_tools.cloud.session_store import SessionStore
from host_tools.service.config import ConfigError, ServiceConfig
from host_tools.service.run import Service
from host_tools.service.sessions_part import load_provider
from tests.sessionkit import CLOUD, T_PARK, FakeDevice, wait_for


def _post(url, body):
    req = urllib.request.Request(url, method="POST", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer sess-token"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def not_a_provider():
    return object()


@pytest.fixture
def cfg(broker, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPAY_MQTT_PASSWORD", CLOUD[1])
    monkeypatch.setenv("SESS_TOKEN", "sess-token")
    return ServiceConfig(broker_port=broker.cloud_port, user=CLOUD[0], registry=str(tmp_path / "registry.db"),
                         ledger=f"sqlite:///{tmp_path / 'ledger.db'}", provider="scripted", instance="t-1",
                         http_port=0, token_env="SESS_TOKEN")


def test_serve_answers_auth_and_keeps_what_came_while_it_was_down(broker, cfg):
    reg = Registry(cfg.registry)
    dev = FakeDevice(broker, reg, "gate-s1", "gate")
    store = SessionStore.open(cfg.ledger)
    store.set_binding("SH-S1", "acct-1")             # as an operator's tooling would, in the database
    store.save_tariff("gate-s1", T_PARK, time.time())
    store.close()
    try:
        with Service(cfg, only=["sessions"]) as svc:
            assert svc.parts == {"sessions"} and svc.not_ready() == []
            now = int(time.time())
            dev.auth_req("entry", "s-1", "SH-S1", iat=now, t0=now, slot=0)
            assert dev.wait("auth", "s-1")[0][2] is True
        now = int(time.time())
        dev.auth_req("entry", "s-2", "SH-S1", iat=now, t0=now, slot=0)   # nobody listens now
        time.sleep(0.2)
        assert not dev.cmds("auth", "s-2")
        with Service(cfg, only=["sessions"]):
            wait_for(lambda: bool(dev.cmds("auth", "s-2")), what="the queued request answered")
            assert dev.cmds("auth", "s-2")[0][2] is True
        # with ingest beside it, a committed close settles at once and is a session.settled webhook
        hook, _ = Webhooks(reg.db).add("http://127.0.0.1:9/hook", ["session.settled"])
        with Service(cfg, only=["sessions", "ingest", "api"]) as svc:
            t1 = int(time.time())
            t0 = t1 - 3700
            dev.auth_req("entry", "s-3", "SH-S1", iat=t1, t0=t0, slot=0)
            assert dev.wait("auth", "s-3")[0][2] is True
            fee = fees.parking(T_PARK, t0, t1)
            r1 = dev.record("sess_open", sid="s-3", payer="SH-S1", t0=t0, slot=0, auth="gate-s1:s-3")
            r2 = dev.record("sess_close", sid="s-3", payer="SH-S1", t0=t0, slot=0, auth="gate-s1:s-3", amount=fee,
                            cur="EUR", t1=t1, lines=[["park", 1, fee]])
            hooks = Webhooks(reg.db)
            wait_for(lambda: bool(hooks.deliveries(hook.id)), what="the session.settled delivery")
            [d] = hooks.deliveries(hook.id)
            body = json.loads(d.body)
            assert d.event == "session.settled" and body["data"]["sid"] == "s-3"
            assert (body["data"]["status"], body["data"]["charged"], body["data"]["cur"]) == ("settled", fee, "EUR")
            # the device's journal export against the ledger, through the API: equal, then one record
            # the ledger never got and one with other bytes
            seqs = [dev.chain.seq - 1, dev.chain.seq]        # the two records, one after the other
            journal = [{"seq": seqs[0], "raw": r1.hex()}, {"seq": seqs[1], "raw": r2.hex()}]
            st, rec = _post(svc.url + "/v1/devices/gate-s1/reconcile", {"records": journal})
            assert st == 200 and rec["ok"] is True and rec["journal_records"] == 2, rec
            bad = [{"seq": seqs[0], "raw": r2.hex()}, journal[1], {"seq": seqs[1] + 5, "raw": r2.hex()}]
            st, rec = _post(svc.url + "/v1/devices/gate-s1/reconcile", {"records": bad})
            assert (rec["ok"], rec["mismatched"], rec["missing"]) == (False, [seqs[0]], [seqs[1] + 5]), rec
            assert _post(svc.url + "/v1/devices/gate-s1/reconcile", {"records": [{"seq": 1, "raw": "zz"}]})[0] == 422
            assert _post(svc.url + "/v1/devices/nope/reconcile", {"records": []})[0] == 404
            # a ledger chain gate-s1~2 (a fresh board after a re-provisioning, SPEC §6) is the
            # device's: looked up as gate-s1, reconciled against that chain (which has none of these: missing)
            st, rec = _post(svc.url + "/v1/devices/gate-s1~2/reconcile", {"records": journal})
            assert st == 200 and (rec["device"], rec["ok"], rec["missing"]) == ("gate-s1~2", False, seqs), rec
            for bad_id in ("nope~2", "gate-s1~x", "gate-s1~"):
                assert _post(svc.url + f"/v1/devices/{bad_id}/reconcile", {"records": []})[0] == 404, bad_id
    finally:
        dev.close()
        reg.close()


def test_the_sessions_part_refuses_a_missing_or_bad_provider(cfg):
    cfg.provider = None
    with pytest.raises(ConfigError, match="needs a payment provider"):
        Service(cfg, only=["sessions"]).start()
    for spec, why in (("nocolon", "module:factory"), ("no.such.module:f", "No module"),
                      ("tests.test_serve_sessions:missing", "has no attribute"),
                      ("tests.test_serve_sessions:not_a_provider", "not a PayAfterProvider")):
        with pytest.raises(ConfigError, match=why):
            load_provider(spec)


def test_sessions_is_off_unless_asked_and_its_keys_are_checked(tmp_path):
    from host_tools.service.config import load
    assert load(None, env={}).parts["sessions"] is False
    f = tmp_path / "c.toml"
    f.write_text('[parts]\nsessions = true\n[sessions]\nprovider = "scripted"\ninstance = "a"\nauth_expiry_s = 30\n'
                 'claim_lease_s = 5\n')
    c = load(f, env={})
    assert (c.parts["sessions"], c.provider, c.instance, c.auth_expiry_s, c.claim_lease_s) == \
        (True, "scripted", "a", 30, 5)
    for bad in ("auth_expiry_s = 0", "claim_lease_s = -1", 'claim_lease_s = "x"'):
        f.write_text(f'[sessions]\n{bad}\n')
        with pytest.raises(ConfigError, match=bad.split()[0]):
            load(f, env={})
    f.write_text('[sessions]\nbogus = 1\n')
    with pytest.raises(ConfigError, match="bogus"):
        load(f, env={})
