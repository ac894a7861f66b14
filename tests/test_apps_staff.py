"""Staff commands on the VM (SPEC §4): `open` (a signed remote open of a barrier, door or slot,
journaled as a zero-amount record before anything moves) and `cancel_session` (a session in
progress closed at no charge, journaled), against the real broker, ingest, ledger and cloud."""
import time

from tests.appkit import PARKING

NO_FREE_MINUTES = {k: v for k, v in PARKING.items() if k != 3}  # a fee from the first second


def staff_records(site, device, reason):
    return [r for r in site.records(device) if r.type == 8 and r.reason == reason]


def test_gate_staff_open_is_journaled_and_never_closes_on_a_car(site):
    b = site.board("gate-s1", "gate")
    hw = b.hw
    r = site.cmd("gate-s1", "open", {1: 1, 3: 1})  # the exit barrier, 1 s for nobody
    assert r.ok, (r.code, r.data)
    hw.wait_output("exit_barrier", "open", 5)
    rec = site.wait_records("gate-s1", 1)[0]
    assert (rec.type, rec.amount, rec.reason, rec.payer, rec.sid) == (8, 0, "remote_open", "staff", r.data["sid"])
    hw.set_input("exit_loop", 1)  # a car drives in under the open barrier
    time.sleep(2.0)
    assert hw.output("exit_barrier") == "open"  # the hold ran out with a car on the loop
    hw.set_input("exit_loop", 0)
    hw.wait_output("exit_barrier", "closed", 5)
    # nobody drives through: it closes on its own after the hold
    assert site.cmd("gate-s1", "open", {1: 0, 3: 1}).ok
    hw.wait_output("entry_barrier", "open", 5)
    hw.wait_output("entry_barrier", "closed", 5)
    assert len(staff_records(site, "gate-s1", "remote_open")) == 2


def test_gate_open_refuses_what_it_cannot_do(site):
    b = site.board("gate-s2", "gate")
    assert site.cmd("gate-s2", "open", {1: 7}).code == "bad_args"      # no such barrier
    assert site.cmd("gate-s2", "open", {1: "exit"}).code == "bad_args"
    b.hw.set_input("entry_loop", 1)  # a customer's car is being served: staff cancel first
    b.wait_for(r"FSM entry car -> plate", 5)
    assert site.cmd("gate-s2", "open", {1: 0}).code == "busy"
    assert b.hw.output("entry_barrier") in (None, "closed")
    assert site.cmd("gate-s2", "cancel_session", {1: "no-such"}).code == "refused"
    assert site.ledger.count("gate-s2") == 0


def test_gate_cancel_closes_a_parked_car_at_no_charge_and_a_qr_wait(site):
    site.svc.bind("C1", "acct-c1")
    b = site.board("gate-s3", "gate", tariff=NO_FREE_MINUTES)
    hw = b.hw

    def enter(plate):
        hw.set_input("entry_loop", 1)
        hw.scan("entry_camera", plate)
        hw.wait_output("entry_barrier", "open", 10)
        hw.set_input("entry_loop", 0)
        hw.wait_output("entry_barrier", "closed", 5)
    enter("C1")
    sid = site.wait_records("gate-s3", 1)[0].sid
    r = site.cmd("gate-s3", "cancel_session", {1: sid})
    assert r.ok and r.data == {"sid": sid}, (r.code, r.data)
    close = site.wait_records("gate-s3", 2)[-1]
    assert (close.type, close.sid, close.amount, close.reason) == (8, sid, 0, "cancelled")
    assert site.cmd("gate-s3", "cancel_session", {1: sid}).code == "refused"  # closed already
    enter("C1")  # no longer "already inside": a new session
    assert site.wait_records("gate-s3", 3)[-1].type == 6
    # an unknown plate waits at the entry QR code: cancelled, nothing was on record, nothing opens
    hw.set_input("entry_loop", 1)
    hw.scan("entry_camera", "NOBODY")
    m = b.wait_for(r"Scan QR to pay: (\S+)'", 10)
    assert site.cmd("gate-s3", "cancel_session", {1: m.group(1)}).ok
    b.wait_for(r"ACT display 'Cancelled: no charge'", 5)
    time.sleep(0.5)
    assert hw.output("entry_barrier") == "closed" and site.ledger.count("gate-s3") == 3


def test_vending_cancel_relocks_at_no_charge_and_staff_open_raises_no_alarm(site):
    site.svc.bind("u1", "acct-u1")
    b = site.board("vend-s1", "vending")
    hw = b.hw
    hw.scan("rfid", "cola#1,chips#1")
    time.sleep(0.3)
    hw.scan("qr", "u1")
    hw.wait_output("door_lock", "unlocked", 10)
    sid = site.wait_records("vend-s1", 1)[0].sid
    assert site.cmd("vend-s1", "cancel_session", {1: sid}).ok
    hw.wait_output("door_lock", "locked", 5)
    close = site.wait_records("vend-s1", 2)[-1]
    assert (close.type, close.sid, close.amount, close.reason) == (8, sid, 0, "cancelled")
    # staff restock: the door opens on a signed open, no door_forced alarm, relocks once closed
    assert site.cmd("vend-s1", "open", {1: 0, 3: 1}).ok
    hw.wait_output("door_lock", "unlocked", 5)
    hw.set_input("door", 1)
    hw.scan("rfid", "cola#1,chips#1,water#9")
    time.sleep(1.5)
    assert hw.output("door_lock") == "unlocked"  # the door is still open
    hw.set_input("door", 0)
    hw.wait_output("door_lock", "locked", 5)
    b.wait_for(r"FSM door door_closed -> idle", 5)
    assert "door_forced" not in b.log()
    assert len(staff_records(site, "vend-s1", "remote_open")) == 1


def test_rental_cancel_of_a_rental_out_and_staff_slot_open(site):
    site.svc.bind("r1", "acct-r1")
    b = site.board("rent-s1", "rental")
    hw = b.hw
    for i in range(8):
        hw.set_input(f"slots.{i}", 1)
    time.sleep(0.3)
    hw.scan("qr", "r1")
    hw.wait_output("locks.0", "unlocked", 10)
    hw.set_input("slots.0", 0)  # taken: the rental is out
    hw.wait_output("locks.0", "locked", 5)
    sid = site.wait_records("rent-s1", 1)[0].sid
    assert site.cmd("rent-s1", "cancel_session", {1: sid}).ok
    close = site.wait_records("rent-s1", 2)[-1]
    assert (close.type, close.sid, close.amount, close.reason) == (8, sid, 0, "cancelled")
    assert site.cmd("rent-s1", "open", {1: 8}).code == "bad_args"  # slots are 0..7
    r = site.cmd("rent-s1", "open", {1: 0, 3: 1})  # staff put an item back into the empty slot
    assert r.ok, (r.code, r.data)
    hw.wait_output("locks.0", "unlocked", 5)
    hw.set_input("slots.0", 1)
    hw.wait_output("locks.0", "locked", 5)
    b.wait_for(r"FSM slot0 timeout -> stocked", 5)
    assert "slot_forced" not in b.log()
