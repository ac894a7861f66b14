"""Every byte the device keeps is on the simulated flash, and power cuts strike its state writes.

store.py's files (command state, counters, boots, beacon time, settings, tariff, parked cars, ...)
live on littlefs over the simulated NOR flash, on the main-filesystem partition after the
journal's (firmware/hal/flash.py mount_fs), as a board keeps them on its root filesystem. So a
cut armed at op N (SimBoard.arm_power_cut) lands on a store write as readily as on a journal
append, and kills the whole board there (flash.dev.on_cut -> hal.reset.power_off).

The commands' sweeps: the board's power goes at op 1, 1 + STRIDE, ... of a boot that then takes
one signed command (the gate's staff `open`, `set_config`), until a boot and command run without
reaching the cut. After each cut the board reboots clean on the same flash and the command is
delivered again, byte for byte (a broker's redelivery after a reset). Then: it ran at most once
(one fresh `ok` at most; a redelivery is answered `dup` or `interrupted`, or `clock_untrusted`
when the broker's own redelivery beat the time beacon and nothing ran), the barrier moved for
it at most once and never after the redelivery unless that was its first run, it never moved
without its record, and the ledger holds the record at most once. The sessions' sweeps (a gate's
entry and exit, a vending and a rental session) are tests/test_apps_powercut.py, which now cut
state writes too. EDGEPAY_APP_CUTS=all: every op, clean and torn (tests/powercutkit.py).
"""
import os
import time

import pytest

from host_tools.protocol import ERROR_NAMES, seal
from host_tools.protocol import topic as topic_for
from tests.powercutkit import WIDE, check_ledger, quiesce, run_cuts

STRIDE = 5
pytestmark = [pytest.mark.timeout(7200)] if WIDE else []  # every op: far past the 300 s default
PROVISIONED = {"config.json", "board.json", "console.log"}  # what the host puts there and what it logs


def signed(site, dev, name, args):
    """A signed command (name, args) for dev: (topic, bytes, cti)."""
    d = site.reg.get(dev)
    t = topic_for(dev, "command")
    now = int(time.time())
    cti = os.urandom(12)
    msg: dict = {"type": "command", "aud": dev, "exp": now + 60, "iat": now, "cti": cti,
           "seq": site.reg.next_seq(dev), "name": name}
    if args:
        msg["args"] = args
    return t, seal(d.key, d.kid, t, msg), cti


def answers(site, cti, since=0):
    """The device's verified results for cti, as (code, data), from the watcher's index `since`."""
    return [(ERROR_NAMES.get(m["status"]), m.get("data")) for topic, m, _ in site.w.all[since:]
            if topic.endswith("/res") and m.get("cti") == cti]


def kind_of(code, data):
    if code == "ok" and data == {"dup": True}:
        return "dup"
    if code == "failed" and data == {"why": "interrupted"}:
        return "interrupted"
    return "ran" if code == "ok" else code


def deliver_twice(site, b, p, dev, name, args):
    """Deliver the command to the board the sweep booted (cut armed); after a death, or anyway,
    deliver it again. -> (kinds of all answers, kinds of the redelivery's, history indexes)."""
    t, data, cti = signed(site, dev, name, args)
    h0 = len(b.hw.history())
    assert site.c.mqtt.publish(t, data, qos=1, timeout=10)
    p.wait(lambda: answers(site, cti), what=f"{name} answered")  # False: it died; rebooted clean
    w1, h1 = len(site.w.all), len(b.hw.history())
    assert site.c.mqtt.publish(t, data, qos=1, timeout=10)  # the redelivery, the same bytes
    while not p.wait(lambda: answers(site, cti, w1), what=f"{name} answered again"):
        w1 = len(site.w.all)
        assert site.c.mqtt.publish(t, data, qos=1, timeout=10)  # it died under the redelivery
    kinds = [kind_of(c, d) for c, d in answers(site, cti)]
    again = [kind_of(c, d) for c, d in answers(site, cti, w1)]
    first = kinds[:len(kinds) - len(again)]
    assert kinds.count("ran") <= 1, kinds  # never run twice
    # or refused before it could run: the broker redelivers a command it had not seen acknowledged
    # as soon as the rebooted board connects, before the time beacon; refused clock_untrusted, that
    # outcome is the command's for good (the cloud signs a new one), and nothing ran
    assert all(k in ("ran", "dup", "interrupted", "clock_untrusted") for k in kinds), kinds
    if "clock_untrusted" in kinds:
        assert "ran" not in kinds and "dup" not in kinds, kinds
    if "ran" in first:
        assert all(k == "dup" for k in again), kinds  # it had run: answered again, not run again
    return kinds, again, h0, h1


