"""The parking gate app on the VM with simulated loops, cameras and barriers, against the real
broker, ingest, ledger, pay-after provider and session service."""
import time


def drive_through(hw, lane, plate):
    hw.set_input(f"{lane}_loop", 1)
    time.sleep(0.2)
    hw.scan(f"{lane}_camera", plate)


def test_pay_after_entry_and_exit(site):
    site.svc.bind("A12345", "acct-1")
    b = site.board("gate-1", "gate")
    hw = b.hw
    drive_through(hw, "entry", "A12345")
    hw.wait_output("entry_barrier", "open", 10)
    hw.set_input("entry_loop", 0)  # the car passed
    hw.wait_output("entry_barrier", "closed", 5)
    recs = site.wait_records("gate-1", 1)
    assert recs[0].type == 6 and recs[0].payer == "A12345"
    # the entry request carries the device's own t0: both sides time the stay from one instant
    [req] = [m for t, m, _ in site.w.all if t.endswith("/up/req") and m.get("purpose") == "entry"]
    assert req["t0"] == recs[0].t0 == site.svc.session("gate-1", recs[0].sid).t0
    drive_through(hw, "exit", "A12345")
    hw.wait_output("exit_barrier", "open", 10)
    hw.set_input("exit_loop", 0)
    hw.wait_output("exit_barrier", "closed", 5)
    recs = site.wait_records("gate-1", 2)
    close = recs[1]
    assert close.type == 8 and close.amount == 0 and close.currency == "CNY"  # within free minutes
    assert not site.svc.flags("gate-1")
