# Journal and simulated-flash behaviours, run on the VM. argv: case, board dir. Prints one JSON
# object (the facts the host test asserts on) as its last line.
import json
import sys

import journal
from hal import flash, simflash

case, D = sys.argv[1], sys.argv[2]
BOARD = {"flash": {"dir": D, "blocks": 32}}
out = {}


def h(seq):
    return bytes([seq & 0xFF]) * 16


def rec(seq, n=150):
    b = bytearray(n)
    for i in range(n):
        b[i] = (seq + i) & 0xFF
    return bytes(b)


def same(s, d):
    # compare in place: a fresh 2 KB copy per record is what a 64K heap cannot always spare
    for i in range(len(d)):
        if d[i] != (s + i) & 0xFF:
            return False
    return True


def pend(j, limit=None):
    return [[s, same(s, d)] for s, d in j.pending(limit)]


def raises(fn, exc):
    try:
        fn()
    except exc:
        return True
    return False


def jr(cap=20000, **kw):
    return journal.Journal(flash.mount(BOARD) + "/j", cap, **kw)


if case == "basic":
    j = jr()
    out["empty"] = [j.last_seq, list(j.last_hash), j.depth(), j.acked, pend(j)]
    for s in (3, 4, 7, 9, 12):
        out.setdefault("ret", []).append(j.append(s, rec(s), h(s)))
    out["pending"] = pend(j)
    out["limit2"] = pend(j, 2)
    out["depth"] = j.depth()
    out["head"] = [j.last_seq, j.last_hash == h(12)]
    out["dup_seq"] = raises(lambda: j.append(12, rec(12), h(12)), ValueError)
    out["old_seq"] = raises(lambda: j.append(5, rec(5), h(5)), ValueError)
    out["too_big"] = raises(lambda: j.append(13, bytes(2049), h(13)), ValueError)
    out["bad_hash"] = raises(lambda: j.append(13, b"x", b"short"), ValueError)
    out["ack7"] = j.ack(7)
    out["after_ack"] = [pend(j), j.depth(), j.acked]
    out["ack_lower"] = [j.ack(4), j.acked, j.depth()]
    out["ack_beyond"] = [j.ack(1000), j.acked, j.depth(), j.last_seq, j.last_hash == h(12)]
    out["big"] = [j.append(20, rec(20, 2048), h(20)), pend(j)]  # too big to be inline: a CTZ file
elif case == "full":
    # 10 records of 181 bytes fill 1810; telemetry may use 3/4 of it, money all of it
    j = jr(cap=1810)
    got = []
    s = 0
    while True:
        s += 1
        if not j.append(s, rec(s), h(s), money=False):
            break
        got.append(s)
    out["telemetry_kept"] = got
    out["telemetry_dropped_at_depth"] = j.depth()
    money = []
    try:
        while True:
            s += 1
            j.append(s, rec(s), h(s), money=True)
            money.append(s)
    except journal.JournalFull:
        out["money_full"] = True
    out["money_kept"] = money
    out["depth_full"] = j.depth()
    out["telemetry_when_full"] = j.append(s + 1, rec(s + 1), h(s + 1), money=False)
    out["head_unchanged"] = j.last_seq == money[-1]
    out["pending_all"] = [x[0] for x in pend(j)] == got + money
    j.ack(got[-1])
    out["after_ack_money_ok"] = j.append(s + 2, rec(s + 2), h(s + 2), money=True)
    out["depth_after"] = j.depth()
elif case == "reboot1":  # first boot: write, ack some, then the process just ends (power off)
    j = jr()
    for s in range(1, 31):
        j.append(s * 2, rec(s * 2), h(s * 2))
    j.ack(20)
    out["pending"] = pend(j)
elif case == "reboot2":  # second boot on a fresh VM: same bytes, recovered state
    j = jr()
    out["pending"] = pend(j)
    out["state"] = [j.last_seq, j.last_hash == h(60), j.acked, j.depth()]
    out["seq_back"] = raises(lambda: j.append(60, rec(60), h(60)), ValueError)
    out["next_ok"] = j.append(61, rec(61), h(61))
    j.ack(61)  # everything acknowledged: the head must now live in the marker alone
    out["all_acked"] = [j.depth(), j.acked]
elif case == "reboot3":
    j = jr()
    out["state"] = [j.last_seq, j.last_hash == h(61), j.acked, j.depth(), pend(j)]
    out["seq_back"] = raises(lambda: j.append(61, rec(61), h(61)), ValueError)
