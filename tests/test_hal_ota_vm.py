"""firmware/hal/ota.py on the VM (tests/vm/ota_ops.py) against the host's boot loader
(host_tools/sim/bootloader.py) over one board's flash.bin: the records the device writes are the
ones the boot loader reads, running() is what the boot loader booted, two updates alternate the
slots and an aborted trial of the second falls back to the first, a power cut anywhere in an
update (set_boot's erase and record write included, torn or not) boots what ran before, and a
slot whose digest does not match is not booted."""
import hashlib
import json
import shutil

import pytest

from host_tools.release import pack
from host_tools.sim import bootloader as bl
from tests.vm import run_vm, run_vm_json

FC = {"blocks": 16, "block_size": 4096}
TRIAL, VALID, ABORTED = bl.TRIAL, bl.VALID, bl.ABORTED


def archive(tag: str) -> bytes:
    # ~10 KB over three blocks, so chunked writes span block boundaries
    return pack({"main.py": f"print({tag!r})\n".encode(), "hal/x.py": tag.encode() * 5000, "z.py": b"z = 1\n"})


def vm(d, *ops, check=True, **kw):
    """Run ops on the VM over d's flash; {"results", "cut", "stats"}."""
    req = {"dir": str(d), "flash": FC, "ops": list(ops), **kw}
    if not check:
        return run_vm("ota_ops.py", stdin=json.dumps(req), heapsize="1M", check=False)
    return run_vm_json("ota_ops.py", req, heapsize="1M")


def state(d):
    return vm(d, {"op": "state"})["results"][0]


def update(d, data, chunk=1000):
    return {"op": "update", "data": data.hex(), "chunk": chunk}


def states(d):
    return [r.state if r else None for r in bl.read_records(d, FC)]


def booted(d):
    """Boot through the boot loader; the device must then report the same running slot."""
    b = bl.boot(d, FC)
    s = state(d)
    assert s["running"] == b.slot, (s, b)
    return b


def test_running_is_what_the_boot_loader_booted_through_two_updates(tmp_path):
    d = tmp_path / "b"
    d.mkdir()
    s = state(d)
    assert s == {"running": "factory", "trial": False, "next": "ota_0", "size": 24 * 4096, "bs": 4096}
    a = archive("a")
    r = vm(d, {"op": "state"}, update(d, a), {"op": "state"})
    assert r["results"][1] == {"slot": "ota_0", "ok": True}
    assert r["results"][2]["running"] == "factory"  # set, not booted yet
    # the device's record is the boot loader's, byte for byte
    raw = (d / "flash.bin").read_bytes()[bl.layout(d, FC).record_offset(0):][:bl.RECORD]
    assert raw == bl.encode_record(1, 0, len(a), hashlib.sha256(a).digest())
    assert bl.read_records(d, FC) == [bl.Record(0, 1, 0, len(a), hashlib.sha256(a).digest(), 0xFF), None]

    b = booted(d)
    assert b.slot == "ota_0" and (b.dir / "hal" / "x.py").read_bytes() == b"a" * 5000
    assert state(d) == {"running": "ota_0", "trial": True, "next": "ota_1", "size": 24 * 4096, "bs": 4096}
    r = vm(d, {"op": "valid"}, {"op": "state"}, {"op": "valid"})
    assert r["results"][1]["trial"] is False and r["stats"]["ops"] == 1  # the second mark_valid: no-op
    assert states(d) == [VALID, None]
    assert booted(d).slot == "ota_0" and states(d) == [VALID, None]

    # the second update goes to ota_1, in the block not holding the running slot's record
    c = archive("c")
    assert vm(d, update(d, c))["results"][0] == {"slot": "ota_1", "ok": True}
    r0, r1 = bl.read_records(d, FC)
    assert r0 is not None and r0.status == "valid" and r1 is not None and (r1.seq, r1.slot) == (2, 1)
    assert booted(d).slot == "ota_1" and state(d)["trial"] is True
    # it resets before confirming: aborted, back to the first update's slot, not factory
    assert booted(d).slot == "ota_0" and states(d) == [VALID, ABORTED]
    assert state(d) == {"running": "ota_0", "trial": False, "next": "ota_1", "size": 24 * 4096, "bs": 4096}

    # again into ota_1 (the aborted record's block is the one erased), confirmed; then ota_0 again
    e = archive("e")
    assert vm(d, update(d, e, chunk=4096))["results"][0]["slot"] == "ota_1"
    assert [(r.seq, r.slot) for r in bl.read_records(d, FC) if r] == [(1, 0), (3, 1)]
    assert booted(d).slot == "ota_1"
    vm(d, {"op": "valid"})
    assert states(d) == [VALID, VALID] and state(d)["next"] == "ota_0"
    g = archive("g")
    assert vm(d, update(d, g, chunk=777))["results"][0]["slot"] == "ota_0"
    assert [(r.seq, r.slot, r.status) for r in bl.read_records(d, FC) if r] == [(4, 0, "new"), (3, 1, "valid")]
    b = booted(d)
    assert b.slot == "ota_0" and (b.dir / "main.py").read_bytes() == b"print('g')\n"


