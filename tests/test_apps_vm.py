"""Vending cabinet, rental station and the gate's unhappy paths on the VM, against the real
broker, ingest, ledger, scripted pay-after provider and session service."""
import time

from host_tools.cloud import fees
from tests.appkit import RENTAL


def stock(hw, slots=8):
    """A stocked station: every slot sensor sees its item."""
    for i in range(slots):
        hw.set_input(f"slots.{i}", 1)
    time.sleep(0.3)


def test_vending_session_charges_what_was_taken(site):
    site.svc.bind("user-7", "acct-7")
    asked: list[dict] = []
    handle = site.svc.handle
    site.svc.handle = lambda d, k, m: (asked.append(m), handle(d, k, m))[1]   # type: ignore[method-assign]
    b = site.board("vend-1", "vending")
    hw = b.hw
    hw.scan("rfid", "cola#1,cola#2,chips#1,water#1")  # the cabinet's inventory
    time.sleep(0.3)
    hw.scan("qr", "user-7")
    hw.wait_output("door_lock", "unlocked", 10)
    hw.set_input("door", 1)
    time.sleep(0.3)
    hw.scan("rfid", "cola#2,water#1")  # took a cola and the chips
    time.sleep(0.3)
    hw.set_input("door", 0)
    hw.wait_output("door_lock", "locked", 5)
    recs = site.wait_records("vend-1", 2)
    close = recs[-1]
    assert close.type == 8 and close.amount == 350 + 600 and close.currency == "CNY"
    assert sorted(map(tuple, close.lines)) == [("chips", 1, 600), ("cola", 1, 350)]
    assert not site.svc.flags("vend-1")
    # the request carries when it was asked (iat, trusted time), so one queued too long expires
    assert asked and asked[0]["purpose"] == "vend" and abs(asked[0]["iat"] - time.time()) < 60


def test_vending_refused_payer_never_unlocks_and_forced_door_alarms(site):
    site.svc.bind("poor", "acct-poor")
    site.provider.refuse("acct-poor")
    b = site.board("vend-2", "vending")
    hw = b.hw
    hw.scan("rfid", "cola#1")  # the reader reports what the cabinet holds (it serves only then)
    time.sleep(0.3)
    hw.scan("qr", "poor")
    b.wait_for(r"ACT display 'Sorry", 10)
    assert hw.output("door_lock") in (None, "locked")
    hw.set_input("door", 1)  # opened without a session
    site.w.expect(lambda t, m, r: t.endswith("/up/evt") and m.get("code") == "door_forced", 10, "door_forced alarm")
    assert site.ledger.count("vend-2") == 0


def test_rental_take_and_return_charges_started_periods(site):
    site.svc.bind("rider-1", "acct-r1")
    b = site.board("rent-1", "rental")
    hw = b.hw
    stock(hw)
    hw.scan("qr", "rider-1")
    hw.wait_output("locks.0", "unlocked", 10)
    hw.set_input("slots.0", 0)  # the item is taken
    hw.wait_output("locks.0", "locked", 5)
    opened = site.wait_records("rent-1", 1)[0]
    assert opened.type == 6 and opened.slot == 0
    [req] = [m for t, m, _ in site.w.all if t.endswith("/up/req") and m.get("purpose") == "rent"]
    assert req["t0"] == opened.t0  # one start on both sides (a return elsewhere is timed from it)
    time.sleep(1.2)  # out for at least a second: one started period
    hw.scan("rfid", "rent-1-item0")  # brought back: the reader sees its tag as it goes in
    time.sleep(0.3)
    hw.set_input("slots.0", 1)
    close = site.wait_records("rent-1", 2)[-1]
    assert close.type == 8 and close.reason == "returned"
    assert close.amount == fees.rental(RENTAL, close.t0, close.t1)[0] == 200  # one started period
    assert not site.svc.flags("rent-1")


def test_rental_item_not_taken_relocks_at_no_charge(site):
    site.svc.bind("rider-2", "acct-r2")
    b = site.board("rent-2", "rental")
    hw = b.hw
    stock(hw)
    hw.scan("qr", "rider-2")
    hw.wait_output("locks.0", "unlocked", 10)
    # nobody takes it: after the take window the slot relocks and the session closes at zero
    hw.wait_output("locks.0", "locked", 40)
    close = site.wait_records("rent-2", 2)[-1]
    assert close.type == 8 and close.amount == 0 and close.reason == "not_taken"


def test_gate_unknown_plate_pays_by_qr(site):
    b = site.board("gate-2", "gate")
    hw = b.hw
    hw.set_input("entry_loop", 1)
    time.sleep(0.2)
    hw.scan("entry_camera", "NOBODY1")
    m = b.wait_for(r"ACT display 'Scan QR to pay: (\S+)'", 10)
    assert hw.output("entry_barrier") in (None, "closed")
    site.svc.pay_by_qr("gate-2", m.group(1), account="walk-in")
    hw.wait_output("entry_barrier", "open", 10)
    recs = site.wait_records("gate-2", 1)
    assert recs[0].type == 6 and recs[0].auth


def test_gate_tailgate_raises_alarm_and_never_closes_on_a_car(site):
    site.svc.bind("T1", "acct-t")
    b = site.board("gate-3", "gate")
    hw = b.hw
    hw.set_input("entry_loop", 1)
    time.sleep(0.2)
    hw.scan("entry_camera", "T1")
    hw.wait_output("entry_barrier", "open", 10)
    hw.set_input("entry_loop", 0)  # first car through...
    time.sleep(0.3)
    hw.set_input("entry_loop", 1)  # ...a second one follows before the barrier closes
    site.w.expect(lambda t, m, r: t.endswith("/up/evt") and m.get("code") == "tailgate", 10, "tailgate alarm")
    time.sleep(2.0)
    assert hw.output("entry_barrier") == "open"  # never closes on the car on the loop
    hw.set_input("entry_loop", 0)
    hw.wait_output("entry_barrier", "closed", 5)


def test_vending_opens_no_door_before_the_reader_has_reported_the_inventory(site):
    """After a reset the cabinet does not know what it holds until its RFID reader reports: a scan
    then would take "nothing" as the before-inventory and every item out would be free. It says
    out of service, records nothing and opens nothing, and serves once the reader has reported."""
    site.svc.bind("user-8", "acct-8")
    b = site.board("vend-2", "vending")
    hw = b.hw
    hw.scan("qr", "user-8")                 # the reader has not reported since the boot
    hw.wait_output("display", lambda v: "Out of service" in str(v), 10)
    time.sleep(0.5)
    assert hw.output("door_lock") != "unlocked" and site.ledger.count("vend-2") == 0
    hw.scan("rfid", "cola#1,water#1")
    time.sleep(0.3)
    hw.scan("qr", "user-8")
    hw.wait_output("door_lock", "unlocked", 10)
    hw.set_input("door", 1)
    time.sleep(0.3)
    hw.scan("rfid", "water#1")
    time.sleep(0.3)
    hw.set_input("door", 0)
    hw.wait_output("door_lock", "locked", 5)
    assert site.wait_records("vend-2", 2)[-1].amount == 350
