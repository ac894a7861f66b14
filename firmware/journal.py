# Append-only journal of signed money records on littlefs (SPEC §6): a record is durable before the
# device acts on it, and is forgotten only once the cloud acknowledges it.
#
# Layout, for flash wear. littlefs cannot append in place to a synced file: the next write after a
# sync copies the file's last block to a freshly erased one (littlefs issues #564, #581, #905), so a
# log file costs ~1 erase per record. Its metadata logs DO append in place, and a small file lives
# inline in its directory's log. So each record is its own small file, written once, inside a
# "segment" directory sized so its whole life (creates, data, deletes) fits one 4 KiB metadata block:
# the only erase is the segment's mkdir, shared by ~12 records, and nothing is ever compacted.
#   <path>/m          marker: acked seq and the chain head as of the last ack (atomic overwrite)
#   <path>/<s>/<k>    record k of segment s (hex): header(seq u64, len u16, flags u8) + chain_hash(16)
#                     + data + crc32; records are in seq order along (s, k)
# Recovery trusts littlefs's atomic commits: a cut leaves the last file empty or whole. The CRC
# catches anything else; a bad file is dropped only at the head (a torn tail), never surfaced.
import os
import struct
from binascii import crc32

_HDR = "<QHB"      # seq, data length, flags
_HL = 11 + 16      # header + chain hash
_MONEY = 1
_MARK = "<QQ16sI"  # acked, last_seq, last_hash, crc32 of the rest
MAX_DATA = 2048
_ENOSPC = 28


class JournalFull(Exception):
    pass


class JournalError(Exception):
    """Damage power loss cannot explain (a bad marker): raise an alarm, do not guess."""


def _hexes(path, dirs):
    # (min, max, count) of the hex names in path that are dirs (or files); no list kept
    lo = hi = -1
    n = 0
    for e in os.ilistdir(path):
        if (e[1] == 0x4000) != dirs:
            continue
        try:
            v = int(e[0], 16)
        except ValueError:
            continue
        n += 1
        if lo < 0 or v < lo:
            lo = v
        if v > hi:
            hi = v
    return lo, hi, n


