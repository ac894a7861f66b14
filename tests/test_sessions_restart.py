"""The session service stopped and started again on the same database (SQLite and PostgreSQL):
sessions open across the restart close and are charged once, bindings, tariffs, flags, answered
requests and pending settlements survive; `recover` takes what the ledger committed meanwhile.

The pay-after provider is another company's system: it keeps its orders through the cloud's
restart, so the tests keep one ScriptedProvider and restart everything of the cloud around it
(session service, its store, the ingest worker, the ledger connection). Devices are the fake MQTT
devices of test_sessions.py on a real Mosquitto.
"""
from __future__ import annotations

import time

import pytest

from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud import fees
from host_tools.cloud.ingest import IngestWorker
from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.payafter import OrderState, ProviderTimeout, ScriptedProvider
from host_tools.cloud.registry import Registry
from host_tools.cloud.session_store import SessionStore
from host_tools.cloud.sessions import SessionService
from tests.sessionkit import CLOUD, T_PARK, T_RENT, T_VEND, FakeDevice, wait_for


@pytest.fixture(params=["sqlite", "pg"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("pg").new_database()


class Cloud:
    """Everything of the cloud that a restart loses, around a provider that it does not."""

    def __init__(self, broker, registry, provider, url):
        self.broker, self.registry, self.provider, self.url = broker, registry, provider, url
        self.devices: list[FakeDevice] = []
        self.up = False
        self.start()

    def start(self, on_commit=True):
        self.ledger = open_ledger(self.url)
        self.store = SessionStore.open(self.url)
        self.svc = SessionService(self.registry, self.provider, BrokerSettings("127.0.0.1", self.broker.cloud_port, *CLOUD),
                                  store=self.store).start()
        self.worker = IngestWorker(self.registry, self.ledger, BrokerSettings("127.0.0.1", self.broker.cloud_port, *CLOUD),
                                   on_commit=self.svc.on_commit if on_commit else None).start()
        self.up = True

    def stop(self):
        self.worker.stop()
        self.svc.stop()
        self.store.close()
        self.ledger.close()
        self.up = False

    def restart(self):
        self.stop()
        self.start()
        return self.svc.recover(self.ledger)

    def device(self, name, kind="gate", tariff=T_PARK):
        d = FakeDevice(self.broker, self.registry, name, kind)
        self.devices.append(d)
        if tariff is not None:
            self.svc.set_tariff(name, tariff)
            d.wait("set_tariff", None)
        return d

    def settled(self, dev, sid, status=("settled", "settled_flagged")):
        wait_for(lambda: self.svc.settle_status(dev, sid)["status"] in status, what=f"{dev}/{sid} settled")
        return self.svc.settle_status(dev, sid)


@pytest.fixture
def cloud(broker, tmp_path, db_url):
    registry = Registry(str(tmp_path / "registry.db"))
    c = Cloud(broker, registry, ScriptedProvider(), db_url)
    yield c
    for d in c.devices:
        d.close()
        assert not d.bad, d.bad
    if c.up:
        c.stop()
    registry.close()


def ops(provider, order_no):
    return [h.op for h in provider.history(order_no)]


def test_gate_car_entered_before_the_restart_exits_and_is_charged_once(cloud):
    d = cloud.device("gate-1")
    cloud.svc.bind("SH-R1", "acct-r1")
    now = int(time.time())
    t0 = now - 3700
    d.auth_req("entry", "s1", "SH-R1", t0=t0, slot=1)
    assert d.wait("auth", "s1")[0][2] is True
    d.record("sess_open", sid="s1", payer="SH-R1", t0=t0, slot=1, auth="gate-1:s1")
    wait_for(lambda: cloud.ledger.count("gate-1") == 1)

    cloud.restart()
    assert cloud.svc.account("SH-R1") == "acct-r1"              # bindings survive
    assert cloud.svc.tariff("gate-1") == T_PARK                 # so does the tariff it charges by
    assert cloud.svc.settle_status("gate-1", "s1")["status"] == "open"

    fee = fees.parking(T_PARK, t0, now)
    d.auth_req("exit", "s1", "SH-R1", t0=t0, amount=fee, cur="EUR", auth="gate-1:s1", iat=now)
    a = d.wait("auth", "s1", 2)[1]
    assert a[2] is True and a[4] == fee
    d.record("sess_close", sid="s1", payer="SH-R1", t0=t0, slot=1, auth="gate-1:s1", amount=fee, cur="EUR",
             t1=now, lines=[["park", 1, fee]])
    st = cloud.settled("gate-1", "s1")
    assert (st["status"], st["charged"], st["flags"]) == ("settled", fee, [])
    assert ops(cloud.provider, "gate-1:s1") == ["create", "start", "complete"]


def test_gate_exit_answered_then_restart_then_duplicate_is_answered_again_not_charged_again(cloud):
    """Idempotency across a restart: the QoS1 duplicate of an answered exit gets the same answer
    from the store; a new exit request for the same session finds the DONE order."""
    d = cloud.device("gate-1")
    cloud.svc.bind("SH-R2", "acct-r2")
    now = int(time.time())
    t0 = now - 5000
    d.auth_req("entry", "s2", "SH-R2", t0=t0)
    d.wait("auth", "s2")
    raw = d.auth_req("exit", "s2", "SH-R2", t0=t0, amount=500, cur="EUR", auth="gate-1:s2", iat=now)
    first = d.wait("auth", "s2", 2)[1]
    cloud.restart()
    d.publish(raw)                                              # redelivered after the restart
    assert d.wait("auth", "s2", 3)[2] == first
    wait_for(lambda: cloud.svc.stats["duplicates"] == 1)
    d.auth_req("exit", "s2", "SH-R2", t0=t0, amount=500, cur="EUR", auth="gate-1:s2", iat=now + 5)
    again = d.wait("auth", "s2", 4)[3]
    assert again[2] is True and again[3] == "gate-1:s2"
    assert ops(cloud.provider, "gate-1:s2") == ["create", "start", "complete"]
    assert cloud.provider.get("gate-1:s2").amount == 500


def test_qr_at_entry_then_restart_then_exit_past_the_free_minutes_is_charged(cloud):
    d = cloud.device("gate-1")
    now = int(time.time())
    t0 = now - 5000                                             # 2 started hours: 500
    d.auth_req("entry", "q1", "SH-WALK", t0=t0)
    assert d.wait("auth", "q1")[0][5] == "scan QR to pay"
    order = cloud.svc.pay_by_qr("gate-1", "q1", account="walkin-1")
    assert (order.state, order.payer) == (OrderState.DOING, "walkin-1")
    assert d.wait("paid", "q1") == [{1: "q1", 2: "gate-1:q1"}]
    cloud.restart()
    assert cloud.svc.settle_status("gate-1", "q1")["status"] == "open"
    d.auth_req("exit", "q1", "SH-WALK", t0=t0, amount=500, cur="EUR", auth="gate-1:q1", iat=now)
    a = d.wait("auth", "q1", 2)[1]
    assert a[2] is True and a[4] == 500
    d.record("sess_close", sid="q1", payer="SH-WALK", t0=t0, auth="gate-1:q1", amount=500, cur="EUR", t1=now)
    st = cloud.settled("gate-1", "q1")
    assert (st["status"], st["charged"], st["flags"]) == ("settled", 500, [])
    assert ops(cloud.provider, "gate-1:q1") == ["create", "start", "complete"]


def test_vend_granted_before_the_restart_settles_after_it(cloud):
    d = cloud.device("vend-1", "vending", T_VEND)
    cloud.svc.bind("QR-R", "acct-qr")
    d.auth_req("vend", "v1", "QR-R")
    assert d.wait("auth", "v1")[0][2] is True
    cloud.restart()
    d.record("sess_close", sid="v1", payer="QR-R", t0=1_700_000_000, auth="vend-1:v1", amount=245, cur="GBP",
             t1=1_700_000_030, lines=[["A1", 1, 150], ["B2", 1, 95]])
    st = cloud.settled("vend-1", "v1")
    assert (st["status"], st["charged"]) == ("settled", 245)
    assert cloud.provider.get("vend-1:v1").lines == (("A1", 1, 150), ("B2", 1, 95))


def test_rental_open_across_the_restart_returns_at_its_station_and_at_another(cloud):
    d = cloud.device("rent-1", "rental", T_RENT)
    e = cloud.device("rent-2", "rental", T_RENT)
    cloud.svc.bind("CARD-1", "acct-c1")
    cloud.svc.bind("CARD-2", "acct-c2")
    now = int(time.time())
    t0 = now - 2000                                             # 2 started periods of 1800 s: 200
    for sid, card, tag in (("r1", "CARD-1", "ITEM-1"), ("r2", "CARD-2", "ITEM-2")):
        d.auth_req("rent", sid, card, t0=t0)
        assert d.wait("auth", sid)[0][2] is True
        d.record("sess_open", sid=sid, payer=card, t0=t0, slot=1, auth=f"rent-1:{sid}", item=tag)
    wait_for(lambda: cloud.store.item("ITEM-2") == ("rent-1", "r2"), what="item remembered")
    assert [r.item for r in cloud.ledger.records("rent-1")] == ["ITEM-1", "ITEM-2"]

    cloud.restart()
    fee = fees.rental(T_RENT, t0, now)[0]
    d.auth_req("return", "r1", "CARD-1", t0=t0, amount=fee, cur="USD", auth="rent-1:r1", iat=now)
    assert d.wait("auth", "r1", 2)[1][2] is True
    d.record("sess_close", sid="r1", payer="CARD-1", t0=t0, slot=1, auth="rent-1:r1", amount=fee, cur="USD",
             t1=now, reason="returned")
    assert cloud.settled("rent-1", "r1")["charged"] == fee

    # ITEM-2 comes back to the other station: it asks about a tag it never rented
    e.auth_req("return", "x-9", "ITEM-2", iat=now)
    a = e.wait("auth", "x-9")[0]
    assert (a[2], a[3], a[7], a[8], a[9]) == (True, "rent-1:r2", t0, "r2", "CARD-2")
    cloud.restart()                                             # the link to the rental survives too
    e.record("sess_close", sid="r2", payer="CARD-2", t0=t0, slot=3, auth="rent-1:r2", amount=fee, cur="USD",
             t1=now, reason="returned")
    st = cloud.settled("rent-1", "r2")
    assert (st["charged"], st["flags"]) == (fee, [])
    assert cloud.provider.get("rent-1:r2").end_device == "rent-2"
    assert cloud.store.item("ITEM-2") is None


def test_recover_takes_what_the_ledger_committed_while_the_service_was_away(cloud):
    """The ingest worker committed a rental's sess_open and a gate's sess_close but no session
    service saw them (it was down, or crashed before on_commit ran): recover() from the ledger."""
    g = cloud.device("gate-1")
    r = cloud.device("rent-1", "rental", T_RENT)
    cloud.svc.bind("SH-AWAY", "acct-away")
    cloud.svc.bind("CARD-A", "acct-a")
    now = int(time.time())
    t0 = now - 1000
    g.auth_req("entry", "w1", "SH-AWAY", t0=t0)
    g.wait("auth", "w1")
    r.auth_req("rent", "w2", "CARD-A", t0=t0)
    r.wait("auth", "w2")
    cloud.stop()
    cloud.start(on_commit=False)                                # a worker with nobody to tell
    g.record("sess_close", sid="w1", payer="SH-AWAY", t0=t0, auth="gate-1:w1", amount=250, cur="EUR", t1=now)
    r.record("sess_open", sid="w2", payer="CARD-A", t0=t0, slot=2, auth="rent-1:w2", item="ITEM-A")
    wait_for(lambda: cloud.ledger.count() == 2)
    assert cloud.provider.get("gate-1:w1").state is OrderState.DOING
    out = cloud.restart()
    assert out["items"] == 1 and out["settled"] == 1
    assert cloud.svc.settle_status("gate-1", "w1")["charged"] == 250
    assert cloud.store.item("ITEM-A") == ("rent-1", "w2")
    assert cloud.svc.recover(cloud.ledger)["settled"] == 0      # idempotent


def test_flags_and_pending_settlements_survive(cloud):
    d = cloud.device("gate-1")
    cloud.svc.bind("SH-F", "acct-f")
    cloud.svc.bind("SH-P", "acct-p")
    now = int(time.time())
    t0 = now - 2 * 3600 - 60                                    # 750
    d.auth_req("entry", "f1", "SH-F", t0=t0)
    d.wait("auth", "f1")
    d.auth_req("exit", "f1", "SH-F", t0=t0, amount=500, cur="EUR", iat=now)   # device says 500
    d.wait("auth", "f1", 2)
    assert [f.kind for f in cloud.svc.flags()] == ["fee_mismatch"]
    d.auth_req("entry", "p1", "SH-P", t0=t0)
    d.wait("auth", "p1")
    cloud.provider.fail_next("complete", ProviderTimeout)
    d.record("sess_close", sid="p1", payer="SH-P", t0=t0, auth="gate-1:p1", amount=750, cur="EUR", t1=now)
    wait_for(lambda: cloud.svc.settle_status("gate-1", "p1")["status"] == "pending")

    cloud.stop()
    cloud.start()
    [f] = cloud.svc.flags()
    assert (f.kind, f.sid, f.device_amount, f.cloud_amount) == ("fee_mismatch", "f1", 500, 750)
    assert cloud.svc.settle_status("gate-1", "p1")["status"] == "pending"
    assert cloud.svc.sweep()["retried"] == 1
    assert cloud.svc.settle_status("gate-1", "p1")["charged"] == 750
    # the device's close repeats the disagreement: still one flag
    d.record("sess_close", sid="f1", payer="SH-F", t0=t0, auth="gate-1:f1", amount=500, cur="EUR", t1=now)
    assert cloud.settled("gate-1", "f1")["flags"] == ["fee_mismatch"]
    assert len(cloud.svc.flags()) == 1


def test_seq_reuse_is_still_refused_after_a_restart(cloud):
    from host_tools.protocol import seal
    d = cloud.device("gate-1")
    cloud.svc.bind("SH-S", "acct-s")
    d.auth_req("entry", "u1", "SH-S")
    d.wait("auth", "u1")
    cloud.restart()
    seq = d.chain.seq
    d.publish(seal(d.chain.key, d.chain.kid, d.req_topic, {"type": "auth_req", "seq": seq, "sid": "u1x",
                                                             "payer": "SH-S", "purpose": "entry"}))
    wait_for(lambda: cloud.svc.refused["seq_reuse"] == 1)
    assert d.cmds("auth", "u1x") == [] and [o.order_no for o in cloud.provider.orders()] == ["gate-1:u1"]
