"""The session service (host_tools/cloud/sessions.py) at gates: entry and exit, QR payment, fee
disagreements, limits, reauthorisation, offline sessions. The rig is
tests/sessionkit.py (real Mosquitto, fake devices, the ScriptedProvider, a real IngestWorker)."""
# ruff: noqa: F811  (`env` is the fixture imported from tests/sessionkit.py)
from __future__ import annotations

import time

import pytest

from host_tools.cloud import fees
from host_tools.cloud.payafter import OrderState
from tests.sessionkit import T_PARK, T_RENT, T_VEND, env, settled, wait_for  # noqa: F401 (env: the fixture)


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


def test_exit_is_priced_at_the_devices_t1_not_its_iat(env):
    """The device priced the stay at t1 and sealed the request a second later, across a fee step
    (bench/app_heap.py caught a 900 s stay charged 500 against the device's 0): the cloud prices t1.
    A t1 after the request's own iat is a lie about time: flagged, iat used."""
    d = env.device("gate-1")
    env.svc.bind("SH-T1", "acct-t1")
    now = int(time.time())
    t0 = now - 3600                                  # one started hour at t1; two at iat
    assert (fees.parking(T_PARK, t0, now), fees.parking(T_PARK, t0, now + 1)) == (250, 500)
    d.auth_req("entry", "p1", "SH-T1", t0=t0)
    d.wait("auth", "p1")
    d.auth_req("exit", "p1", "SH-T1", t0=t0, amount=250, cur="EUR", t1=now, iat=now + 1)
    assert d.wait("auth", "p1", 2)[1][4] == 250
    assert env.provider.get("gate-1:p1").amount == 250 and env.svc.flags() == []

    d.auth_req("entry", "p2", "SH-T1", t0=t0)
    d.wait("auth", "p2")
    d.auth_req("exit", "p2", "SH-T1", t0=t0, amount=250, cur="EUR", t1=now + 1, iat=now)
    assert d.wait("auth", "p2", 2)[1][4] == 250       # priced at iat, not the later t1
    assert [f.kind for f in env.svc.flags()] == ["clock_skew"]


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
