"""Read a simulated board's state (the files firmware/store.py keeps: "cmdstate", "boots", "seq",
"tbeacon", "settings", parked cars under "pk/", ...) and its money journal out of its flash image.

The device keeps them on littlefs, on the main-filesystem partition of `flash.bin` (after the
journal's region; firmware/hal/simflash.py mount_fs), as a board keeps them on its root filesystem.
The host has no littlefs, so the MicroPython VM reads them: a small read-only block device over
the image, mounted read-only, every file dumped as hex. Read a stopped board (or a copy): a
running one may be mid-commit.

    .venv/bin/python -m host_tools.sim.flashfs BOARD_DIR [NAME]
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from host_tools.boardcheck import device_board
from host_tools.build import compile_firmware, micropython

FS_BLOCKS = 64  # the main filesystem's blocks after the journal's (firmware/hal/simflash.py FS_BLOCKS)

def vm_blockdev(image: str | Path, first: int, blocks: int, block_size: int, writable: bool = False) -> str:
    """MicroPython source of `Dev`: a block device over `blocks` blocks of `image` from block
    `first` (what vfs.VfsLfs2 mounts on the VM), read-only unless `writable`. The scripts here and
    the tests that stage a board's flash share it."""
    write = ("    def writeblocks(s, b, buf, off=0):\n        s.f.seek((FIRST + b) * BS + off)\n        s.f.write(buf)\n"
             if writable else "    def writeblocks(s, b, buf, off=None):\n        raise OSError(30)\n")
    erase = ("        if op == 6:\n            s.f.seek((FIRST + arg) * BS)\n            s.f.write(b'\\xff' * BS)\n"
             if writable else "")
    return (f"P, FIRST, N, BS = {str(image)!r}, {first}, {blocks}, {block_size}\n"
            "class Dev:\n"
            "    def __init__(s):\n"
            f"        s.f = open(P, {'r+b' if writable else 'rb'!r})\n"
            "    def readblocks(s, b, buf, off=0):\n"
            "        s.f.seek((FIRST + b) * BS + off)\n"
            "        s.f.readinto(buf)\n"
            + write +
            "    def ioctl(s, op, arg):\n"
            + erase +
            "        return N if op == 4 else BS if op == 5 else 0\n")


_DUMP = r"""
import json, os, vfs
vfs.mount(vfs.VfsLfs2(Dev(), readsize=128, progsize=16, lookahead=32, mtime=False), "/fs", readonly=True)
out = {}
def walk(d, rel):
    for e in os.ilistdir(d):
        if e[1] == 0x4000:
            walk(d + "/" + e[0], rel + e[0] + "/")
        else:
            with open(d + "/" + e[0], "rb") as f:
                out[rel + e[0]] = f.read().hex()
walk("/fs", "")
print(json.dumps(out))
"""


# The journal's region (blocks 0..N of the chip, firmware/hal/simflash.py journal_dev) opened as the
# agent opens it (firmware/agent.py _open_journal), with the firmware's own Journal, over a copy.
_JOURNAL = r"""
import json, vfs
from binascii import hexlify
from journal import Journal
RS, PS, CAP = %d, %d, %d
vfs.mount(vfs.VfsLfs2(Dev(), readsize=RS, progsize=PS, lookahead=32, mtime=False), "/jfs")
j = Journal("/jfs/j", CAP, prog=PS)
print(json.dumps({"acked": j.acked, "last_seq": j.last_seq, "depth": j.depth()}))
for s, d in j.pending():
    print(json.dumps({"seq": s, "raw": hexlify(d).decode()}))
print("END")
"""


class FlashImageError(Exception):
    pass


def _layout(board_dir: Path) -> tuple[int, int]:
    """(first block of the main filesystem, block size) from the board's config.json (board.json)."""
    try:
        cfg = json.loads((board_dir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise FlashImageError(f"{board_dir}: no readable config.json ({e})") from e
    board = device_board(board_dir, cfg) or {}
    fc = board.get("flash") or {} if isinstance(board, dict) else {}
    return fc.get("blocks", 128), fc.get("block_size", 4096)


def read_files(board_dir: str | Path) -> dict[str, bytes]:
    """Every file on the board's main filesystem, by path ("cmdstate", "pk/4142"); {} for a
    board that never booted (no image, or a blank region)."""
    d = Path(board_dir)
    image = d / "flash.bin"
    first, bs = _layout(d)
    try:
        with open(image, "rb") as f:
            f.seek(first * bs)
            head = f.read(2 * bs)  # both superblock candidates
    except OSError:
        return {}
    if not head or head.count(0xFF) == len(head):
        return {}
    script = vm_blockdev(image.resolve(), first, FS_BLOCKS, bs) + _DUMP
    r = subprocess.run([micropython(), "-c", script], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise FlashImageError(f"{image}: the main filesystem does not mount: {(r.stderr or r.stdout)[-300:]}")
    return {k: bytes.fromhex(v) for k, v in json.loads(r.stdout.splitlines()[-1]).items()}


def read_journal(board_dir: str | Path) -> tuple[dict, list[dict]]:
    """The money records a stopped sim board still holds (journaled, not yet acknowledged):
    ({acked, last_seq, depth}, [{"seq", "raw" hex}]), read from a copy of its flash image (opening
    a journal runs littlefs recovery, which may write: the board's own image is never touched)."""
    import shutil
    import tempfile
    d = Path(board_dir)
    try:
        board = device_board(d)
        if board is None:
            raise ValueError("no readable config.json / board.json")
        fc = board.get("flash") or {}
        cap = int(board["journal"].get("capacity", 32768))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise FlashImageError(f"{d}: not a provisioned board directory ({e})") from None
    blocks, bs = fc.get("blocks", 128), fc.get("block_size", 4096)
    image = d / "flash.bin"
    if not image.is_file():
        raise FlashImageError(f"{d}: no flash.bin: the board never booted")
    with tempfile.TemporaryDirectory(prefix="edgepay-journal-") as tmp:
        copy = Path(tmp) / "flash.bin"
        shutil.copyfile(image, copy)
        script = vm_blockdev(copy, 0, blocks, bs, writable=True) + _JOURNAL % (
            fc.get("readsize", 128), fc.get("progsize", 16), cap)
        r = subprocess.run([micropython(), "-c", script], capture_output=True, text=True, timeout=60,
                           env={"MICROPYPATH": str(compile_firmware())})
    lines = r.stdout.splitlines()
    if r.returncode != 0 or not lines or lines[-1] != "END":
        why = (r.stderr or r.stdout).strip().splitlines()
        raise FlashImageError(f"{image}: the journal does not open: {why[-1] if why else 'no output'}")
    return json.loads(lines[0]), [json.loads(x) for x in lines[1:-1]]


def read_state(board_dir: str | Path, name: str, default=None):
    """One store file, decoded as the device wrote it (JSON); `default` if it is not there."""
    raw = read_files(board_dir).get(name)
    return default if raw is None else json.loads(raw)


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print((__doc__ or "").strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    try:
        files = read_files(argv[0])
    except FlashImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if len(argv) == 2:
        if argv[1] not in files:
            print(f"error: no {argv[1]!r} on {argv[0]}'s flash", file=sys.stderr)
            return 1
        print(files[argv[1]].decode())
        return 0
    print(json.dumps({k: v.decode(errors="replace") for k, v in sorted(files.items())}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
