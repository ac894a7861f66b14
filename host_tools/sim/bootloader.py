"""The simulated board's boot loader (SPEC §10 "Slots"): before each boot of a sim board it reads
the two boot records (otadata) in the board's `flash.bin`, applies the boot rule, programs the state
bytes that rule changes in place (NOR: new = old AND state, as the chip would), and says what to
boot: "factory" (the bundle the board was flashed with) or a slot, whose EPB1 archive it extracts
into `<board>/.slot/<slot>/` for MICROPYPATH.

The layout is firmware/hal/simflash.py's: the journal's `blocks`, the main filesystem's FS_BLOCKS,
then otadata (2 blocks, one record at the start of each) and ota_0, ota_1 of `ota_blocks` each. A
record is firmware/hal/simota.py's (49 bytes): seq u32 LE, slot u8, 3 zero bytes, size u32 LE, the
payload's SHA-256, SHA-256[:4] of those 44 bytes, the state byte. The device reads its running slot
back by the same rule, from the states alone: so a slot refused here is marked aborted.
"""
from __future__ import annotations

import hashlib
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from host_tools.sim.flashfs import FS_BLOCKS

OTA_BLOCKS = 24   # each slot's blocks by default (firmware/hal/simflash.py OTA_BLOCKS)
RECORD = 49
NEW, TRIAL, VALID, ABORTED = 0xFE, 0xFC, 0xF8, 0xF0  # 0xFF is new too; any other byte is aborted
MAGIC = b"EPB1"
STAMP = ".sha256"  # in an extracted slot: the digest of the payload it was extracted from


def status(state: int) -> str:
    return "new" if state >= NEW else "trial" if state == TRIAL else "valid" if state == VALID else "aborted"


@dataclass(frozen=True)
class Layout:
    image: Path       # flash.bin
    bs: int           # block size
    otadata: int      # first block of otadata
    ota_blocks: int   # blocks per slot

    @property
    def slot_bytes(self) -> int:
        return self.ota_blocks * self.bs

    def record_offset(self, block: int) -> int:
        return (self.otadata + block) * self.bs

    def slot_offset(self, slot: int) -> int:
        return (self.otadata + 2 + slot * self.ota_blocks) * self.bs


def layout(board_dir: str | Path, fc: dict) -> Layout:
    """Where a board with flash config `fc` (its board's "flash") keeps otadata and its slots."""
    bs = int(fc.get("block_size", 4096))
    return Layout(Path(board_dir) / fc.get("dir", ".") / "flash.bin", bs,
                  int(fc.get("blocks", 128)) + FS_BLOCKS, OTA_BLOCKS)


@dataclass(frozen=True)
class Record:
    block: int        # the otadata block holding it (0, 1)
    seq: int
    slot: int         # 0, 1
    size: int
    sha256: bytes
    state: int        # the raw state byte

    @property
    def status(self) -> str:
        return status(self.state)

    @property
    def label(self) -> str:
        return f"ota_{self.slot}"

    def order(self) -> tuple[int, int, int, int]:
        """The device's order (firmware/hal/simota.py sorts these tuples, newest first)."""
        return (self.seq, self.slot, self.state, self.block)


def encode_record(seq: int, slot: int, size: int, sha256: bytes, state: int = 0xFF) -> bytes:
    """The 49 bytes firmware/hal/simota.py set_boot writes (tests stage records with it)."""
    head = struct.pack("<IB3xI", seq, slot, size) + sha256
    return head + hashlib.sha256(head).digest()[:4] + bytes([state])


def parse_record(raw: bytes, block: int) -> Record | None:
    """A record that checks, or None (blank, torn or corrupt)."""
    if len(raw) < RECORD:
        return None
    head = raw[:44]
    if hashlib.sha256(head).digest()[:4] != raw[44:48] or raw[4] > 1 or any(raw[5:8]):
        return None
    seq, slot, size = struct.unpack("<IB3xI", raw[:12])
    return Record(block, seq, slot, size, bytes(raw[12:44]), raw[48])


def _read(image: Path, offset: int, n: int) -> bytes:
    try:
        with open(image, "rb") as f:
            f.seek(offset)
            return f.read(n)
    except OSError:
        return b""  # no image yet: a blank chip


def read_records(board_dir: str | Path, fc: dict) -> list[Record | None]:
    """[the record in otadata block 0, block 1] (None where none checks)."""
    lay = layout(board_dir, fc)
    return [parse_record(_read(lay.image, lay.record_offset(b), RECORD), b) for b in (0, 1)]


class ArchiveError(ValueError):
    pass