elif case == "nor":
    d = simflash.SimFlash(D + "/nor.bin", 256, 4)
    b = bytearray(4)
    d.readblocks(1, b, 0)
    out["erased"] = list(b)
    d.writeblocks(1, b"\x0f\xf0\xaa\xff", 0)
    d.writeblocks(1, b"\xf0\xf0\xff\x00", 0)  # over programmed bytes: only clears bits
    d.readblocks(1, b, 0)
    out["anded"] = list(b)
    d.writeblocks(1, b"\xff\xff\xff\xff", 0)  # cannot set a bit back to 1
    d.readblocks(1, b, 0)
    out["no_set"] = list(b)
    d.ioctl(6, 1)
    d.readblocks(1, b, 0)
    out["reerased"] = list(b)
    d.readblocks(0, b, 0)
    out["other_block"] = list(b)
    out["stats"] = d.stats()
    out["geometry"] = [d.ioctl(4, 0), d.ioctl(5, 0)]
    d.writeblocks(2, b"\x00" * 256)  # the basic interface: erase, then program
    d.writeblocks(2, b"\x12" * 256)
    d.readblocks(2, b, 0)
    out["basic_iface"] = list(b)
elif case == "powerloss":
    d = simflash.SimFlash(D + "/pl.bin", 256, 4, cut_at=3, tear=2)
    d.writeblocks(0, bytes(256), 0)  # op 1
    d.ioctl(6, 1)                               # op 2
    out["before"] = d.stats()["ops"]
    out["cut"] = raises(lambda: d.writeblocks(1, b"\x11\x22\x33\x44", 0), simflash.PowerLoss)
    b = bytearray(4)
    out["refused"] = [raises(lambda: d.readblocks(0, b, 0), simflash.PowerLoss),
                      raises(lambda: d.writeblocks(2, b"\x00", 0), simflash.PowerLoss),
                      raises(lambda: d.ioctl(6, 2), simflash.PowerLoss),
                      raises(lambda: d.ioctl(3, 0), simflash.PowerLoss),
                      raises(lambda: d.ioctl(4, 0), simflash.PowerLoss)]
    d2 = simflash.SimFlash(D + "/pl.bin", 256, 4)  # the reboot: same bytes, power back
    d2.readblocks(1, b, 0)
    out["torn_prog"] = list(b)  # the first 2 bytes landed
    d3 = simflash.SimFlash(D + "/pl.bin", 256, 4, cut_at=1, tear=100)
    out["cut_erase"] = raises(lambda: d3.ioctl(6, 0), simflash.PowerLoss)
    d4 = simflash.SimFlash(D + "/pl.bin", 256, 4)
    d4.readblocks(0, b, 0)
    out["torn_erase"] = list(b)  # a prefix erased...
    d4.readblocks(0, b, 100)
    out["torn_erase_rest"] = list(b)  # ...the rest not
    d5 = simflash.SimFlash(D + "/pl.bin", 256, 4, cut_at=1)
    out["clean_cut"] = raises(lambda: d5.writeblocks(3, b"\x00\x00", 0), simflash.PowerLoss)
    simflash.SimFlash(D + "/pl.bin", 256, 4).readblocks(3, b, 0)
    out["clean_cut_nothing"] = list(b)
    # the control file in the board dir arms a cut for the next boot
    j = jr()
    j.append(1, rec(1), h(1))
    import vfs
    vfs.umount(flash.MOUNT)
    with open(D + "/flash.cut", "w") as f:
        f.write("1")
    j = jr()
    out["ctl_cut"] = raises(lambda: j.append(2, rec(2), h(2)), simflash.PowerLoss)
    out["ctl_refused"] = raises(lambda: list(j.pending()), simflash.PowerLoss)
    vfs.umount(flash.MOUNT)
    j = jr()
    out["ctl_after"] = [pend(j), j.last_seq]
elif case == "mount_garbage":
    with open(D + "/flash.bin", "wb") as f:
        z = bytes(4096)
        for _ in range(32):
            f.write(z)  # not blank, not littlefs
    try:
        flash.mount(BOARD)
        out["raised"] = None
    except flash.FlashError as e:
        out["raised"] = str(e)
    with open(D + "/flash.bin", "rb") as f:
        out["untouched"] = f.read(4096) == bytes(4096) and f.read(4096) == bytes(4096)  # nothing was formatted over it
print(json.dumps(out))
