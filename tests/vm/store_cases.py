# store.write/read on the VM: on the host filesystem (the simulator's flash) and on littlefs over
# the simulated NOR flash, small values in place and big ones by rename; then a power cut at each
# program/erase of one in-place rewrite on littlefs, clean and torn: after the remount the value
# is the old one or the new one, never torn, never lost. argv: a scratch directory. Prints JSON.
import json
import os
import sys
import vfs

import store
from hal import flash, simflash

D = sys.argv[1]
out = {"fails": [], "cuts": 0, "old": 0, "new": 0}


def fail(m):
    out["fails"].append(m)


def size(p):
    return os.stat(p)[6]


def cases(base):
    p = base + "/v"
    steps = [[1, "abcdef", "ok"], [2, "ab", None], {"hb_s": 30, "k": [1, 2, 3]}, 7,
             ["x" * 600], 3, ["y" * 900], ["z" * 100], 0]
    for v in steps:
        store.write(p, v)
        got = store.read(p)
        if got != v:
            fail("%s: wrote %r read %r" % (base, v, got))
    if base + "/v.tmp" in [base + "/" + e[0] for e in os.ilistdir(base)]:
        fail(base + ": a .tmp file left behind")
    store.write(p, [123456, "abc"])
    n = size(p)
    store.write(p, [1])  # smaller: rewritten in place, padded, not truncated
    if size(p) != n or store.read(p) != [1]:
        fail(base + ": a smaller value was not written in place")
    if store.read(base + "/none", "dflt") != "dflt":
        fail(base + ": a missing value did not read as the default")


host = D + "/host"
os.mkdir(host)
cases(host)

BOARD = {"flash": {"dir": D, "blocks": 16}}


def mount():
    try:
        vfs.umount(flash.MOUNT)
    except Exception:
        pass
    return flash.mount(BOARD)


cases(mount())
OLD, NEW = [41, "30313233343536373839616263", "ok"], [42, "3031323334353637383961626364", None]
k = 1
while k < 200:
    for tear in (None, 0, 5):
        m = mount()
        store.write(m + "/cmdstate", OLD)
        flash.dev.cut_at = flash.dev.ops + k  # cut at the kth program/erase of the next write
        flash.dev.tear = tear
        done = False
        try:
            store.write(m + "/cmdstate", NEW)
            done = True
        except (simflash.PowerLoss, OSError):
            out["cuts"] += 1
        flash.dev.cut_at = None
        flash.dev.dead = False
        got = store.read(mount() + "/cmdstate")
        if got == OLD and not done:
            out["old"] += 1
        elif got == NEW:
            out["new"] += 1
        else:
            fail("cut at op %d tear %s: read %r" % (k, tear, got))
    if done:  # the write finished before the kth op: every op of it has been cut
        break
    k += 1
out["ops_swept"] = k
print(json.dumps(out))