class Journal:
    def __init__(self, path, capacity_bytes, reserve=None, seg_budget=3800, prog=16):
        """capacity_bytes: record bytes kept at most; the last `reserve` (default 1/4) is for money only.
        Inline data costs littlefs ~4x its size in flash (a segment holds ~2.4 KB in a 2-block pair),
        so size the partition at >= 4x capacity_bytes; if littlefs fills first, append still says full.

        seg_budget: metadata-log bytes a segment may take (of a 4096-byte block: the rest is its
        header and slack); prog: the fs program size (commit padding): hal.flash.progsize.
        """
        self.path = path
        self.cap = capacity_bytes
        self.reserve = capacity_bytes // 4 if reserve is None else reserve
        self.budget = seg_budget
        self.prog = prog
        self._h = bytearray(_HL)
        self.bad = 0  # records that failed their check when read (never surfaced)
        self._recover()

    # -- names
    def _seg(self, s):
        return "%s/%x" % (self.path, s)

    def _rec(self, s, k):
        return "%s/%x/%x" % (self.path, s, k)

    # -- reading
    def _load(self, name, hdr_only=False):
        """(seq, flags, size, data, chain) of a record file, or None if missing, torn or corrupt."""
        try:
            f = open(name, "rb")
        except OSError:
            return None
        with f:
            h = self._h
            if f.readinto(h) != _HL:
                return None
            seq, n, fl = struct.unpack_from(_HDR, h)
            if hdr_only:
                return seq, fl, _HL + n + 4, None, None
            data = f.read(n)
            c = f.read(4)
        if len(data) != n or len(c) != 4 or struct.unpack("<I", c)[0] != crc32(data, crc32(h)):
            return None
        return seq, fl, _HL + n + 4, data, bytes(h[11:])

    def _next_k(self, s, k, below=False):
        # smallest record index >= k present in segment s (below: the largest < k), or -1
        best = -1
        try:
            for e in os.ilistdir(self._seg(s)):
                try:
                    v = int(e[0], 16)
                except ValueError:
                    continue
                if (best < v < k) if below else (v >= k and (best < 0 or v < best)):
                    best = v
        except OSError:
            pass
        return best

    # -- recovery
    def _recover(self):
        try:
            os.mkdir(self.path)
        except OSError:
            pass  # exists
        self.acked = self.last_seq = 0
        self.last_hash = bytes(16)
        try:
            with open(self.path + "/m", "rb") as f:
                m = f.read()
        except OSError:
            m = None
        if m:  # empty: a cut between creating the first marker and writing it (a rewrite is atomic)
            if len(m) != 40 or struct.unpack_from("<I", m, 36)[0] != crc32(memoryview(m)[:36]):
                raise JournalError("journal marker corrupt")
            self.acked, self.last_seq, self.last_hash, _ = struct.unpack(_MARK, m)
        lo, hi, _ = _hexes(self.path, True)
        # the head: the last whole record; anything torn above it never committed
        head = None
        s = hi
        while s >= 0 and s >= lo and head is None:
            try:
                _, khi, _ = _hexes(self._seg(s), False)
            except OSError:
                khi = -1
            while khi >= 0 and head is None:
                name = self._rec(s, khi)
                head = self._load(name)
                if head is None:
                    if os.stat(name)[6]:
                        self.bad += 1  # littlefs leaves a torn file empty: this is damage
                    os.remove(name)  # the torn tail: never committed
                    khi = self._next_k(s, khi, True)
            if head is None:
                try:
                    os.rmdir(self._seg(s))  # empty segment at the top
                except OSError:
                    pass
                s -= 1
        if head is not None and head[0] > self.last_seq:
            self.last_seq, self.last_hash = head[0], head[4]
        # count what is left, then finish any interrupted ack
        self.n = self.used = 0
        self.ts, self.tk = max(lo, 0), 0
        if lo >= 0:
            for s in range(lo, hi + 1):
                c = self.n
                try:
                    for e in os.ilistdir(self._seg(s)):
                        self.n += 1
                        self.used += e[3]
                    if c == self.n:
                        os.rmdir(self._seg(s))  # emptied by an ack cut short
                except OSError:
                    pass
        self.hs, self.hk, self.fill = hi + 1, 0, -1  # next append opens a new segment
        self._drop_acked()

    # -- writing
    def _roll(self):
        s = self.hs + (1 if self.fill >= 0 else 0)
        os.mkdir(self._seg(s))
        self.hs, self.hk, self.fill = s, 0, 64

    def append(self, seq, data, chain_hash, money=True):
        """Store one signed record; True once it is durable. For telemetry pass the unchanged chain
        head as chain_hash. Full: telemetry is refused (False), money raises JournalFull."""
        if seq <= self.last_seq:
            raise ValueError("seq not above the journal's last")
        n = len(data)
        if n > MAX_DATA or len(chain_hash) != 16:
            raise ValueError("record too large or bad chain hash")
        size = _HL + n + 4
        if self.used + size > self.cap - (0 if money else self.reserve):
            if money:
                raise JournalFull("journal full")
            return False
        # log bytes this record takes in its segment: create + data commits, later its delete
        p = self.prog
        cost = (size + 24 + p - 1) // p * p + 2 * ((24 + p - 1) // p * p)
        name = None
        try:
            if self.fill < 0 or self.fill + cost > self.budget or self.hk > 200:
                self._roll()
            name = self._rec(self.hs, self.hk)
            h = self._h
            struct.pack_into(_HDR, h, 0, seq, n, _MONEY if money else 0)
            h[11:] = chain_hash
            with open(name, "wb") as f:
                f.write(h)
                f.write(data)
                f.write(struct.pack("<I", crc32(data, crc32(h))))
        except OSError as e:
            if name:
                try:
                    os.remove(name)
                except OSError:
                    pass
            if e.errno != _ENOSPC:
                raise
            if money:
                raise JournalFull("flash full")
            return False
        self.hk += 1
        self.fill += cost
        self.n += 1
        self.used += size
        self.last_seq = seq
        self.last_hash = bytes(chain_hash)
        return True

    # -- reading pending records
    def pending(self, limit=None):
        """Yield (seq, data) of unacknowledged records in seq order, one read at a time."""
        s, k, got = self.ts, self.tk, 0
        while (limit is None or got < limit) and (s < self.hs or (s == self.hs and k < self.hk)):
            if s < self.ts or (s == self.ts and k < self.tk):  # acked meanwhile
                s, k = self.ts, self.tk
                continue
            r = self._load(self._rec(s, k))
            if r is None:
                nk = self._next_k(s, k + 1)
                if nk < 0:
                    s, k = s + 1, 0
                    continue
                if self._load(self._rec(s, k), True) is not None:
                    self.bad += 1  # present but failing its check: skip it, never surface it
                k = nk
                continue
            k += 1
            if r[0] > self.acked:
                got += 1
                yield r[0], r[3]

    def depth(self):
        return self.n

    # -- acknowledgement
    def ack(self, upto):
        """Forget records with seq <= upto (clamped to the journal's last seq). Returns how many."""
        if upto > self.last_seq:
            upto = self.last_seq
        if upto <= self.acked:
            return 0
        m = bytearray(40)
        struct.pack_into(_MARK, m, 0, upto, self.last_seq, self.last_hash, 0)
        struct.pack_into("<I", m, 36, crc32(memoryview(m)[:36]))
        with open(self.path + "/m", "wb") as f:  # littlefs replaces a file atomically at close
            f.write(m)
        self.acked = upto
        return self._drop_acked()

    def _drop_acked(self):
        # delete from the tail while acknowledged; an emptied segment behind the head goes too
        gone = 0
        while self.n > 0:
            name = self._rec(self.ts, self.tk)
            r = self._load(name, True)
            if r is None:
                nk = self._next_k(self.ts, self.tk)
                if nk >= 0 and nk != self.tk:
                    self.tk = nk
                    continue
                if nk < 0:
                    if self.ts >= self.hs:
                        self.n = 0  # counted more than exist: nothing is left to drop
                        break
                    try:
                        os.rmdir(self._seg(self.ts))
                    except OSError:
                        pass
                    self.ts, self.tk = self.ts + 1, 0
                    continue
                # present but unreadable header: a corrupt record; skip it
                r = (0, 0, os.stat(name)[6])
            elif r[0] > self.acked:
                break
            os.remove(name)
            self.n -= 1
            self.used -= r[2]
            self.tk += 1
            gone += 1
        return gone
