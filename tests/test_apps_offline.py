"""Offline operation and unhappy paths of the payment apps, on the VM against the real broker,
ingest, ledger, scripted pay-after provider and session service.

Offline: the signed policy (caps, session count, duration) and the versioned allowlist (full and
differential); a board cut off from the broker by its own FaultyProxy decides within the policy,
says why it refuses, records offline=true, and re-authorises every offline session on reconnect
(a refusal is flagged by the cloud and alarmed by the device). Unhappy paths: payment denied,
authorisation timeout, door never opened, item never returned, network lost mid-session, fee
disagreement, and a rental returned at another station.
"""
import time

from host_tools.cloud import fees
from tests.appkit import PARKING, RENTAL

POLICY = {1: 1, 2: "CNY", 3: 1000, 4: 1500, 5: 3, 6: 86400}


def ok(r):
    assert r.ok, (r.state, r.code, r.data)
    return r.data


def cut_off(b):
    """Partition the board from the broker and wait until it knows."""
    n = len(b.lines)
    b.proxy.partition(3600)
    b.wait_for(r"mqtt down", 20, start=n)


def reconnect(b):
    n = len(b.lines)
    b.proxy.heal()
    b.wait_for(r"\bonline\b", 20, start=n)


def wait_until(pred, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.1)


def reqs(site, device, purpose):
    return [m for t, m, _ in site.w.all if t == f"v1/dev/{device}/up/req" and m.get("purpose") == purpose]


def alarms(site, device, code):
    return [m for t, m, _ in site.w.all if t == f"v1/dev/{device}/up/evt" and m.get("code") == code]


def through(b, lane, plate, expect="open"):
    hw = b.hw
    n = len(b.lines)
    hw.set_input(f"{lane}_loop", 1)
    b.wait_for(rf"FSM {lane} car -> plate", 10, start=n)
    hw.scan(f"{lane}_camera", plate)
    if expect != "open":
        return b.wait_for(expect, 20, start=n)
    hw.wait_output(f"{lane}_barrier", "open", 20)
    hw.set_input(f"{lane}_loop", 0)
    hw.wait_output(f"{lane}_barrier", "closed", 10)


def test_policy_and_allowlist_full_then_differential(site):
    b = site.board("gate-al", "gate")
    dev = "gate-al"
    assert ok(site.cmd(dev, "set_policy", POLICY)) == {"version": 1}
    bad = site.cmd(dev, "set_policy", {1: 2, 2: "CNY", 3: 1000})
    assert bad.code == "bad_args"
    assert ok(site.cmd(dev, "set_allowlist", {1: 1, 2: 0, 4: [["A1", 500], ["B2", 500]]})) == {"version": 1, "n": 2}
    assert ok(site.cmd(dev, "set_allowlist", {1: 2, 2: 1, 3: 1, 4: [["C3", 700]], 5: ["B2"]})) == {"version": 2, "n": 2}
    stale = site.cmd(dev, "set_allowlist", {1: 3, 2: 1, 3: 1, 4: [["D4", 700]]})
    assert stale.code == "bad_args"  # its base (1) is not the device's version (2): nothing applied
    assert ok(site.cmd(dev, "set_allowlist", {1: 3, 2: 0, 4: [["A1", 500], ["D4", 700]]})) == {"version": 3, "n": 2}
    assert ok(site.cmd(dev, "set_allowlist", {1: 4, 2: 1, 3: 3, 5: ["A1"]})) == {"version": 4, "n": 1}
    # the list survives a reboot
    b.kill()
    site.boot(b)
    assert ok(site.cmd(dev, "set_allowlist", {1: 5, 2: 1, 3: 4, 4: [["E5", 1]]})) == {"version": 5, "n": 2}


