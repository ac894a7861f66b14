"""The money journal (firmware/journal.py) and the simulated NOR flash under it, on the real VM."""
import json
import os
import subprocess

import pytest

from host_tools.build import compile_firmware
from tests.vm import VM_SCRIPTS, micropython


@pytest.fixture(scope="module")
def bundle():
    return compile_firmware()  # firmware as .mpy, as boards run it


def run_bundle(bundle, script, *args, stdin=None, heap="64K", timeout=120):
    """Run tests/vm/<script> on the VM over the compiled bundle (as a board runs it)."""
    env = dict(os.environ, MICROPYPATH=f"{bundle}:{VM_SCRIPTS}:.frozen")
    p = subprocess.run([micropython(), "-X", f"heapsize={heap}", str(VM_SCRIPTS / script), *map(str, args)],
                       input=stdin, capture_output=True, text=True, timeout=timeout, env=env)
    assert p.returncode == 0, f"VM exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])


def case(bundle, name, d):
    return run_bundle(bundle, "journal_cases.py", name, d)


def test_compiles_with_mpy_cross(bundle):
    for m in ("journal.mpy", "hal/simflash.mpy", "hal/flash.mpy"):
        assert (bundle / m).exists()


def test_append_pending_ack_depth(bundle, tmp_path):
    r = case(bundle, "basic", tmp_path)
    assert r["empty"] == [0, [0] * 16, 0, 0, []]
    assert r["ret"] == [True] * 5
    assert r["pending"] == [[3, True], [4, True], [7, True], [9, True], [12, True]]
    assert r["limit2"] == [[3, True], [4, True]]
    assert r["depth"] == 5 and r["head"] == [12, True]
    assert r["dup_seq"] and r["old_seq"] and r["too_big"] and r["bad_hash"]
    assert r["ack7"] == 3
    assert r["after_ack"] == [[[9, True], [12, True]], 2, 7]
    assert r["ack_lower"] == [0, 7, 2]                  # an older ack is ignored
    assert r["ack_beyond"] == [2, 12, 0, 12, True]      # clamped to the last seq; head kept
    assert r["big"] == [True, [[20, True]]]


def test_full_drops_telemetry_first_then_refuses_money(bundle, tmp_path):
    r = case(bundle, "full", tmp_path)
    assert r["telemetry_kept"] == list(range(1, 8))     # telemetry stops at 3/4 of capacity
    assert r["telemetry_dropped_at_depth"] == 7
    assert r["money_kept"] == [9, 10, 11]               # money still has its reserve
    assert r["money_full"] is True and r["depth_full"] == 10
    assert r["telemetry_when_full"] is False and r["head_unchanged"] and r["pending_all"]
    assert r["after_ack_money_ok"] is True and r["depth_after"] == 4


def test_reboot_recovery_and_monotonic_seq(bundle, tmp_path):
    r1 = case(bundle, "reboot1", tmp_path)
    assert [s for s, _ in r1["pending"]] == list(range(22, 61, 2))
    r2 = case(bundle, "reboot2", tmp_path)              # a fresh VM on the same flash bytes
    assert r2["pending"] == r1["pending"]
    assert r2["state"] == [60, True, 20, 20]
    assert r2["seq_back"] is True and r2["next_ok"] is True
    assert r2["all_acked"] == [0, 61]
    r3 = case(bundle, "reboot3", tmp_path)              # nothing left but the marker
    assert r3["state"] == [61, True, 61, 0, []]
    assert r3["seq_back"] is True


def test_simflash_nor_semantics(bundle, tmp_path):
    r = case(bundle, "nor", tmp_path)
    assert r["erased"] == [0xFF] * 4
    assert r["anded"] == [0x00, 0xF0, 0xAA, 0x00]
    assert r["no_set"] == [0x00, 0xF0, 0xAA, 0x00]
    assert r["reerased"] == [0xFF] * 4 and r["other_block"] == [0xFF] * 4
    assert r["stats"] == {"ops": 4, "progs": 3, "prog_bytes": 12, "erases": 1, "conflicts": 6}
    assert r["geometry"] == [4, 256]
    assert r["basic_iface"] == [0x12] * 4               # writeblocks without offset erases first


def test_simflash_power_loss(bundle, tmp_path):
    r = case(bundle, "powerloss", tmp_path)
    assert r["before"] == 2 and r["cut"] is True
    assert r["refused"] == [True] * 5                   # dead: every operation refused
    assert r["torn_prog"] == [0x11, 0x22, 0xFF, 0xFF]   # torn: a prefix landed
    assert r["cut_erase"] is True
    assert r["torn_erase"] == [0xFF] * 4 and r["torn_erase_rest"] == [0x00] * 4
    assert r["clean_cut"] is True and r["clean_cut_nothing"] == [0xFF] * 4
    assert r["ctl_cut"] is True and r["ctl_refused"] is True
    assert r["ctl_after"] == [[[1, True]], 1]          # the cut append never committed


def test_corrupt_fs_is_not_formatted_over(bundle, tmp_path):
    r = case(bundle, "mount_garbage", tmp_path)
    assert r["raised"] and "not formatting" in r["raised"]
    assert r["untouched"] is True
