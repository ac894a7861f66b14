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
    # the exit request carries the instant its amount was priced, which the close repeats: the
    # cloud prices that instant, not the request's arrival (which may fall a fee step later)
    [req] = [m for t, m, _ in site.w.all if t.endswith("/up/req") and m.get("purpose") == "exit"]
    assert (req["t1"], req["amount"]) == (close.t1, close.amount)
    assert not site.svc.flags("gate-1")


_FILL = r"""
import os, vfs
vfs.mount(vfs.VfsLfs2(Dev(), readsize=128, progsize=16, lookahead=32, mtime=False), "/fs")
while os.statvfs("/fs")[3] > %d:
    with open("/fs/zfill", "ab") as f:
        f.write(bytes(2048))
print("free", os.statvfs("/fs")[3])
"""


def _fill_state_fs(board_dir, leave_blocks):
    """Fill a stopped sim board's state filesystem until `leave_blocks` are free (the VM's littlefs
    writes the filler, as it wrote the board's own files)."""
    import subprocess
    from host_tools.build import micropython
    from host_tools.sim.flashfs import FS_BLOCKS, vm_blockdev
    from host_tools.boardcheck import device_board
    fc = device_board(board_dir).get("flash") or {}
    script = vm_blockdev(board_dir / "flash.bin", fc.get("blocks", 128), FS_BLOCKS, fc.get("block_size", 4096),
                         writable=True) + _FILL % leave_blocks
    r = subprocess.run([micropython(), "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[-1])


FREE_MIN = 8  # firmware/apps/gate.py FREE_MIN


def test_a_full_car_park_refuses_the_next_entry_and_nothing_else(site):
    """The state fs (one small file per car inside) nearly full: an entry that would take the
    blocks command state and counters need is refused before any record ("Car park full", alarm
    park_full); every car let in has its record and its parked file; a car still leaves, paid."""
    b = site.board("gate-1", "gate")
    hw = b.hw
    b.stop()
    assert _fill_state_fs(b.dir, FREE_MIN + 1) <= FREE_MIN + 1
    booted = len(b.lines)
    site.boot(b)
    inside, refused = [], None
    for i in range(60):
        plate = f"F{i:04d}"
        site.svc.bind(plate, "acct-" + plate)
        mark = len(hw.history("display"))
        drive_through(hw, "entry", plate)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            shown = [m.get("v") for m in hw.history("display")[mark:] if m.get("t") == "out"]
            if "Car park full" in shown or hw.output("entry_barrier") == "open":
                break
            time.sleep(0.02)
        if "Car park full" in shown:
            refused = plate
            assert hw.output("entry_barrier") == "closed"
            hw.set_input("entry_loop", 0)
            break
        hw.wait_output("entry_barrier", "open", 5)
        hw.set_input("entry_loop", 0)
        hw.wait_output("entry_barrier", "closed", 5)
        inside.append(plate)
    assert refused and inside, "the state fs never filled"
    site.w.expect(lambda t, m, r: t.endswith("/up/evt") and m.get("code") == "park_full", 10, "park_full alarm")
    recs = site.wait_records("gate-1", len(inside))
    assert [r.payer for r in recs if r.type == 6] == inside   # no record for the refused car
    # a car inside still leaves, charged from its parked entry (not the lost-ticket price)
    drive_through(hw, "exit", inside[0])
    hw.wait_output("exit_barrier", "open", 10)
    hw.set_input("exit_loop", 0)
    hw.wait_output("exit_barrier", "closed", 5)
    recs = site.wait_records("gate-1", len(inside) + 1)
    close = [r for r in recs if r.type == 8]
    assert len(close) == 1 and close[0].sid == recs[0].sid
    after = "\n".join(b.lines[booted:])
    assert "Traceback" not in after, after[-3000:]