def stage(d, confirmed):
    """A board with `confirmed` updates booted and confirmed (0: factory; 2: ota_1 running)."""
    d.mkdir()
    vm(d, {"op": "state"})  # the chip, erased
    for i in range(confirmed):
        vm(d, update(d, archive(f"s{i}")))
        bl.boot(d, FC)
        vm(d, {"op": "valid"})
    return bl.decide(d, FC).boot


@pytest.mark.parametrize("confirmed", [0, 2])
def test_a_power_cut_anywhere_in_an_update_boots_what_ran_before(tmp_path, confirmed):
    base = tmp_path / "base"
    before = stage(base, confirmed)
    assert before == ("factory", "ota_1")[confirmed // 2]
    new = archive("new")
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    n = vm(probe, update(probe, new))["stats"]["ops"]  # the last two: set_boot's erase and record write
    k = 0
    for at in (1, n // 2, n - 2, n - 1, n):
        for tear in (None, 1, 30, 47, 48):
            d = tmp_path / f"cut{k}"
            k += 1
            shutil.copytree(base, d)
            (d / "flash.cut").write_text(f"{at} {tear}" if tear is not None else str(at))
            r = vm(d, update(d, new))
            assert r["cut"] == 0, (at, tear, r)
            # 48 bytes of the record write: all before the state byte landed, the record is whole
            whole = at == n and tear == 48
            assert booted(d).slot == ("ota_0" if whole else before), (at, tear, states(d))
    assert k == 25


def test_a_power_cut_in_mark_valid_leaves_the_trial_to_be_aborted(tmp_path):
    d = tmp_path / "b"
    stage(d, 1)  # ota_0 valid
    vm(d, update(d, archive("b")))
    assert booted(d).slot == "ota_1"
    (d / "flash.cut").write_text("1")
    assert vm(d, {"op": "valid"})["cut"] == 0
    assert states(d) == [VALID, TRIAL]
    assert booted(d).slot == "ota_0" and states(d) == [VALID, ABORTED]


def test_a_slot_whose_digest_does_not_match_is_not_booted(tmp_path):
    d = tmp_path / "b"
    stage(d, 1)
    vm(d, update(d, archive("b")))
    lay = bl.layout(d, FC)
    with open(lay.image, "r+b") as f:  # a bit of ota_1 flipped after the download
        f.seek(lay.slot_offset(1) + 5000)
        x = f.read(1)
        f.seek(lay.slot_offset(1) + 5000)
        f.write(bytes([x[0] ^ 4]))
    assert booted(d).slot == "ota_0" and states(d) == [VALID, ABORTED]
    assert state(d)["next"] == "ota_1"


def test_update_writes_share_the_main_filesystems_power_cut(tmp_path):
    d = tmp_path / "b"
    d.mkdir()
    p = vm(d, update(d, archive("a")), check=False, mount=True)
    lines = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    mounted, done = lines[0]["mounted"]["ops"], lines[-1]["stats"]["ops"]
    assert done > mounted  # one op count for the fs and the slots
    shutil.rmtree(d)
    d.mkdir()
    (d / "flash.cut").write_text(str(mounted + 3))  # inside the slot's writes
    p = vm(d, update(d, archive("a")), check=False, mount=True)
    assert p.returncode != 0 and '"results"' not in p.stdout  # the board died (hal/reset.power_off)
    assert bl.read_records(d, FC) == [None, None] and bl.boot(d, FC).slot == "factory"