def test_gate_offline_within_policy_refusals_and_reconnect(site):
    dev = "gate-off"
    b = site.board(dev, "gate", proxy=True)
    hw = b.hw
    for p in ("OFF1", "MID1"):
        site.svc.bind(p, "acct-" + p)
    ok(site.cmd(dev, "set_policy", POLICY))
    ok(site.cmd(dev, "set_allowlist", {1: 1, 2: 0, 4: [["OFF1", 1000], ["MID1", 1000]]}))
    through(b, "entry", "MID1")  # entered online: a pay-after order is open
    cut_off(b)
    through(b, "entry", "OFF1")  # allowlisted: enters offline
    m = through(b, "entry", "STRANGER", expect=r"ACT display '(.*not allowed.*)'")
    assert "offline" in m.group(1)
    assert hw.output("entry_barrier") == "closed"
    hw.set_input("entry_loop", 0)
    time.sleep(0.5)
    through(b, "exit", "MID1")  # network lost mid-session: leaves offline, within the policy
    through(b, "exit", "OFF1")
    reconnect(b)
    recs = site.wait_records(dev, 4, 30)
    by = {(r.payer, r.type): r for r in recs}
    assert by[("OFF1", 6)].offline and by[("OFF1", 8)].offline
    assert not by[("MID1", 6)].offline and by[("MID1", 8)].offline
    assert "STRANGER" not in {r.payer for r in recs}
    # every offline session is re-authorised, and everything reconciles
    wait_until(lambda: {m["sid"] for m in reqs(site, dev, "reauth")} >=
               {by[("OFF1", 6)].sid, by[("MID1", 6)].sid}, 20, "reauth of every offline session")
    for payer in ("OFF1", "MID1"):
        sid = by[(payer, 8)].sid
        wait_until(lambda: site.svc.settle_status(dev, sid)["status"] == "settled", 20,
                   lambda: f"{payer} settled: {site.svc.settle_status(dev, sid)} {site.svc.flags(dev)}")
        st = site.svc.settle_status(dev, sid)
        assert st["charged"] == by[(payer, 8)].amount or (st["charged"] is None and not by[(payer, 8)].amount)
    assert not site.svc.flags(dev)
    assert not alarms(site, dev, "reauth_refused")


def test_vending_offline_caps_count_and_refused_reauth(site):
    dev = "vend-off"
    b = site.board(dev, "vending", proxy=True)
    hw = b.hw
    payers = ["V1", "V2", "V3", "V4", "V5"]
    for p in payers:
        site.svc.bind(p, "acct-" + p)
    ok(site.cmd(dev, "set_policy", {1: 1, 2: "CNY", 3: 600, 4: 1500, 5: 3, 6: 86400}))
    ok(site.cmd(dev, "set_allowlist", {1: 1, 2: 0, 4: [[p, 1000] for p in payers]}))
    cut_off(b)
    inv = ["cola#1", "cola#2", "chips#1", "chips#2", "chips#3"]

    def vend(payer, take):
        n = len(b.lines)
        hw.scan("rfid", ",".join(inv))
        time.sleep(0.2)
        hw.scan("qr", payer)
        m = b.wait_for(r"ACT door_lock unlocked|ACT display '(Sorry.*)'", 10, start=n)
        if m.group(1):
            return m.group(1)
        hw.set_input("door", 1)
        time.sleep(0.3)
        for t in take:
            inv.remove(t)
        hw.scan("rfid", ",".join(inv))
        time.sleep(0.3)
        hw.set_input("door", 0)
        b.wait_for(r"FSM door door_closed -> idle", 10, start=n)
        return None

    assert vend("V1", ["chips#3"]) is None            # 600: V1 is at its per-payer cap now
    assert "over cap" in vend("V1", [])               # per-payer cap
    assert "not allowed" in vend("NOBODY", [])        # not on the list
    assert vend("V2", ["chips#1", "cola#1"]) is None  # 950: 1550 in all, over the total cap
    assert "over cap" in vend("V3", [])               # total cap
    site.provider.refuse("acct-V2")  # the cloud will not stand behind V2 any more
    reconnect(b)
    recs = site.wait_records(dev, 4, 30)
    closes = [r for r in recs if r.type == 8]
    assert [r.payer for r in closes] == ["V1", "V2"] and all(r.offline for r in recs)
    v2 = closes[1].sid
    wait_until(lambda: site.svc.flags(dev, "reauth_refused"), 20, "cloud flag reauth_refused")
    assert site.svc.flags(dev, "reauth_refused")[0].sid == v2
    site.w.expect(lambda t, m, r: t.endswith("/up/evt") and m.get("code") == "reauth_refused", 20,
                  "device alarm reauth_refused")
    assert alarms(site, dev, "reauth_refused")[0]["detail"]["sid"] == v2
    # V1 re-authorised and charged; the device's offline exposure is back to zero: V3 may go
    wait_until(lambda: site.svc.settle_status(dev, closes[0].sid)["status"] == "settled", 20, "V1 settled")


