# Power-loss sweep, run on the VM: a device journals records (and acks some, as forwarding would)
# while power is cut at random program/erase points, torn or clean; after each cut it reboots on the
# same flash bytes (fresh VfsLfs2 mount; recovery sometimes cut too) and checks the invariant:
# every record whose append returned True is there, byte-equal and in order, minus only acked ones;
# nothing corrupt is surfaced; seq never goes back; the fs mounts and takes writes.
# stdin JSON: {"dir", "cuts", "seed", "blocks"?, "cap"?}. The model lives in <dir>/state.json, so
# a chain of VM processes continues one device: each process starts by rebooting after the cut the
# previous one ended with (a fresh VM), and ends with one more cut left unverified for the next.
import hashlib
import json
import random
import sys
import vfs

import journal
from hal import flash, simflash

cfg = json.loads(sys.stdin.read())
D = cfg["dir"]
BOARD = {"flash": {"dir": D, "blocks": cfg.get("blocks", 64)}}
CAP = cfg.get("cap", 24000)
random.seed(cfg["seed"])
fails = []
stats = {"cuts": 0, "recovery_cuts": 0, "torn": 0, "appends": 0, "acks": 0, "full": 0, "fresh_vm": 0}


def data_for(seq):
    n = 1100 if seq % 41 == 0 else 40 + (seq * 7919) % 400  # some too big to be inline
    h = hashlib.sha256(b"r%d" % seq).digest()
    return (h * (n // 32 + 1))[:n]


def chain_for(seq):
    return hashlib.sha256(b"c%d" % seq).digest()[:16]


def fail(msg):
    if len(fails) < 20:
        fails.append(msg)


def load_state():
    try:
        with open(D + "/state.json") as f:
            return json.load(f)
    except OSError:
        return None


st = load_state()
fresh = st is None
if fresh:
    st = {"next": 1, "live": [], "acked": 0, "ack_try": 0, "inflight": 0, "last": 0}
else:
    stats["fresh_vm"] = 1


def boot():
    """Mount and recover; a cut armed in flash.cut may strike during it (then boot again)."""
    while True:
        try:
            vfs.umount(flash.MOUNT)
        except Exception:
            pass
        try:
            p = flash.mount(BOARD)
        except flash.FlashError as e:
            fail("mount failed: %s" % e)
            raise
        try:
            return journal.Journal(p + "/j", CAP)
        except simflash.PowerLoss:
            stats["recovery_cuts"] += 1
            stats["cuts"] += 1


def verify(j):
    live = st["live"]
    lo = max(st["acked"], st["ack_try"])
    got = []
    prev = 0
    for s, d in j.pending():
        if s <= prev:
            fail("order: %d after %d" % (s, prev))
        prev = s
        if d != data_for(s):
            fail("record %d surfaced with wrong bytes" % s)
        if s not in live and s != st["inflight"]:
            fail("record %d surfaced but never committed (or acked and done)" % s)
        got.append(s)
    gs = set(got)
    for s in live:
        if s > lo and s not in gs:
            fail("committed record %d lost" % s)
    if j.depth() != len(got):
        fail("depth %d != %d pending" % (j.depth(), len(got)))
    if j.bad:
        fail("%d corrupt records found" % j.bad)
    if not (st["acked"] <= j.acked <= max(st["acked"], st["ack_try"])):
        fail("acked %d outside [%d, %d]" % (j.acked, st["acked"], st["ack_try"]))
    if j.last_seq < st["last"] or (j.last_seq != st["last"] and j.last_seq != st["inflight"]):
        fail("last_seq %d, expected %d (inflight %d)" % (j.last_seq, st["last"], st["inflight"]))
    if j.last_seq and j.last_hash != chain_for(j.last_seq):
        fail("last_hash wrong for %d" % j.last_seq)
    st["live"] = got
    st["acked"] = j.acked
    st["ack_try"] = st["inflight"] = 0
    st["last"] = j.last_seq
    st["next"] = max(st["next"], j.last_seq + 1)


def step(j):
    r = random.random()
    live = st["live"]
    if r < 0.65:
        s = st["next"]
        st["next"] = s + (1 if random.random() < 0.8 else random.randint(2, 5))  # gaps are allowed
        money = random.random() < 0.85
        st["inflight"] = s
        try:
            ok = j.append(s, data_for(s), chain_for(s), money)
        except journal.JournalFull:
            ok = False
        if ok:
            live.append(s)
            st["last"] = s
            stats["appends"] += 1
            if j.last_hash != chain_for(s):
                fail("last_hash after append %d" % s)
        else:
            stats["full"] += 1
            st["inflight"] = 0
            if live:
                r = 0.8  # forwarding catches up: ack half
        st["inflight"] = 0
    if 0.65 <= r < 0.9 and live:
        upto = live[random.randint(0, len(live) - 1) // (1 if r >= 0.8 else 2)]
        st["ack_try"] = upto
        j.ack(upto)
        st["acked"] = max(st["acked"], min(upto, j.last_seq))
        st["live"] = [s for s in live if s > st["acked"]]
        st["ack_try"] = 0
        stats["acks"] += 1
    elif r >= 0.9:
        want = [s for s in live if s > st["acked"]][:5]
        got = [s for s, d in j.pending(5) if d == data_for(s)]
        if got != want:
            fail("pending %r != %r" % (got, want))


def arm_now():
    t = random.random()
    tear = None if t < 0.4 else random.randint(1, 64) if t < 0.7 else random.randint(1, 512) if t < 0.9 \
        else random.randint(1, 4095)
    flash.dev.tear = tear
    flash.dev.cut_at = flash.dev.ops + random.randint(1, 48)
    return tear



def random_sweep():
    global j
    j = boot()
    if not fresh:
        verify(j)
    ncut = cfg["cuts"]
    done = 0
    while done < ncut:
        tear = arm_now()
        try:
            for _ in range(400):  # until the cut strikes (400 steps is far more than 48 ops)
                step(j)
            fail("cut never struck")
            flash.dev.cut_at = None
        except simflash.PowerLoss:
            pass
        done += 1
        stats["cuts"] += 1
        if tear is not None:
            stats["torn"] += 1
        if done == ncut:
            break  # leave this cut for the next VM process to recover
        if random.random() < 0.25:  # a pair: power fails again while recovering from this cut
            with open(D + "/flash.cut", "w") as f:
                f.write("%d %d" % (random.randint(1, 4), random.randint(0, 300)))
        j = boot()
        verify(j)  # the workload then goes on writing to the recovered fs


def every_sweep():
    """Cut a fixed workload at every program/erase op in [first, last), clean and torn alike."""
    global st
    import os
    for n in range(cfg["first"], cfg["last"]):
        for name in ("flash.bin", "flash.cut"):
            try:
                os.remove(D + "/" + name)
            except OSError:
                pass
        st = {"next": 1, "live": [], "acked": 0, "ack_try": 0, "inflight": 0, "last": 0}
        j = boot()
        random.seed(cfg["seed"])
        for _ in range(cfg.get("warm", 0)):  # reach a state worth cutting (segments, acks, backlog)
            step(j)
        flash.dev.cut_at = flash.dev.ops + n
        flash.dev.tear = (None, 1, 7, 100, 3000)[n % 5]
        try:
            for _ in range(cfg["steps"]):
                step(j)
            stats["beyond"] = n  # the workload ended before op n: the sweep is complete
            break
        except simflash.PowerLoss:
            stats["cuts"] += 1
            stats["torn"] += flash.dev.tear is not None
        if n % 3 == 0:  # and again while recovering
            with open(D + "/flash.cut", "w") as f:
                f.write("%d %d" % (n // 3 % 4 + 1, n % 200))
        j = boot()
        verify(j)
        flash.dev.cut_at = None  # a recovery cut that did not strike during recovery
        # then it must take writes and keep them
        s = st["next"]
        st["inflight"] = s
        if j.append(s, data_for(s), chain_for(s)):
            st["live"].append(s)
            st["last"] = s
        st["inflight"] = 0
        verify(boot())


if cfg.get("mode") == "every":
    every_sweep()
else:
    random_sweep()
with open(D + "/state.json", "w") as f:
    json.dump(st, f)
print(json.dumps({"fails": fails, "stats": stats, "live": len(st["live"]), "last": st["last"]}))