def state_of(site, p, dev):
    """get_state's data; with a Person, a cut still armed that strikes under it reboots the board."""
    r = None
    for _ in range(5):
        if p is not None:
            p.wait(lambda: True)
        r = site.cmd(dev, "get_state", timeout=3)
        if r.ok:
            return r.data
    raise AssertionError(("get_state never answered", r and r.state))


def opens(hist, name):
    """Output events that opened `name` (from any other value)."""
    n, last = 0, None
    for m in hist:
        if m.get("t") == "out" and m.get("n") == name:
            n += m["v"] == "open" and last != "open"
            last = m["v"]
        elif m.get("t") == "hello":
            last = (m.get("out") or {}).get(name, last)
    return n


# ---- the state is on the flash ------------------------------------------------------------------
def test_device_state_lives_on_the_flash_and_cuts_strike_its_writes(site):
    dev = "gate-fs"
    b = site.board(dev, "gate")
    site.svc.bind("FS1", "acct-FS1")
    b.hw.set_input("entry_loop", 1)
    b.wait_for(r"FSM entry car -> plate", 10)
    b.hw.scan("entry_camera", "FS1")
    b.hw.wait_output("entry_barrier", "open", 10)
    b.hw.set_input("entry_loop", 0)
    b.hw.wait_output("entry_barrier", "closed", 10)
    quiesce(site, b, dev)
    b.kill()
    # nothing the device wrote is on the host: only the flash image (and the provisioned files)
    assert {f.name for f in b.dir.iterdir()} - PROVISIONED == {"flash.bin"}, sorted(os.listdir(b.dir))
    files = b.state_files()  # read back through the VM, from the image's littlefs
    for name in ("cmdstate", "boots", "seq", "tariff", "gate_n", "m_entry"):
        assert name in files, sorted(files)
    assert not [f for f in files if f.endswith(".tmp")]
    assert b.state("boots") == 1 and b.state("tariff")["2"] == "CNY"
    park = [f for f in files if f.startswith("pk/")]
    assert park == ["pk/" + b"FS1".hex()] and b.state(park[0])[1] == "FS1"  # the parked car
    assert b.state("no-such-file", "absent") == "absent"
    # a cut at the first op of a boot is its first state write ("boots"): the whole board dies there
    for boot in (2, 3):
        b.arm_power_cut(1, 3 if boot == 3 else None)  # then a torn one
        b.start(reset_cause="power_on")
        b.wait(20)
        assert b.exit_reason() == "killed", b.log()[-2000:]
        assert "Traceback" not in b.log()
        assert b.state("boots") == 1  # the old value, never a torn one
    site.boot(b)
    r = site.cmd(dev, "get_state")
    assert r.ok and r.data["boots"] >= 2, r.data
    assert r.data["cmd_seq"] > 0


# ---- commands ------------------------------------------------------------------------------------
def test_staff_open_cut_at_every_op_never_runs_twice(site):
    dev = "gate-cmd"
    b = site.board(dev, "gate")
    seen = {}

    def session(p, key):
        before = sum(1 for r in site.records(dev) if r.payer == "staff")
        kinds, again, h0, h1 = deliver_twice(site, b, p, dev, "open", {1: 1, 3: 1})
        while not p.wait(p.out("exit_barrier", "closed"), what="barrier closed after the hold"):
            pass
        seen[key] = (before, kinds, again, h0, h1)
        return key

    def check(key):
        before, kinds, again, h0, h1 = seen[key]
        hist = b.hw.history()
        staff = [r for r in check_ledger(site, dev) if r.payer == "staff"]
        mine = staff[before:]
        assert len(mine) <= 1, (key, kinds, mine)  # the open is on record once at most
        assert all(r.reason == "remote_open" and r.amount == 0 for r in mine), mine
        moved = opens(hist[h0:], "exit_barrier")
        if moved:
            assert len(mine) == 1, (key, kinds, "the barrier opened with no record")
        if "ran" in kinds or "dup" in kinds:
            assert len(mine) == 1 and moved >= 1, (key, kinds, moved, mine)
        if "clock_untrusted" in kinds:
            assert not mine and not moved, (key, kinds, moved, mine)
        if "ran" not in again:  # a redelivery answered dup/interrupted never moves the barrier
            assert opens(hist[h1:], "exit_barrier") == 0, (key, kinds, again)
        # a resume may hold a barrier open over a reset (never drop it on a car), never more
        assert moved <= 2, (key, kinds, moved)
        assert b.hw.output("exit_barrier") == "closed"

    ops = run_cuts(site, b, dev, session, check, STRIDE)
    print("staff open: boot + command flash ops:", ops, "answers:", sorted({tuple(v[1]) for v in seen.values()}))
    assert ops >= 5