def test_vending_offline_session_count(site):
    dev = "vend-cnt"
    b = site.board(dev, "vending", proxy=True)
    hw = b.hw
    ok(site.cmd(dev, "set_policy", {1: 1, 2: "CNY", 3: 5000, 4: 9000, 5: 2, 6: 86400}))
    ok(site.cmd(dev, "set_allowlist", {1: 1, 2: 0, 4: [["C1", 5000]]}))
    cut_off(b)
    hw.scan("rfid", "cola#1")
    for i in range(2):
        n = len(b.lines)
        hw.scan("qr", "C1")
        hw.wait_output("door_lock", "unlocked", 10)
        hw.set_input("door", 1)
        time.sleep(0.3)
        hw.set_input("door", 0)  # took nothing
        b.wait_for(r"FSM door door_closed -> idle", 10, start=n)
    n = len(b.lines)
    hw.scan("qr", "C1")
    b.wait_for(r"ACT display 'Sorry: offline: too many'", 10, start=n)


def test_rental_offline_rent_and_return_reconcile(site):
    dev = "rent-off"
    b = site.board(dev, "rental", proxy=True)
    hw = b.hw
    site.svc.bind("R1", "acct-R1")
    ok(site.cmd(dev, "set_policy", POLICY))
    ok(site.cmd(dev, "set_allowlist", {1: 1, 2: 0, 4: [["R1", 1000]]}))
    for i in range(8):
        hw.set_input(f"slots.{i}", 1)
    cut_off(b)
    hw.scan("qr", "R1")
    hw.wait_output("locks.0", "unlocked", 10)
    hw.set_input("slots.0", 0)
    hw.wait_output("locks.0", "locked", 5)
    time.sleep(1.2)
    hw.scan("rfid", f"{dev}-item0")
    time.sleep(0.2)
    hw.set_input("slots.0", 1)
    b.wait_for(r"FSM slot0 returned -> stocked", 10)
    reconnect(b)
    recs = site.wait_records(dev, 2, 30)
    assert all(r.offline for r in recs) and recs[1].reason == "returned"
    wait_until(lambda: reqs(site, dev, "reauth"), 20, "reauth")
    wait_until(lambda: site.svc.settle_status(dev, recs[1].sid)["status"] == "settled", 20, "settled")
    assert site.svc.settle_status(dev, recs[1].sid)["charged"] == recs[1].amount == 200
    assert not site.svc.flags(dev)


# ---- unhappy paths -----------------------------------------------------------------------------
def test_rental_payment_denied(site):
    dev = "rent-deny"
    b = site.board(dev, "rental")
    site.svc.bind("BAD", "acct-bad")
    site.provider.refuse("acct-bad")
    b.hw.set_input("slots.0", 1)
    b.hw.scan("qr", "BAD")
    b.wait_for(r"ACT display 'Sorry: credit refused'", 10)
    assert b.hw.output("locks.0") in (None, "locked")
    time.sleep(0.5)
    assert site.ledger.count(dev) == 0


def test_auth_timeout_decides_offline(site):
    dev = "gate-slow"
    b = site.board(dev, "gate")
    site.svc.bind("SLOW1", "acct-slow")
    site.svc.bind("SLOW2", "acct-slow2")
    ok(site.cmd(dev, "set_policy", POLICY))
    ok(site.cmd(dev, "set_allowlist", {1: 1, 2: 0, 4: [["SLOW1", 1000]]}))
    site.provider.latency_s = 10.0  # beyond the device's AUTH_TIMEOUT_S (8)
    t = time.monotonic()
    through(b, "entry", "SLOW1")
    assert time.monotonic() - t >= 7.5
    rec = site.wait_records(dev, 1)[0]
    assert rec.type == 6 and rec.offline  # decided offline, within the policy
    # a payer not on the list is refused, and the display says why
    through(b, "entry", "SLOW2", expect=r"ACT display '.*offline: not allowed.*'")
    site.provider.latency_s = 0.0
    # the late answer to the first request re-authorises the offline session: nothing is left
    wait_until(lambda: site.svc.session(dev, rec.sid) and site.svc.session(dev, rec.sid).granted, 20, "late grant")
    time.sleep(1.0)
    assert not site.svc.flags(dev) and not alarms(site, dev, "reauth_refused")


