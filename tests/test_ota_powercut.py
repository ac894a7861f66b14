"""A power cut at every flash operation of a firmware update (issue 12 §4): download (each chunk
programmed, its progress persisted), staging (the read-back proves the digest), the switch (the
"inst" state, set_boot's erase and record) and the trial's confirmation (mark_valid, the "fw"
file) — each clean and torn. After each cut the board is reset as a board is: the simulated boot
loader runs, then the firmware's updater boots again and goes on. Whatever the cut, the board
boots factory or a slot whose digest checks, never bricks, keeps its other files, and fetches at
most one chunk again; a cut in the download, staging or switch still ends confirmed on ota_0, one
in the trial before its confirmation lands rolls back to factory, which reports it.

The updater, slots and store are the firmware's own on the VM (tests/vm/ota_sweep.py); only the
network is stood in (chunks answered from the payload, the cloud's time taken as answered).
`make test` cuts at every op, clean and torn three ways (>= 200 cuts); EDGEPAY_OTA_CUTS=N adds about N
more (each op again at N // ops other tear lengths) for the long run."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from host_tools.release import pack
from host_tools.sim import bootloader
from tests.vm import run_vm

FC = {"blocks": 16, "block_size": 4096}
CHUNK = 256


def payload() -> bytes:
    rnd = hashlib.sha256(b"ota-sweep").digest() * 200
    return pack({"main.py": b"print('v2')\n", "agent.mpy": rnd[:3000], "apps/gate.mpy": rnd[3000:5600]})


def start_state(data: bytes) -> dict:
    return {"st": "dl", "v": "0.2.0", "seq": 2, "size": len(data), "sha": hashlib.sha256(data).hexdigest(),
            "chunk": CHUNK, "fmt": "bundle", "w": None, "slot": "ota_0", "n": 0, "t": 0}


def fc(d) -> dict:
    return dict(FC, dir=str(d))


_TEMPLATES: dict = {}


def prepare(d, data_file, st):
    """A board that has accepted an `ota` command (the state it leaves) and holds other state:
    made once on the VM, then copied (its flash image) for each cut."""
    key = (str(data_file), json.dumps(st, sort_keys=True))
    t = _TEMPLATES.get(key)
    if t is None or not t.exists():
        t = Path(str(data_file) + ".board")
        shutil.rmtree(t, ignore_errors=True)
        t.mkdir()
        p = run_vm("ota_sweep.py", stdin=json.dumps({"dir": str(t), "payload": str(data_file), "st": st,
                                                      "setup": True}), heapsize="256K")
        assert p.returncode == 0
        _TEMPLATES[key] = t
    shutil.copytree(t, d)


def one_boot(d, data_file, st, cut: tuple[int, int | None] | None = None):
    """Reset (the boot loader), then one boot of the firmware; -> (result dict, or None if the
    power went; its events; the chunks it asked for)."""
    pre = bootloader.decide(d, fc(d))
    if pre.record is not None:  # what boots is signed: a slot whose digest checks, or factory
        assert bootloader.payload(d, fc(d), pre.record) is not None
    assert bootloader.boot(d, fc(d)).slot == pre.boot
    if cut is not None:
        n, tear = cut
        (d / "flash.cut").write_text(f"{n} {tear}" if tear is not None else str(n))
    p = run_vm("ota_sweep.py", stdin=json.dumps({"dir": str(d), "payload": str(data_file), "st": st}),
               heapsize="256K", check=False)
    out = p.stdout.splitlines()
    evs = [json.loads(ln[3:]) for ln in out if ln.startswith("EV ")]
    reqs = [int(ln[4:]) for ln in out if ln.startswith("REQ ")]
    if p.returncode != 0:
        assert cut is not None, p.stdout[-3000:] + p.stderr[-3000:]
        return None, evs, reqs
    return json.loads([ln for ln in out if ln.startswith("{")][-1]), evs, reqs


def to_the_end(d, data_file, st, cut=None, at_boot=1):
    """Boots until the update is final, the cut armed for boot `at_boot`; -> (last result, every
    event, every chunk asked)."""
    evs_all: list = []
    reqs_all: list = []
    for boots in range(1, 9):
        r, evs, reqs = one_boot(d, data_file, st, cut if boots == at_boot else None)
        evs_all += evs
        reqs_all += reqs
        if r is not None and r["how"] is None and boots > at_boot:
            return r, evs_all, reqs_all
    raise AssertionError(f"no end after 8 boots: {evs_all}")


def setup(tmp_path):
    data = payload()
    f = tmp_path / "payload.bin"
    f.write_bytes(data)
    return data, f


def test_an_uncut_update_is_confirmed_on_ota_0(tmp_path):
    data, f = setup(tmp_path)
    d = tmp_path / "clean"
    prepare(d, f, start_state(data))
    r, evs, reqs = to_the_end(d, f, start_state(data))
    assert r["running"] == "ota_0" and r["fw"] == {"seq": 2, "v": "0.2.0"} and r["keep"] == [1, 2, 3]
    states = [e["st"] for e in evs]
    assert states[0] == "signature_verified" and states[-1] == "confirmed" and "installed" in states
    assert reqs == list(range(-(-len(data) // CHUNK)))
    assert bootloader.decide(d, fc(d)).boot == "ota_0"


def ops_at(tmp_path, f, st, at_boot) -> int:
    """The flash program/erase ops of boot `at_boot` (1: download, staging, switch; 2: the trial),
    counted by cutting ever later until that boot runs through uncut."""
    lo, hi = 1, 2048
    while lo < hi:
        mid = (lo + hi) // 2
        d = tmp_path / f"count-{at_boot}-{mid}"
        prepare(d, f, st)
        for _ in range(at_boot - 1):
            one_boot(d, f, st)
        r, _, _ = one_boot(d, f, st, (mid, None))
        shutil.rmtree(d)
        if r is None:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


def test_a_power_cut_at_every_flash_op_never_bricks_and_the_update_ends_confirmed(tmp_path):
    data, f = setup(tmp_path)
    st = start_state(data)
    ops = {1: ops_at(tmp_path, f, st, 1), 2: ops_at(tmp_path, f, st, 2)}
    assert ops[1] > 2 * (-(-len(data) // CHUNK)) and ops[2] >= 2, ops  # each chunk: programmed, persisted
    extra = int(os.environ.get("EDGEPAY_OTA_CUTS", "0"))
    per_op = 4 + max(0, extra // (ops[1] + ops[2]))
    tears = [None, 1, 7, 100] + [13 + 37 * k for k in range(per_op - 4)]  # clean, then torn 1..n bytes in
    cuts = [(b, n, t) for t in tears for b in (1, 2) for n in range(1, ops[b] + 1)]
    twice = 0
    outcome: dict[int, set] = {1: set(), 2: set()}
    for b, n, tear in cuts:
        d = tmp_path / f"cut-{b}-{n}-{tear}"
        prepare(d, f, st)
        r, evs, reqs = to_the_end(d, f, st, (n, tear), b)
        states = [e["st"] for e in evs]
        where = (b, n, tear, states)
        assert r["keep"] == [1, 2, 3], where
        if r["running"] == "ota_0":  # kept, and said so (at least once: a cut after the event but
            # before the state is dropped confirms again, as QoS 1 may deliver twice anyway)
            assert r["fw"] == {"seq": 2, "v": "0.2.0"} and states[-1] == "confirmed", where
            assert "rolled_back" not in states and "failed" not in states, where
        else:  # a reset in the trial before its confirmation landed: the previous firmware, which says so
            assert b == 2 and r["running"] == "factory" and r["fw"] is None, where
            assert states[-1] == "rolled_back" and evs[-1]["why"] == "reset" and "confirmed" not in states, where
        outcome[b].add(r["running"])
        again = len(reqs) - len(set(reqs))
        assert again <= 1, (where, reqs)  # a resume fetches at most the chunk in flight again
        twice = max(twice, again)
        shutil.rmtree(d)
    assert len(cuts) >= 200 + extra * 9 // 10, len(cuts)
    # a cut in the download or the switch never loses the update; one in the trial either rolls
    # back (before mark_valid lands) or keeps it (after)
    assert outcome == {1: {"ota_0"}, 2: {"ota_0", "factory"}}, outcome
    print(json.dumps({"ota_cuts": len(cuts), "ops": ops, "max_chunks_fetched_again": twice}))
