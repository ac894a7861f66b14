"""The simulated board's boot loader (host_tools/sim/bootloader.py, SPEC §10 "Slots") over a staged
flash.bin: every transition of the boot rule, torn records, slots whose contents do not check, the
strict archive walk, and SimBoard booting the slot it picks (on the VM, with a tiny firmware whose
main reports what hal/ota says it runs)."""
import hashlib
import json
import shutil
import struct
from pathlib import Path

import pytest

from host_tools.release import pack
from host_tools.sim import bootloader as bl
from host_tools.sim.board import FIRMWARE, SimBoard

FC = {"blocks": 16, "block_size": 4096}
NEW, TRIAL, VALID, ABORTED = 0xFF, bl.TRIAL, bl.VALID, bl.ABORTED


def archive(tag: str) -> bytes:
    return pack({"main.py": f"print({tag!r})\n".encode(), "hal/x.py": tag.encode() * 2000})


class Flash:
    """A board directory whose flash.bin holds otadata and slots staged byte by byte."""

    def __init__(self, d: Path, fc: dict = FC):
        self.d, self.fc = d, fc
        self.lay = bl.layout(d, fc)
        d.mkdir(parents=True, exist_ok=True)
        self.lay.image.write_bytes(b"\xff" * (self.lay.slot_offset(2)))

    def put(self, offset: int, data: bytes) -> None:
        with open(self.lay.image, "r+b") as f:
            f.seek(offset)
            f.write(data)

    def slot(self, i: int, data: bytes) -> bytes:
        self.put(self.lay.slot_offset(i), data)
        return data

    def record(self, block: int, seq: int, slot: int, data: bytes, state: int = NEW) -> None:
        self.put(self.lay.record_offset(block), b"\xff" * self.lay.bs)
        self.put(self.lay.record_offset(block), bl.encode_record(seq, slot, len(data), hashlib.sha256(data).digest(),
                                                                 state))

    def states(self) -> list[int | None]:
        return [r.state if r else None for r in bl.read_records(self.d, self.fc)]

    def image(self) -> bytes:
        return self.lay.image.read_bytes()


@pytest.fixture
def fl(tmp_path):
    return Flash(tmp_path / "board")


def test_a_blank_chip_or_no_image_boots_factory_and_writes_nothing(tmp_path, fl):
    bare = tmp_path / "bare"
    bare.mkdir()
    assert bl.boot(bare, FC) == bl.Boot("factory", None)
    assert list(bare.iterdir()) == []  # no image made, nothing extracted
    before = fl.image()
    assert bl.decide(fl.d, FC) == ("factory", None, ())
    assert bl.boot(fl.d, FC).slot == "factory"
    assert fl.image() == before and not (fl.d / ".slot").exists()
    assert bl.read_records(fl.d, FC) == [None, None]


def test_new_boots_as_a_trial_and_a_trial_that_resets_is_aborted(fl):
    a = fl.slot(0, archive("a"))
    fl.record(0, 1, 0, a)
    d = bl.decide(fl.d, FC)
    assert d.boot == "ota_0" and d.marks == ((0, TRIAL),)
    assert fl.states() == [NEW, None]  # decide wrote nothing
    b = bl.boot(fl.d, FC)
    assert b.slot == "ota_0" and b.dir == fl.d / ".slot" / "ota_0"
    assert (b.dir / "main.py").read_bytes() == b"print('a')\n" and (b.dir / "hal" / "x.py").read_bytes() == b"a" * 2000
    assert fl.states() == [TRIAL, None]
    # reset before confirmation: aborted, and with no valid record to fall back to, factory
    assert bl.boot(fl.d, FC).slot == "factory"
    assert fl.states() == [ABORTED, None]
    assert bl.boot(fl.d, FC).slot == "factory"  # aborted stays aborted
    assert fl.states() == [ABORTED, None]


def test_valid_boots_and_is_extracted_once_per_digest(fl):
    a = fl.slot(1, archive("a"))
    fl.record(1, 7, 1, a, VALID)
    b = bl.boot(fl.d, FC)
    assert b.slot == "ota_1" and fl.states() == [None, VALID]
    (b.dir / "extra").write_text("kept while the digest is the same")
    assert bl.boot(fl.d, FC).dir == b.dir and (b.dir / "extra").exists()
    # a new payload in the same slot (a later update, confirmed): extracted afresh
    c = fl.slot(1, archive("c"))
    fl.record(1, 9, 1, c, VALID)
    assert bl.boot(fl.d, FC).dir == b.dir
    assert not (b.dir / "extra").exists() and (b.dir / "main.py").read_bytes() == b"print('c')\n"


def test_aborted_and_trial_fall_back_to_the_other_valid_slot_not_factory(fl):
    a, b = fl.slot(0, archive("a")), fl.slot(1, archive("b"))
    fl.record(0, 1, 0, a, VALID)
    fl.record(1, 2, 1, b, NEW)
    assert bl.boot(fl.d, FC).slot == "ota_1" and fl.states() == [VALID, TRIAL]
    assert bl.boot(fl.d, FC).slot == "ota_0" and fl.states() == [VALID, ABORTED]
    assert bl.decide(fl.d, FC) == ("ota_0", bl.read_records(fl.d, FC)[0], ())
    assert bl.boot(fl.d, FC).slot == "ota_0" and fl.states() == [VALID, ABORTED]