def test_vending_door_never_opened_settles_at_zero(site):
    dev = "vend-shut"
    b = site.board(dev, "vending")
    site.svc.bind("U1", "acct-u1")
    b.hw.scan("rfid", "cola#1,cola#2")
    time.sleep(0.2)
    b.hw.scan("qr", "U1")
    b.hw.wait_output("door_lock", "unlocked", 10)
    b.hw.wait_output("door_lock", "locked", 40)  # nobody opens it: relock after OPEN_WAIT_S
    close = site.wait_records(dev, 2)[-1]
    assert close.type == 8 and close.amount == 0 and close.reason == "not_opened"
    wait_until(lambda: site.svc.settle_status(dev, close.sid)["status"] in ("settled", "settled_flagged"), 10)
    st = site.svc.settle_status(dev, close.sid)
    assert st["charged"] in (0, None) and not st["flags"]


def test_rental_never_returned_fee_rises_with_the_clock(site):
    dev = "rent-late"
    week = 7 * 86400  # commands stay valid on a device clock days ahead (and the device allows it)
    b = site.board(dev, "rental", settings={"cmd_ttl_s": week})
    hw = b.hw
    site.svc.bind("LATE", "acct-late")
    site.svc.cmd_ttl = week
    for i in range(8):
        hw.set_input(f"slots.{i}", 1)
    hw.scan("qr", "LATE")
    hw.wait_output("locks.0", "unlocked", 10)
    hw.set_input("slots.0", 0)
    hw.wait_output("locks.0", "locked", 5)
    opened = site.wait_records(dev, 1)[0]
    site.send_time(dev, opened.t0 + 5 * 3600 + 60, ttl=week)  # five hours later, still out
    b.wait_for(r"time set", 5, start=len(b.lines) - 5)
    time.sleep(1.0)
    assert site.ledger.count(dev) == 1  # still open: nothing closes a rental but its return
    site.send_time(dev, opened.t0 + 2 * 86400 + 60, ttl=week)  # two days later
    time.sleep(0.5)
    hw.scan("rfid", f"{dev}-item0")
    time.sleep(0.2)
    hw.set_input("slots.0", 1)
    close = site.wait_records(dev, 2)[-1]
    assert close.t1 - close.t0 >= 2 * 86400
    amount, converted = fees.rental(RENTAL, close.t0, close.t1)
    assert close.amount == amount and (close.reason == "purchase") == converted
    assert amount > fees.rental(RENTAL, close.t0, close.t0 + 5 * 3600 + 60)[0]
    wait_until(lambda: site.svc.settle_status(dev, close.sid)["status"] == "settled", 15, "settled")
    assert site.svc.settle_status(dev, close.sid)["charged"] == amount


def test_fee_disagreement_is_flagged_and_the_cloud_amount_charged(site):
    dev = "gate-fee"
    b = site.board(dev, "gate")
    site.svc.bind("FEE1", "acct-fee")
    # the device gets a tariff the session service does not know of (no free minutes, dear)
    ok(site.cmd(dev, "set_tariff", {**PARKING, 1: 2, 3: 0, 5: 900}))
    through(b, "entry", "FEE1")
    time.sleep(1.2)
    through(b, "exit", "FEE1")
    close = site.wait_records(dev, 2)[-1]
    assert close.amount == 900  # the device's tariff: one started period
    cloud = fees.parking(PARKING, close.t0, close.t1, False)
    assert cloud == 0  # the cloud's: within the free minutes
    wait_until(lambda: site.svc.flags(dev, "fee_mismatch"), 10, "fee_mismatch flag")
    f = site.svc.flags(dev, "fee_mismatch")[0]
    assert f.sid == close.sid and f.device_amount == 900 and f.cloud_amount == 0
    order = site.provider.get(f"{dev}:{close.sid}")
    assert order.amount == 0  # the cloud charges its own amount