def test_set_config_cut_at_every_op_never_runs_twice(site):
    dev = "gate-cfg"
    b = site.board(dev, "gate")
    cur = [state_of(site, None, dev)["settings"]["hb_s"]]
    seen = {}

    def session(p, key):
        old = cur[0]
        new = 5 + (old - 4) % 5  # 5..9, never the old value
        kinds, _, _, _ = deliver_twice(site, b, p, dev, "set_config", {"hb_s": new})
        seen[key] = (p, old, new, kinds)
        return key

    def check(key):
        p, old, new, kinds = seen[key]
        got = cur[0] = state_of(site, p, dev)["settings"]["hb_s"]
        if "ran" in kinds or "dup" in kinds:
            assert got == new, (key, kinds, got)  # it ran: the setting is on flash
        elif "clock_untrusted" in kinds:
            assert got == old, (key, kinds, got)  # refused: nothing changed
        else:
            assert got in (old, new), (key, kinds, got)  # interrupted: the old or the new, whole

    ops = run_cuts(site, b, dev, session, check, STRIDE)
    print("set_config: boot + command flash ops:", ops, "answers:", sorted({tuple(v[3]) for v in seen.values()}))
    assert ops >= 5


# ---- reading the state back on the host ----------------------------------------------------------
def test_host_reads_state_from_the_image_and_refuses_a_bad_one(tmp_path):
    import json
    import subprocess
    import sys


    from host_tools.sim.board import SimBoard
    from host_tools.sim.flashfs import FS_BLOCKS, FlashImageError, read_files

    d = tmp_path / "b"
    with pytest.raises(FlashImageError, match="config.json"):
        read_files(tmp_path)  # not a board directory
    b = SimBoard(d, {"board": {"name": "x", "kind": "gate", "flash": {"blocks": 8}}})
    assert read_files(d) == {} and b.state("boots", 0) == 0  # never booted: nothing kept yet
    (d / "flash.bin").write_bytes(b"\xff" * (8 + FS_BLOCKS) * 4096)
    assert read_files(d) == {}  # a blank chip: nothing kept yet either
    (d / "flash.bin").write_bytes(bytes((8 + FS_BLOCKS) * 4096))  # not blank, not littlefs
    with pytest.raises(FlashImageError, match="does not mount"):
        read_files(d)
    run = [sys.executable, "-m", "host_tools.sim.flashfs"]
    r = subprocess.run(run + [str(d)], capture_output=True, text=True)
    assert r.returncode == 1 and "does not mount" in r.stderr
    assert subprocess.run(run, capture_output=True, text=True).returncode == 2  # usage
    # a real image: a VM writes store files on the main filesystem as the firmware does
    (d / "flash.bin").unlink()
    script = ("import store\nfrom hal import flash\n"
              f"store.ROOT = flash.mount_fs({{'flash': {{'dir': {str(d)!r}, 'blocks': 8}}}})\n"
              "store.write('boots', 7)\nstore.write('settings', {'hb_s': 9})\n")
    from host_tools.sim.board import FIRMWARE, micropython
    subprocess.run([micropython(), "-c", script], check=True, env={"MICROPYPATH": str(FIRMWARE)}, timeout=30)
    assert read_files(d) == {"boots": b"7", "settings": b'{"hb_s": 9}'}
    assert b.state("settings") == {"hb_s": 9}
    r = subprocess.run(run + [str(d), "settings"], capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout) == {"hb_s": 9}
    r = subprocess.run(run + [str(d), "nothing"], capture_output=True, text=True)
    assert r.returncode == 1 and "no 'nothing'" in r.stderr
