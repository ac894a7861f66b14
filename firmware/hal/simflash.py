# Simulated NOR flash for vfs.VfsLfs2 on the unix VM: the bytes live in a host file (not the heap),
# so a harness can cut power mid-write and remount the very same bytes as a reboot would.
# NOR rules, exactly: erase sets a block to 0xFF; a program only clears bits (new = old AND data).
import os

IOCTL_INIT, IOCTL_DEINIT, IOCTL_SYNC, IOCTL_COUNT, IOCTL_SIZE, IOCTL_ERASE = 1, 2, 3, 4, 5, 6
_CHUNK = 64  # the read-modify-write scratch: small, it stays in the heap for good
_FF = b"\xff" * _CHUNK
FS_BLOCKS = 64  # the main filesystem (256 KiB of 4 KiB blocks), after the journal's region
OTA_BLOCKS = 24  # each update slot's blocks (SPEC §10 "Slots"), after 2 otadata blocks after the fs
chip = None  # the board's chip once mount_fs() has it: the journal then mounts a partition of it


class PowerLoss(Exception):
    pass


def read_cut(path):
    """Read and consume a cut control file: 'N' or 'N T' (cut at the Nth program/erase, tear T bytes)."""
    try:
        with open(path) as f:
            v = f.read().split()
        os.remove(path)  # one cut per arming: the reboot after it runs clean unless re-armed
    except OSError:
        return None, None
    return int(v[0]), (int(v[1]) if len(v) > 1 else None)


class SimFlash:
    def __init__(self, path, block_size=4096, block_count=128, cut_at=None, tear=None):
        """cut_at: lose power at this program-or-erase op (1-based); tear: bytes of it that land first."""
        self.bs = block_size
        self.n = block_count
        try:
            self.f = open(path, "r+b")
        except OSError:
            open(path, "wb").close()
            self.f = open(path, "r+b")
        f = self.f
        f.seek(0, 2)
        for _ in range((block_size * block_count - f.tell()) // _CHUNK):
            f.write(_FF)  # a new chip comes erased; so do the blocks an older, smaller image lacks
        self.cut_at = cut_at
        self.tear = tear
        self.dead = False
        self.on_cut = None  # called once the torn write is on "flash": a whole board dies here
        self._pl = PowerLoss("flash: no power")  # raised while dead, also from GC finalisers: no alloc
        self.ops = self.progs = self.prog_bytes = self.erases = self.conflicts = 0
        self._s = bytearray(_CHUNK)  # scratch for read-modify-write; no per-call allocation

    def stats(self):
        return {"ops": self.ops, "progs": self.progs, "prog_bytes": self.prog_bytes,
                "erases": self.erases, "conflicts": self.conflicts}

    def _alive(self):
        if self.dead:
            raise self._pl

    def _op(self):
        """Count a program/erase; return the bytes to tear it at if power goes now, else -1."""
        self._alive()
        self.ops += 1
        if self.cut_at is not None and self.ops >= self.cut_at:
            self.dead = True
            return self.tear or 0
        return -1

    def _cut(self):
        self.f.flush()
        if self.on_cut:
            self.on_cut()

    def readblocks(self, n, buf, off=0):
        self._alive()
        self.f.seek(n * self.bs + off)
        self.f.readinto(buf)

    def _program(self, addr, buf, length):
        # AND the new bytes into the old ones, a chunk at a time
        s = self._s
        done = 0
        while done < length:
            k = min(_CHUNK, length - done)
            mv = memoryview(s)[:k]
            self.f.seek(addr + done)
            self.f.readinto(mv)
            for i in range(k):
                o = s[i]
                d = buf[done + i]
                if d & ~o & 0xFF:
                    self.conflicts += 1  # wanted a 1 where flash holds 0: NOR cannot, the 0 stays
                s[i] = o & d
            self.f.seek(addr + done)
            self.f.write(mv)
            done += k

    def writeblocks(self, n, buf, off=None):
        if off is None:  # basic interface: erase the blocks first, then program
            for b in range(len(buf) // self.bs):
                self.ioctl(IOCTL_ERASE, n + b)
            off = 0
        t = self._op()
        length = len(buf) if t < 0 else min(t, len(buf))
        self._program(n * self.bs + off, buf, length)
        self.progs += 1
        self.prog_bytes += length
        if t >= 0:
            self._cut()
            raise PowerLoss("flash: power lost while programming")

    def _erase(self, n, length):
        self.f.seek(n * self.bs)
        while length > 0:
            k = min(_CHUNK, length)
            self.f.write(_FF[:k] if k < _CHUNK else _FF)
            length -= k

    def ioctl(self, op, arg):
        if op == IOCTL_DEINIT:  # allowed when dead, so the dead mount can be unmounted
            return 0
        self._alive()
        if op == IOCTL_COUNT:
            return self.n
        if op == IOCTL_SIZE:
            return self.bs
        if op == IOCTL_ERASE:
            t = self._op()
            self._erase(arg, self.bs if t < 0 else min(t, self.bs))  # a torn erase: a prefix only
            self.erases += 1
            if t >= 0:
                self._cut()
                raise PowerLoss("flash: power lost while erasing")
            return 0
        return 0  # init, sync: the host file is written through on every call


class Part:
    """Blocks [first, first + n) of a chip, as one partition: it shares the chip's power and op count."""

    def __init__(self, chip, first, n):
        self.c, self.first, self.n = chip, first, n

    def readblocks(self, b, buf, off=0):
        self.c.readblocks(self.first + b, buf, off)

    def writeblocks(self, b, buf, off=None):
        self.c.writeblocks(self.first + b, buf, off)

    def ioctl(self, op, arg):
        r = self.c.ioctl(op, arg + self.first if op == IOCTL_ERASE else arg)
        return self.n if op == IOCTL_COUNT else r


def _chip(fc, extra):
    d = fc.get("dir", ".")
    cut, tear = read_cut(d + "/flash.cut")  # the harness may arm a power cut
    return SimFlash(d + "/flash.bin", fc.get("block_size", 4096), fc.get("blocks", 128) + extra,
                    cut_at=cut, tear=tear)


def ota_dev(fc):
    """otadata (2 blocks) then ota_0, ota_1, after the main filesystem: one partition of the chip,
    so a power cut strikes update writes as it strikes the journal's."""
    n = 2 + 2 * OTA_BLOCKS
    return Part(chip or _chip(fc, FS_BLOCKS + n), fc.get("blocks", 128) + FS_BLOCKS, n)


def journal_dev(fc):
    """The journal's region: of the board's chip, or (a journal alone, in tests) a chip of its own."""
    return Part(chip, 0, fc.get("blocks", 128)) if chip else _chip(fc, 0)


def mount_fs(fc, mount, mcu=""):
    """The board's main filesystem, after the journal's region. On an ESP32 it stands in for the
    root littlefs, mounted with MicroPython's defaults (readsize = progsize = 32: its caches, 4 x
    that each, and every open file's are 128 B; the journal's 128/16 made them 512 B, ~1 KB of
    heap more than the board holds). Other boards keep the journal's read and program sizes."""
    global chip
    from hal import reset
    c = chip = _chip(fc, FS_BLOCKS + 2 + 2 * OTA_BLOCKS)  # the update slots after the fs
    c.on_cut = reset.power_off  # pyright: ignore[reportAttributeAccessIssue]  (a cut kills the whole board)
    rs, ps = (32, 32) if mcu[:5] == "esp32" else (128, 16)
    return mount(Part(c, fc.get("blocks", 128), FS_BLOCKS), rs, ps, "/fs") + "/"