def test_rental_returned_at_another_station(site):
    a = site.board("rent-a", "rental")
    bb = site.board("rent-b", "rental")
    site.svc.bind("TRAV", "acct-trav")
    for b in (a, bb):
        for i in range(8):
            b.hw.set_input(f"slots.{i}", 1)
    bb.hw.set_input("slots.7", 0)  # B has a free slot
    time.sleep(0.3)
    a.hw.scan("qr", "TRAV")
    a.hw.wait_output("locks.0", "unlocked", 10)
    a.hw.set_input("slots.0", 0)
    a.hw.wait_output("locks.0", "locked", 5)
    opened = site.wait_records("rent-a", 1)[0]
    time.sleep(1.2)
    # B's slot 7 is empty (its item went missing: a slot_forced alarm): the item goes in there
    n = len(bb.lines)
    bb.hw.scan("rfid", "rent-a-item0")
    time.sleep(0.2)
    bb.hw.set_input("slots.7", 1)
    req = site.w.expect(lambda t, m, r: t == "v1/dev/rent-b/up/req" and m.get("purpose") == "return", 10,
                        "return auth_req")[1]
    assert req["payer"] == "rent-a-item0"
    bb.wait_for(r"FSM slot7 returned -> stocked", 15, start=n)
    close = site.wait_records("rent-b", 1)[-1]
    assert close.type == 8 and close.sid == opened.sid and close.payer == "TRAV" and close.t0 == opened.t0
    assert close.amount == fees.rental(RENTAL, close.t0, close.t1)[0] == 200
    order_no = f"rent-a:{opened.sid}"
    wait_until(lambda: site.provider.get(order_no).amount is not None, 15, "charged")
    assert site.provider.get(order_no).amount == 200
    assert not site.svc.flags()


def test_heartbeat_reports_offline_budget_until_reauthorised(site):
    """SPEC §4 heartbeat 18 off_amt, 19 off_n: the offline budget used, from the app through the
    agent's Context hook; absent while nothing is owed, then 600 / 1 after a vend served offline,
    and absent again once the cloud has re-authorised it."""
    dev = "vend-hb"
    b = site.board(dev, "vending", proxy=True, settings={"hb_s": 5})
    hw = b.hw
    site.svc.bind("H1", "acct-H1")
    ok(site.cmd(dev, "set_policy", {1: 1, 2: "CNY", 3: 5000, 4: 9000, 5: 4, 6: 86400}))
    ok(site.cmd(dev, "set_allowlist", {1: 1, 2: 0, 4: [["H1", 5000]]}))
    topic = f"v1/dev/{dev}/up/hb"

    def beats(start):
        return [m for t, m, _ in site.w.all[start:] if t == topic]

    wait_until(lambda: beats(0), 15, "a first heartbeat")
    first = beats(0)[0]
    assert "off_amt" not in first and "off_n" not in first  # nothing owed: as small as before
    cut_off(b)
    hw.scan("rfid", "cola#1,chips#1")
    time.sleep(0.2)
    n = len(b.lines)
    hw.scan("qr", "H1")
    hw.wait_output("door_lock", "unlocked", 10)
    hw.set_input("door", 1)
    time.sleep(0.3)
    hw.scan("rfid", "cola#1")  # took the chips: 600 charged offline
    time.sleep(0.3)
    hw.set_input("door", 0)
    b.wait_for(r"FSM door door_closed -> idle", 10, start=n)
    time.sleep(6)  # a beat falls due while cut off: it goes as soon as the link is back
    mark = len(site.w.all)
    reconnect(b)
    # the pending beat is built at once, before the re-authorisation (a second after the link)
    wait_until(lambda: beats(mark), 15, "a heartbeat after reconnecting")
    hb = beats(mark)[0]
    assert (hb.get("off_amt"), hb.get("off_n")) == (600, 1), hb
    recs = site.wait_records(dev, 2, 30)
    close = next(r for r in recs if r.type == 8)
    assert close.offline and close.amount == 600
    wait_until(lambda: site.svc.settle_status(dev, close.sid)["status"] == "settled", 20, "settled")
    # re-authorised: the device owes nothing offline any more, and the next beats say so
    mark = len(site.w.all)
    wait_until(lambda: any("off_amt" not in m and "off_n" not in m for m in beats(mark)), 20,
               lambda: f"a heartbeat without off_amt / off_n: {beats(mark)}")