def walk_archive(data: bytes) -> list[tuple[str, bytes]]:
    """The files of an EPB1 archive, checked as the device checks it (SPEC §10 `bad_archive`):
    no empty, absolute, `.` or `..` path segment, UTF-8, each path strictly after the one before,
    no file past the end."""
    if data[:4] != MAGIC:
        raise ArchiveError("not an EPB1 archive")
    out: list[tuple[str, bytes]] = []
    i, prev = 4, b""
    while i < len(data):
        n = data[i]
        if i + 5 + n > len(data):
            raise ArchiveError("header past the end")
        raw = data[i + 1:i + 1 + n]
        try:
            path = raw.decode()
        except UnicodeDecodeError:
            raise ArchiveError("path not UTF-8") from None
        if not raw or raw <= prev or any(s in ("", ".", "..") for s in path.split("/")):
            raise ArchiveError(f"bad path {path!r}")
        (size,) = struct.unpack(">I", data[i + 1 + n:i + 5 + n])
        start = i + 5 + n
        if start + size > len(data):
            raise ArchiveError(f"{path}: past the end")
        out.append((path, data[start:start + size]))
        prev, i = raw, start + size
    return out


def payload(board_dir: str | Path, fc: dict, rec: Record) -> bytes | None:
    """The record's slot contents if they boot: `size` bytes fitting the slot, matching its digest,
    a well-formed archive; else None."""
    lay = layout(board_dir, fc)
    if rec.size > lay.slot_bytes:
        return None
    data = _read(lay.image, lay.slot_offset(rec.slot), rec.size)
    if len(data) != rec.size or hashlib.sha256(data).digest() != rec.sha256:
        return None
    try:
        walk_archive(data)
    except ArchiveError:
        return None
    return data


class Decision(NamedTuple):
    boot: str                               # "factory", "ota_0", "ota_1"
    record: Record | None                   # the record booted (None: factory)
    marks: tuple[tuple[int, int], ...]      # (otadata block, state) the boot loader programs


def decide(board_dir: str | Path, fc: dict) -> Decision:
    """The boot rule, without writing: the newest record that checks is new -> mark trial, boot it;
    trial -> mark aborted, fall back; valid -> boot it; aborted -> fall back. The fallback is the
    other record's slot if that is valid, else factory. A slot whose contents do not check
    (payload()) is not booted: its record is marked aborted and the fallback boots."""
    recs = sorted((r for r in read_records(board_dir, fc) if r), key=Record.order, reverse=True)
    if not recs:
        return Decision("factory", None, ())
    new, old = recs[0], (recs[1] if len(recs) > 1 else None)
    marks: list[tuple[int, int]] = []
    st = new.status
    if st in ("new", "valid") and payload(board_dir, fc, new) is not None:
        if st == "new":
            marks.append((new.block, TRIAL))
        return Decision(new.label, new, tuple(marks))
    if st != "aborted":  # a trial that reset, or a slot that does not check
        marks.append((new.block, ABORTED))
    if old is not None and old.status == "valid":
        if payload(board_dir, fc, old) is not None:
            return Decision(old.label, old, tuple(marks))
        marks.append((old.block, ABORTED))
    return Decision("factory", None, tuple(marks))


def program_state(board_dir: str | Path, fc: dict, block: int, state: int) -> None:
    """Program a record's state byte in place, as NOR does (old AND new)."""
    lay = layout(board_dir, fc)
    at = lay.record_offset(block) + RECORD - 1
    with open(lay.image, "r+b") as f:
        f.seek(at)
        old = f.read(1)
        f.seek(at)
        f.write(bytes([(old[0] if old else 0xFF) & state]))


@dataclass(frozen=True)
class Boot:
    slot: str            # "factory", "ota_0", "ota_1"
    dir: Path | None     # the extracted slot to run (None: factory)


def boot(board_dir: str | Path, fc: dict) -> Boot:
    """Run the boot loader over the board's flash: program its marks, extract the slot it boots."""
    d = decide(board_dir, fc)
    for block, state in d.marks:
        program_state(board_dir, fc, block, state)
    if d.record is None:
        return Boot("factory", None)
    return Boot(d.boot, extract(board_dir, fc, d.record))


def extract(board_dir: str | Path, fc: dict, rec: Record) -> Path:
    """`<board>/.slot/<slot>/`, the record's archive unpacked; kept while its digest is the record's."""
    root = Path(board_dir) / ".slot"
    out = root / rec.label
    stamp = out / STAMP
    if stamp.is_file() and stamp.read_text().strip() == rec.sha256.hex():
        return out
    data = payload(board_dir, fc, rec)
    if data is None:
        raise ArchiveError(f"{rec.label}: its contents changed under the boot loader")
    tmp = root / f".new-{rec.label}"
    shutil.rmtree(tmp, ignore_errors=True)
    for path, body in walk_archive(data):
        p = tmp / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body)
    tmp.mkdir(parents=True, exist_ok=True)  # an archive of no files
    (tmp / STAMP).write_text(rec.sha256.hex())
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