def test_the_fallback_is_factory_when_the_other_record_is_not_valid(fl):
    a, b = fl.slot(0, archive("a")), fl.slot(1, archive("b"))
    for other in (NEW, TRIAL, ABORTED):
        fl.record(0, 1, 0, a, other)
        fl.record(1, 2, 1, b, ABORTED)
        assert bl.decide(fl.d, FC) == ("factory", None, ())


def test_the_newest_seq_wins_whichever_block_holds_it(fl):
    a, b = fl.slot(0, archive("a")), fl.slot(1, archive("b"))
    fl.record(0, 5, 1, b, VALID)
    fl.record(1, 4, 0, a, VALID)
    assert bl.decide(fl.d, FC).boot == "ota_1"
    fl.record(1, 6, 0, a, VALID)
    assert bl.decide(fl.d, FC).boot == "ota_0"


@pytest.mark.parametrize("keep", [1, 20, 44, 47, 48])
def test_a_torn_record_does_not_check_and_the_previous_one_boots(fl, keep):
    a, b = fl.slot(0, archive("a")), fl.slot(1, archive("b"))
    fl.record(0, 1, 0, a, VALID)
    full = bl.encode_record(2, 1, len(b), hashlib.sha256(b).digest())
    fl.put(fl.lay.record_offset(1), b"\xff" * 64)
    fl.put(fl.lay.record_offset(1), full[:keep])  # the cut landed `keep` bytes of it
    # all 48 bytes before the state byte landed: the record is whole (its state 0xFF is new)
    assert bl.decide(fl.d, FC).boot == ("ota_1" if keep == 48 else "ota_0")


@pytest.mark.parametrize("bad", ["pad", "slot", "check", "seq"])
def test_a_corrupt_record_does_not_check(fl, bad):
    a = fl.slot(0, archive("a"))
    rec = bytearray(bl.encode_record(1, 0, len(a), hashlib.sha256(a).digest()))
    if bad == "pad":
        rec[6] = 1
    elif bad == "slot":
        rec[4] = 2
        rec[44:48] = hashlib.sha256(rec[:44]).digest()[:4]  # checks, but names no slot
    elif bad == "check":
        rec[45] ^= 1
    else:
        rec[0] ^= 1
    fl.put(fl.lay.record_offset(0), bytes(rec))
    assert bl.read_records(fl.d, FC) == [None, None]
    assert bl.decide(fl.d, FC).boot == "factory"


def test_a_new_slot_whose_digest_does_not_match_is_aborted_and_not_booted(fl):
    a, b = fl.slot(0, archive("a")), fl.slot(1, archive("b"))
    fl.record(0, 1, 0, a, VALID)
    fl.record(1, 2, 1, b, NEW)
    fl.put(fl.lay.slot_offset(1) + 100, b"\x00")  # a bit flipped in the slot
    assert bl.boot(fl.d, FC).slot == "ota_0"
    assert fl.states() == [VALID, ABORTED]  # never marked trial: it never booted


def test_a_valid_slot_whose_digest_does_not_match_falls_back_and_both_may_go(fl):
    a, b = fl.slot(0, archive("a")), fl.slot(1, archive("b"))
    fl.record(0, 1, 0, a, VALID)
    fl.record(1, 2, 1, b, VALID)
    fl.put(fl.lay.slot_offset(1), b"\x00")
    assert bl.boot(fl.d, FC).slot == "ota_0" and fl.states() == [VALID, ABORTED]
    fl.put(fl.lay.slot_offset(0) + len(a) - 1, b"\x00")  # the fallback's last byte too
    assert bl.boot(fl.d, FC).slot == "factory" and fl.states() == [ABORTED, ABORTED]
    # bytes past `size` are never read: damage there changes nothing
    fl.record(0, 3, 0, a, VALID)
    fl.slot(0, a)
    fl.put(fl.lay.slot_offset(0) + len(a), b"\x00" * 10)
    assert bl.boot(fl.d, FC).slot == "ota_0"


def test_a_record_larger_than_its_slot_or_a_bad_archive_does_not_boot(fl):
    fl.slot(0, archive("a"))
    rec = bl.encode_record(1, 0, fl.lay.slot_bytes + 1, hashlib.sha256(b"more than the slot holds").digest())
    fl.put(fl.lay.record_offset(0), rec)
    assert bl.boot(fl.d, FC).slot == "factory" and fl.states() == [ABORTED, None]
    evil = b"EPB1" + bytes([4]) + b"../x" + struct.pack(">I", 2) + b"hi"  # digest matches; structure not
    fl.slot(1, evil)
    fl.record(1, 2, 1, evil)
    assert bl.boot(fl.d, FC).slot == "factory" and fl.states() == [ABORTED, ABORTED]
    assert not (fl.d / ".slot").exists() and not (fl.d.parent / "x").exists()


def entry(path: bytes, body: bytes = b"", size: int | None = None) -> bytes:
    return bytes([len(path)]) + path + struct.pack(">I", len(body) if size is None else size) + body


