# The journal's own littlefs, on its own flash region: on a board an esp32.Partition ("journal") or
# an rp2.Flash, on the unix VM a SimFlash over `flash.bin` in the board's directory.
# Its own mount because the journal wants littlefs tuned for it: a 512-byte cache lets a ~480-byte
# record live inline in its directory's log (see journal.py), and no mtime attribute on each write.
# A blank chip is formatted; a damaged one is NEVER formatted over: it may hold unsent money.
# The rest of the device's state (store.py's files) lives on the main filesystem: a board's root,
# littlefs on flash already; on the VM, mount_fs() mounts its stand-in from the same simulated
# chip, after the journal's region, so a power cut strikes store writes as it strikes the journal.
import vfs
from hal import ON_VM

MOUNT = "/jfs"
dev = None  # the mounted block device (stats, power-cut harnesses): on the VM, the whole chip
progsize = 16  # of the mounted fs: the journal pads its segment budget to it


class FlashError(Exception):
    """The journal filesystem is damaged: raise an alarm; do not format over money records."""


def _blank(bdev):
    # never formatted: both superblock candidates read all 0xFF
    buf = bytearray(64)
    for b in (0, 1):
        bdev.readblocks(b, buf, 0)
        for x in buf:
            if x != 0xFF:
                return False
    return True


def device(board_cfg):
    """(block device, readsize, progsize) for this board's journal region."""
    fc = board_cfg.get("flash") or {}
    if ON_VM:
        from hal import simflash
        return simflash.journal_dev(fc), fc.get("readsize", 128), fc.get("progsize", 16)
    import sys
    if sys.platform == "rp2":
        import rp2
        # the RP2040 programs whole 256-byte pages only, so littlefs must pad to 256 there
        kw = {}
        if "start" in fc:
            kw = {"start": fc["start"], "len": fc["len"]}
        return rp2.Flash(**kw), 256, 256
    import esp32
    p = esp32.Partition.find(esp32.Partition.TYPE_DATA, label=fc.get("label", "journal"))
    if not p:
        raise FlashError("no '" + fc.get("label", "journal") + "' partition for the journal")
    return p[0], 128, 16  # ESP32 NOR programs any byte: pad commits to 16 only


def _mount(d, rs, ps, point):
    kw = {"readsize": rs, "progsize": ps, "lookahead": 32}
    try:
        fs = vfs.VfsLfs2(d, mtime=False, **kw)
    except OSError as e:
        if not _blank(d):
            raise FlashError(point + " will not mount (%s): not formatting over it" % e)
        vfs.VfsLfs2.mkfs(d, **kw)
        fs = vfs.VfsLfs2(d, mtime=False, **kw)
    vfs.mount(fs, point)
    return point


def mount(board_cfg, mount_point=MOUNT):
    """Mount the journal filesystem and return its path (format only a blank chip)."""
    global dev, progsize
    d, rs, ps = device(board_cfg)
    _mount(d, rs, ps, mount_point)
    dev, progsize = getattr(d, "c", d), ps
    return mount_point


def mount_fs(board_cfg):
    """The prefix of store's files: "" on a board (its root fs); on the VM "/fs/", mounted at boot
    from the simulated chip (hal/simflash.py), whose power cut then kills the board."""
    if not ON_VM:
        return ""
    from hal import simflash
    return simflash.mount_fs(board_cfg.get("flash") or {}, _mount, board_cfg.get("mcu") or "")
