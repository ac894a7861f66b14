"""The session service (host_tools/cloud/sessions.py) with a real Mosquitto, fake devices and the
ScriptedProvider; the settle path through a real IngestWorker and a SQLite ledger.

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
from host_tools.cloud import fees
from host_tools.cloud.ingest import IngestWorker
from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.payafter import OrderState, ProviderTimeout, ScriptedProvider
from host_tools.cloud.registry import Registry
from host_tools.cloud.sessions import SessionService
from host_tools.protocol import build_mac0, encode_payload, open_message, seal, topic
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


# ---- entry / exit --------------------------------------------------------------------------------
def test_entry_granted_exit_agrees_and_settles(env):
    d = env.device("gate-1")
    env.svc.bind("SH-A001", "acct-1")
    now = int(time.time())
    t0 = now - 3700
    d.auth_req("entry", "s1", "SH-A001", t0=t0, slot=1)
    [a] = d.wait("auth", "s1")
    assert a == {1: "s1", 2: True, 3: "gate-1:s1", 4: max(3000, 7 * 1800), 6: 0}
    o = env.provider.get("gate-1:s1")
    assert (o.state, o.payer, o.device, o.limit, o.cur) == (OrderState.DOING, "acct-1", "gate-1", 12600, "EUR")
    assert env.svc.settle_status("gate-1", "s1")["status"] == "open"

    fee = fees.parking(T_PARK, t0, now)
    assert fee == 500
    d.auth_req("exit", "s1", "SH-A001", t0=t0, amount=fee, cur="EUR", auth="gate-1:s1", iat=now)
    a = d.wait("auth", "s1", 2)[1]
    assert a[2] is True and a[3] == "gate-1:s1" and a[4] == fee
    o = env.provider.get("gate-1:s1")
    assert (o.state, o.amount, o.end_device) == (OrderState.DONE, fee, "gate-1")

    # the records of the session reach the ledger; the settle path agrees
    d.record("sess_open", sid="s1", payer="SH-A001", t0=t0, slot=1, auth="gate-1:s1")
    d.record("sess_close", sid="s1", payer="SH-A001", t0=t0, slot=1, auth="gate-1:s1", amount=fee,
             cur="EUR", t1=now, lines=[["park", 1, fee]])
    st = settled(env, "gate-1", "s1")
    assert st == {"status": "settled", "order_no": "gate-1:s1", "order_state": "DONE", "device_amount": fee,
                  "cloud_amount": fee, "charged": fee, "cur": "EUR", "flags": []}
    assert env.svc.flags() == []
    assert [o.order_no for o in env.svc.orders()] == ["gate-1:s1"]


def test_exit_fee_disagreement_is_flagged_cloud_amount_charged(env):
    d = env.device("gate-1")
    env.svc.bind("SH-A002", "acct-2")
    now = int(time.time())
    t0 = now - 2 * 3600 - 60                         # 3 started hours: 750
    d.auth_req("entry", "s2", "SH-A002", t0=t0)
    d.wait("auth", "s2")
    d.auth_req("exit", "s2", "SH-A002", t0=t0, amount=500, cur="EUR", iat=now)  # device says 500
    a = d.wait("auth", "s2", 2)[1]
    assert a[2] is True and a[4] == 750
    assert env.provider.get("gate-1:s2").amount == 750
    [f] = env.svc.flags()
    assert (f.kind, f.device_amount, f.cloud_amount, f.order_no) == ("fee_mismatch", 500, 750, "gate-1:s2")
    # the device's close carries its own figure: the same disagreement, flagged once
    d.record("sess_close", sid="s2", payer="SH-A002", t0=t0, auth="gate-1:s2", amount=500, cur="EUR", t1=now)
    st = settled(env, "gate-1", "s2")
    assert st["status"] == "settled_flagged" and st["charged"] == 750 and st["flags"] == ["fee_mismatch"]
    assert len(env.svc.flags()) == 1


def test_refused_payer_and_deposit_mode(env):
    d = env.device("gate-1")
    env.svc.bind("SH-BAD", "acct-bad")
    env.svc.bind("SH-DEP", "acct-dep")
    env.provider.refuse("acct-bad")
    env.provider.set_deposit("acct-dep")
    d.auth_req("entry", "s3", "SH-BAD")
    d.auth_req("entry", "s4", "SH-DEP")
    assert d.wait("auth", "s3") == [{1: "s3", 2: False, 5: "credit refused"}]
    assert d.wait("auth", "s4")[0][6] == 1
    assert [o.order_no for o in env.provider.orders()] == ["gate-1:s4"]
    assert env.svc.settle_status("gate-1", "s3")["status"] == "denied"


def test_credit_limit_below_the_order_limit_is_refused(env):
    d = env.device("gate-1")
    env.svc.bind("SH-LOW", "acct-low")
    env.provider.set_credit("acct-low", 5000)        # the gate asks for 12600
    d.auth_req("entry", "s5", "SH-LOW")
    assert d.wait("auth", "s5")[0][5] == "credit refused"
    env.svc.set_limit("gate-1", 5000)
    d.auth_req("entry", "s5", "SH-LOW")              # a new request: decided again
    a = d.wait("auth", "s5", 2)[1]
    assert a[2] is True and a[4] == 5000


def test_unknown_plate_scan_qr_then_paid(env):
    d = env.device("gate-1")
    now = int(time.time())
    t0 = now - 5000                                  # 2 started hours: 500
    d.auth_req("entry", "s6", "SH-NEW", t0=t0)
    assert d.wait("auth", "s6") == [{1: "s6", 2: False, 5: "scan QR to pay"}]
    d.auth_req("exit", "s6", "SH-NEW", t0=t0, amount=500, cur="EUR", iat=now)
    assert d.wait("auth", "s6", 2)[1] == {1: "s6", 2: False, 5: "scan QR to pay"}
    assert env.svc.settle_status("gate-1", "s6")["status"] == "awaiting_qr"
    order = env.svc.pay_by_qr("gate-1", "s6")        # the user scans and pays
    assert (order.state, order.amount, order.payer) == (OrderState.DONE, 500, "qr:gate-1:s6")
    assert d.wait("paid", "s6") == [{1: "s6", 2: "gate-1:s6"}]
    assert env.svc.pay_by_qr("gate-1", "s6") == order   # idempotent (paid is sent again)
    assert len(env.provider.orders()) == 1
    assert env.svc.settle_status("gate-1", "s6")["status"] == "paid"
    # at the barrier again: paid, so granted
    d.auth_req("exit", "s6", "SH-NEW", t0=t0, amount=500, cur="EUR", iat=now + 30)
    a = d.wait("auth", "s6", 3)[2]
    assert a[2] is True and a[3] == "gate-1:s6"
    d.record("sess_close", sid="s6", payer="SH-NEW", t0=t0, amount=500, cur="EUR", t1=now + 30)
    assert settled(env, "gate-1", "s6")["charged"] == 500
    assert env.svc.flags() == []


def test_qr_at_entry_preauthorises_and_the_exit_charges_the_stay(env):
    """The QR at a gate's entry opens an order for the QR account and leaves it in progress; the
    exit charges the stay to it (past the free minutes: money; within them: zero), once, unflagged."""
    d = env.device("gate-1")
    now = int(time.time())
    for sid, stay, fee in (("q1", 5000, 500), ("q2", 600, 0)):
        t0 = now - stay
        d.auth_req("entry", sid, f"SH-{sid}", t0=t0)
        assert d.wait("auth", sid) == [{1: sid, 2: False, 5: "scan QR to pay"}]
        order = env.svc.pay_by_qr("gate-1", sid, account=f"walkin-{sid}")
        assert (order.state, order.payer, order.limit) == (OrderState.DOING, f"walkin-{sid}", 12600)
        assert d.wait("paid", sid) == [{1: sid, 2: f"gate-1:{sid}"}]
        assert env.svc.pay_by_qr("gate-1", sid, account=f"walkin-{sid}") == order   # idempotent
        assert env.svc.settle_status("gate-1", sid)["status"] == "open"
        d.record("sess_open", sid=sid, payer=f"SH-{sid}", t0=t0, auth=f"gate-1:{sid}")
        d.auth_req("exit", sid, f"SH-{sid}", t0=t0, amount=fee, cur="EUR", auth=f"gate-1:{sid}", iat=now)
        a = d.wait("auth", sid, 2)[1]
        assert a[2] is True and a[4] == fee
        d.record("sess_close", sid=sid, payer=f"SH-{sid}", t0=t0, auth=f"gate-1:{sid}", amount=fee, cur="EUR",
                 t1=now)
        st = settled(env, "gate-1", sid)
        assert (st["status"], st["charged"], st["flags"]) == ("settled", fee, [])
        assert [h.op for h in env.provider.history(f"gate-1:{sid}")] == ["create", "start", "complete"]
    assert env.svc.flags() == []


def test_qr_needs_a_known_session_and_a_sane_account(env):
    env.device("gate-1")
    with pytest.raises(KeyError):
        env.svc.pay_by_qr("gate-1", "nope")
    with pytest.raises(ValueError):
        env.svc.pay_by_qr("gate-1", "nope", account="")


def test_exit_without_entry(env):
    """Entered while the cloud was unreachable and no reauth came: a bound, trusted plate gets a
    late order at the exit; an unbound one is sent to the QR path."""
    d = env.device("gate-1")
    env.svc.bind("SH-LATE", "acct-late")
    now = int(time.time())
    t0 = now - 3000
    d.auth_req("exit", "e1", "SH-LATE", t0=t0, amount=250, cur="EUR", iat=now)
    a, = d.wait("auth", "e1")
    assert a[2] is True and a[3] == "gate-1:e1"
    assert env.provider.get("gate-1:e1").amount == 250
    d.auth_req("exit", "e2", "SH-ANON", t0=t0, amount=250, cur="EUR", iat=now)
    assert d.wait("auth", "e2")[0][5] == "scan QR to pay"
    assert env.svc.pay_by_qr("gate-1", "e2").amount == 250


def test_exit_cannot_close_another_sessions_order(env):
    d = env.device("gate-1")
    env.svc.bind("SH-V", "acct-v")
    env.svc.bind("SH-W", "acct-w")
    now = int(time.time())
    t0 = now - 3000
    d.auth_req("entry", "a1", "SH-V", t0=t0)
    d.auth_req("entry", "a2", "SH-W", t0=t0)
    d.wait("auth", "a1")
    d.wait("auth", "a2")
    d.auth_req("exit", "a2", "SH-W", t0=t0, amount=250, cur="EUR", auth="gate-1:a1", iat=now)
    assert d.wait("auth", "a2", 2)[1][3] == "gate-1:a2"
    assert env.provider.get("gate-1:a1").state is OrderState.DOING      # untouched
    assert env.provider.get("gate-1:a2").amount == 250
    assert [f.kind for f in env.svc.flags()] == ["auth_mismatch"]


def test_exit_clock_skew_uses_cloud_time(env):
    d = env.device("gate-1")
    env.svc.bind("SH-S", "acct-s")
    now = int(time.time())
    t0 = now - 3 * 3600 + 60                        # 3 started hours now: 750
    d.auth_req("entry", "k1", "SH-S", t0=t0)
    d.wait("auth", "k1")
    d.auth_req("exit", "k1", "SH-S", t0=t0, amount=250, cur="EUR", iat=now - 7200)  # clock 2 h behind
    assert d.wait("auth", "k1", 2)[1][4] == 750
    assert sorted(f.kind for f in env.svc.flags()) == ["clock_skew", "fee_mismatch"]


def test_over_limit_charges_the_limit_and_flags(env):
    d = env.device("gate-1")
    env.svc.bind("SH-A007", "acct-7")
    env.svc.set_limit("gate-1", 300)
    now = int(time.time())
    t0 = now - 3 * 3600
    d.auth_req("entry", "s7", "SH-A007", t0=t0)
    assert d.wait("auth", "s7")[0][4] == 300
    d.auth_req("exit", "s7", "SH-A007", t0=t0, amount=750, cur="EUR", iat=now)
    a = d.wait("auth", "s7", 2)[1]
    assert a[2] is True and a[4] == 300
    assert env.provider.get("gate-1:s7").amount == 300
    [f] = env.svc.flags()
    assert (f.kind, f.cloud_amount, f.charged) == ("over_limit", 750, 300)


# ---- reauth --------------------------------------------------------------------------------------
def test_reauth_refused_is_flagged_and_denied(env):
    d = env.device("gate-1")
    env.svc.bind("SH-OK", "acct-ok")
    env.svc.bind("SH-GONE", "acct-gone")
    env.provider.refuse("acct-gone")
    t0 = int(time.time()) - 600
    d.auth_req("reauth", "o1", "SH-OK", t0=t0)
    d.auth_req("reauth", "o2", "SH-GONE", t0=t0)
    d.auth_req("reauth", "o3", "SH-NOBODY", t0=t0)
    a1, = d.wait("auth", "o1")
    assert a1[2] is True and a1[3] == "gate-1:o1"
    assert d.wait("auth", "o2")[0] == {1: "o2", 2: False, 5: "credit refused"}
    assert d.wait("auth", "o3")[0][2] is False
    flags = {(f.sid, f.kind) for f in env.svc.flags()}
    assert flags == {("o2", "reauth_refused"), ("o3", "reauth_refused")}


def test_offline_session_settled_late_or_flagged(env):
    """Closed offline without a reauth: the settle path opens a late order, or flags a refusal."""
    d = env.device("gate-1")
    env.svc.bind("SH-OFF", "acct-off")
    env.svc.bind("SH-OFF2", "acct-off2")
    env.provider.refuse("acct-off2")
    t0 = 1_700_000_000
    for sid, plate in (("f1", "SH-OFF"), ("f2", "SH-OFF2"), ("f3", "SH-NONE")):
        d.record("sess_open", sid=sid, payer=plate, t0=t0, offline=True)
        d.record("sess_close", sid=sid, payer=plate, t0=t0, offline=True, amount=250, cur="EUR", t1=t0 + 3600)
    assert settled(env, "gate-1", "f1")["charged"] == 250
    wait_for(lambda: env.svc.settle_status("gate-1", "f3")["status"] == "unpaid")
    assert env.svc.settle_status("gate-1", "f2")["status"] == "unpaid"
    assert {(f.sid, f.kind) for f in env.svc.flags()} == {("f2", "offline_refused"), ("f3", "no_order")}


def test_no_charge_closes_settle_at_zero_whatever_the_duration(env):
    """SPEC staff commands: remote_open, cancelled and not_taken closes owe nothing."""
    d = env.device("gate-1")
    env.svc.bind("SH-CX", "acct-cx")
    now = int(time.time())
    t0 = now - 5 * 3600                              # hours parked: a normal exit would cost money
    d.auth_req("entry", "c1", "SH-CX", t0=t0)
    assert d.wait("auth", "c1")[0][2] is True
    d.record("sess_open", sid="c1", payer="SH-CX", t0=t0, auth="gate-1:c1")
    d.record("sess_close", sid="c1", payer="SH-CX", t0=t0, auth="gate-1:c1", amount=0, cur="EUR", t1=now,
             reason="cancelled")
    st = settled(env, "gate-1", "c1")
    assert (st["status"], st["cloud_amount"], st["charged"], st["flags"]) == ("settled", 0, 0, [])
    assert env.provider.get("gate-1:c1").amount == 0
    d.record("sess_close", sid="m1", payer="staff", t0=now, slot=0, amount=0, cur="EUR", t1=now,
             reason="remote_open")
    st = settled(env, "gate-1", "m1")
    assert (st["status"], st["flags"]) == ("settled", [])
    # a device that charges for a cancelled session is out of contract: flagged, nothing charged
    d.auth_req("entry", "c2", "SH-CX", t0=t0)
    d.wait("auth", "c2")
    d.record("sess_close", sid="c2", payer="SH-CX", t0=t0, auth="gate-1:c2", amount=900, cur="EUR", t1=now,
             reason="cancelled")
    st = settled(env, "gate-1", "c2")
    assert (st["status"], st["charged"], st["flags"]) == ("settled_flagged", 0, ["fee_mismatch"])
    assert env.svc.flags() and all(f.sid == "c2" for f in env.svc.flags())


# ---- vending / rental ----------------------------------------------------------------------------
def test_vend_settles_from_the_lines(env):
    d = env.device("vend-1", "vending", T_VEND)
    env.svc.bind("QR-77", "acct-77")
    d.auth_req("vend", "v1", "QR-77")
    a, = d.wait("auth", "v1")
    assert a[2] is True and a[4] == 150 * 5
    d.auth_req("entry", "v2", "QR-77")               # not a vending purpose
    assert d.wait("auth", "v2")[0][5] == "bad purpose"
    d.record("sess_close", sid="v1", payer="QR-77", t0=1_700_000_000, auth="vend-1:v1", amount=395, cur="GBP",
             t1=1_700_000_030, lines=[["A1", 2, 150], ["B2", 1, 95]])
    st = settled(env, "vend-1", "v1")
    assert (st["status"], st["charged"]) == ("settled", 395)
    assert env.provider.get("vend-1:v1").lines == (("A1", 2, 150), ("B2", 1, 95))
    # a device that priced a line wrong: flagged, the price list's amount is charged
    d.auth_req("vend", "v3", "QR-77")
    d.wait("auth", "v3")
    d.record("sess_close", sid="v3", payer="QR-77", t0=1_700_000_000, auth="vend-1:v3", amount=100, cur="GBP",
             t1=1_700_000_030, lines=[["B2", 1, 100]])
    st = settled(env, "vend-1", "v3")
    assert (st["status"], st["charged"], st["flags"]) == ("settled_flagged", 95, ["fee_mismatch"])


def test_rental_return_converts(env):
    d = env.device("rent-1", "rental", T_RENT)
    env.svc.bind("TAG-9", "acct-9")
    now = int(time.time())
    t0 = now - 360000
    d.auth_req("rent", "r1", "TAG-9", t0=t0)
    assert d.wait("auth", "r1")[0][4] == 2500        # the purchase price
    d.auth_req("return", "r1", "TAG-9", t0=t0, amount=2500, cur="USD", iat=now)
    assert d.wait("auth", "r1", 2)[1][2] is True
    o = env.provider.get("rent-1:r1")
    assert (o.amount, o.lines) == (2500, (("purchase", 1, 2500),))
    assert env.svc.flags() == []


# ---- idempotency, failures -----------------------------------------------------------------------
def test_duplicate_auth_req_one_order_same_answer(env):
    d = env.device("gate-1")
    env.svc.bind("SH-DUP", "acct-dup")
    env.provider.latency_s = 0.05                    # duplicates overlap the first decision
    raw = d.auth_req("entry", "s8", "SH-DUP")
    for _ in range(3):
        d.publish(raw)                               # QoS1 redelivery: the same bytes
    answers = d.wait("auth", "s8", 4)
    assert all(a == answers[0] for a in answers) and answers[0][2] is True
    assert len(env.provider.orders()) == 1
    assert [c.op for c in env.provider.calls if c.op in ("create", "start")] == ["create", "start"]
    assert env.svc.stats["duplicates"] == 3
    # a new request (new seq) for the same session: the same order, the same grant
    d.auth_req("entry", "s8", "SH-DUP")
    assert d.wait("auth", "s8", 5)[4] == answers[0]
    assert len(env.provider.orders()) == 1
    [o] = env.provider.orders()
    assert [h.op for h in o.history] == ["create", "start"]
    # the same seq with other content (a device bug or a forgery with the key): no answer
    seq = d.chain.seq
    d.publish(seal(d.chain.key, d.chain.kid, d.req_topic, {"type": "auth_req", "seq": seq, "sid": "s8x",
                                                             "payer": "SH-DUP", "purpose": "entry"}))
    wait_for(lambda: env.svc.refused["seq_reuse"] == 1)
    assert d.cmds("auth", "s8x") == [] and len(env.provider.orders()) == 1


def test_provider_timeout_explicit_deny_then_retry(env):
    d = env.device("gate-1")
    env.svc.bind("SH-TO", "acct-to")
    env.provider.fail_next("create", ProviderTimeout)
    d.auth_req("entry", "s9", "SH-TO")
    assert d.wait("auth", "s9") == [{1: "s9", 2: False, 5: "provider unavailable"}]
    assert env.provider.orders() == []
    d.auth_req("entry", "s9", "SH-TO")               # the device (or the user) retries
    assert d.wait("auth", "s9", 2)[1][2] is True


def test_provider_timeout_that_landed_is_swept(env):
    """start timed out after it took effect: denied; no retry comes; sweep cancels the order."""
    d = env.device("gate-1")
    env.svc.bind("SH-TL", "acct-tl")
    env.provider.fail_next("start", ProviderTimeout, applied=True)
    d.auth_req("entry", "s10", "SH-TL")
    assert d.wait("auth", "s10")[0][5] == "provider unavailable"
    assert env.provider.get("gate-1:s10").state is OrderState.DOING   # it landed
    assert env.svc.sweep(time.time())["cancelled"] == []               # not yet in doubt long enough
    out = env.svc.sweep(time.time() + env.svc.doubt_s + 1)
    assert out["cancelled"] == ["gate-1:s10"]
    assert env.provider.get("gate-1:s10").state is OrderState.REVOKED


def test_exit_complete_timeout_grants_and_settles_later(env):
    d = env.device("gate-1")
    env.svc.bind("SH-P", "acct-p")
    now = int(time.time())
    t0 = now - 1000
    d.auth_req("entry", "s11", "SH-P", t0=t0)
    d.wait("auth", "s11")
    env.provider.fail_next("complete", ProviderTimeout)
    d.auth_req("exit", "s11", "SH-P", t0=t0, amount=250, cur="EUR", iat=now)
    assert d.wait("auth", "s11", 2)[1][2] is True    # the DOING order guarantees the money
    assert env.provider.get("gate-1:s11").state is OrderState.DOING
    assert env.svc.settle_status("gate-1", "s11")["status"] == "pending"
    d.record("sess_close", sid="s11", payer="SH-P", t0=t0, auth="gate-1:s11", amount=250, cur="EUR", t1=now)
    assert settled(env, "gate-1", "s11")["charged"] == 250


def test_settle_retried_by_sweep(env):
    d = env.device("gate-1")
    env.svc.bind("SH-R", "acct-r")
    t0 = int(time.time()) - 1000
    d.auth_req("entry", "s12", "SH-R", t0=t0)
    d.wait("auth", "s12")
    env.provider.fail_next("complete", ProviderTimeout)
    d.record("sess_close", sid="s12", payer="SH-R", t0=t0, auth="gate-1:s12", amount=250, cur="EUR", t1=t0 + 1000)
    wait_for(lambda: env.svc.settle_status("gate-1", "s12")["status"] == "pending")
    assert env.svc.sweep()["retried"] == 1
    assert env.svc.settle_status("gate-1", "s12")["status"] == "settled"
    assert env.svc.sweep()["retried"] == 0


def test_forged_and_misplaced_requests_are_refused(env):
    d = env.device("gate-1")
    env.svc.bind("SH-X", "acct-x")
    msg = {"type": "auth_req", "seq": 99, "sid": "sx", "payer": "SH-X", "purpose": "entry"}
    d.publish(seal(bytes(32), d.chain.kid, d.req_topic, msg))                     # wrong key
    d.publish(build_mac0(d.chain.key, d.chain.kid, topic("gate-1", "status"),     # another topic's MAC
                         encode_payload(msg, d.req_topic)))
    d.auth_req("entry", "sy", "SH-X")
    d.wait("auth", "sy")
    assert d.cmds("auth", "sx") == []
    assert env.svc.refused["bad_mac"] == 2
    assert [o.order_no for o in env.provider.orders()] == ["gate-1:sy"]


def test_a_revoked_device_is_granted_nothing_and_its_open_sessions_are_flagged(env):
    """issue 15 §3: after `device revoke`, an authentic auth_req gets no grant (refused, counted),
    and device_revoked() flags each of its open sessions for an operator."""
    d = env.device("gate-1")
    env.svc.bind("SH-R1", "acct-r")
    d.auth_req("entry", "s1", "SH-R1", t0=int(time.time()) - 60, slot=1)
    d.wait("auth", "s1")
    env.registry.set_status("gate-1", "revoked")
    d.auth_req("entry", "s2", "SH-R1", t0=int(time.time()), slot=2)
    wait_for(lambda: env.svc.refused["device_revoked"] == 1, what="refused")
    assert d.cmds("auth", "s2") == []
    [s] = env.svc.device_revoked("gate-1")
    assert s.sid == "s1"
    assert [(f.kind, f.sid) for f in env.svc.flags("gate-1")] == [("device_revoked", "s1")]
    assert env.svc.device_revoked("gate-1") and len(env.svc.flags("gate-1")) == 1   # flagged once


def test_settle_by_polling_the_ledger(env, tmp_path):
    """Without on_commit (e.g. after a restart): settle_ledger finds the closed sessions."""
    d = env.device("gate-1")
    env.svc.bind("SH-L", "acct-l")
    t0 = int(time.time()) - 1000
    d.auth_req("entry", "s13", "SH-L", t0=t0)
    d.wait("auth", "s13")
    env.worker.on_commit = None
    d.record("sess_close", sid="s13", payer="SH-L", t0=t0, auth="gate-1:s13", amount=250, cur="EUR", t1=t0 + 1000)
    wait_for(lambda: any(s.state == "closed" for s in env.ledger.sessions("gate-1")))
    assert env.provider.get("gate-1:s13").state is OrderState.DOING
    assert env.svc.settle_ledger(env.ledger) == 1
    assert env.svc.settle_status("gate-1", "s13")["status"] == "settled"
    assert env.svc.settle_ledger(env.ledger) == 0


def test_on_commit_gets_committed_records_once_and_cannot_break_ingest(env):
    """IngestWorker.on_commit: newly committed records only (a resent duplicate is not passed
    again); a failing callback is counted and the records stay committed and acked."""
    d = env.device("gate-1")
    seen = []

    def boom(records):
        seen.extend((r.device, r.seq, r.type_name) for r in records)
        raise RuntimeError("consumer down")
    env.worker.on_commit = boom
    raw = d.record("sess_open", sid="c1", payer="SH-C", t0=1_700_000_000)
    wait_for(lambda: env.ledger.count("gate-1") == 1)
    wait_for(lambda: any(c.get("upto") == d.chain.seq for c in d.commands), what="ack")
    d.publish(raw, d.chain.topic)                   # a duplicate: acked again, not passed again
    wait_for(lambda: env.worker.stats["duplicates"] == 1)
    assert seen == [("gate-1", d.chain.seq, "sess_open")]
    assert env.worker.stats["errors"] == 1