@pytest.mark.parametrize("data,why", [
    (b"EPB0", "not an EPB1"),
    (b"EPB1" + entry(b""), "bad path"),
    (b"EPB1" + entry(b"/abs"), "bad path"),
    (b"EPB1" + entry(b"a//b"), "bad path"),
    (b"EPB1" + entry(b"a/./b"), "bad path"),
    (b"EPB1" + entry(b"../b"), "bad path"),
    (b"EPB1" + entry(b"a/.."), "bad path"),
    (b"EPB1" + entry(b"a/"), "bad path"),
    (b"EPB1" + entry(b"\xff\xfe"), "not UTF-8"),
    (b"EPB1" + entry(b"b") + entry(b"a"), "bad path"),
    (b"EPB1" + entry(b"a") + entry(b"a"), "bad path"),
    (b"EPB1" + entry(b"a", b"xy", size=3), "past the end"),
    (b"EPB1" + entry(b"a")[:4], "header past the end"),
])
def test_the_archive_walk_refuses_what_the_device_refuses(data, why):
    with pytest.raises(bl.ArchiveError, match=why):
        bl.walk_archive(data)


def test_the_archive_walk_reads_what_release_packs():
    files = {"a.mpy": b"1", "hal/b.mpy": b"", "hal/c.mpy": b"x" * 300}
    assert dict(bl.walk_archive(pack(files))) == files
    assert bl.walk_archive(b"EPB1") == []


def test_program_state_is_nor_it_only_clears_bits(fl):
    a = fl.slot(0, archive("a"))
    fl.record(0, 1, 0, a, VALID)
    bl.program_state(fl.d, FC, 0, TRIAL)  # 0xF8 & 0xFC: still valid, a 0 cannot become 1
    assert fl.states() == [VALID, None]
    bl.program_state(fl.d, FC, 0, ABORTED)
    assert fl.states() == [ABORTED, None]


def test_the_record_layout_is_the_specs():
    sha = bytes(range(32))
    rec = bl.encode_record(0x01020304, 1, 0x0A0B0C0D, sha, 0xFC)
    assert len(rec) == bl.RECORD == 49
    assert rec[:12] == bytes([4, 3, 2, 1, 1, 0, 0, 0, 0x0D, 0x0C, 0x0B, 0x0A])
    assert rec[12:44] == sha and rec[44:48] == hashlib.sha256(rec[:44]).digest()[:4] and rec[48] == 0xFC
    assert [bl.status(s) for s in (0xFF, 0xFE, 0xFC, 0xF8, 0xF0, 0x00, 0xFD)] == \
        ["new", "new", "trial", "valid", "aborted", "aborted", "aborted"]


# -- SimBoard boots what the boot loader picks (on the VM)

MAIN = '''import json, sys
from hal import ota
s = ota.slots(json.load(open("config.json"))["board"])
print("BOOT %s %s %s" % (NAME, s.running(), s.trial()))
try:
    open("confirm").close()
    s.mark_valid()
except OSError:
    pass
sys.exit(0)
'''


def tiny_firmware(root: Path, name: str) -> Path:
    """main.py reporting what hal/ota says, with the hal modules it needs."""
    (root / "hal").mkdir(parents=True)
    for m in ("__init__", "ota", "simota", "simflash", "reset"):
        shutil.copy(FIRMWARE / "hal" / f"{m}.py", root / "hal" / f"{m}.py")
    (root / "main.py").write_text(f"NAME = {name!r}\n" + MAIN)
    return root


def test_simboard_boots_the_slot_the_boot_loader_picks(tmp_path):
    from host_tools.build import compile_firmware
    factory = tiny_firmware(tmp_path / "factory", "factory")
    slot = compile_firmware(tiny_firmware(tmp_path / "new", "new"))
    payload = pack({str(p.relative_to(slot)): p.read_bytes() for p in sorted(slot.rglob("*.mpy"))})
    b = SimBoard(tmp_path / "b", config={"board": {"flash": FC}}, firmware=factory)
    assert b.flash_config() == FC

    def run() -> str:
        b.start()
        assert b.wait(60) == 0, b.log()
        return b.lines[-1]

    assert run() == "BOOT factory factory False" and b.booted == "factory"
    assert not (b.dir / ".slot").exists()
    fl = Flash.__new__(Flash)
    fl.d, fl.fc, fl.lay = b.dir, FC, bl.layout(b.dir, FC)
    fl.slot(0, payload)
    fl.record(0, 1, 0, payload)
    assert run() == "BOOT new ota_0 True" and b.booted == "ota_0"
    assert fl.states() == [TRIAL, None]
    assert run() == "BOOT factory factory False" and b.booted == "factory"  # the trial reset: aborted
    fl.record(0, 2, 0, payload)
    (b.dir / "confirm").touch()
    assert run() == "BOOT new ota_0 True" and fl.states() == [VALID, None]  # the slot confirmed itself
    assert run() == "BOOT new ota_0 False" and b.booted == "ota_0"
    assert json.loads((b.dir / "config.json").read_text())["board"]["flash"] == FC
