# Firmware release manifests and payloads on the device (protocol/SPEC.md §10): everything a
# device checks before it writes a byte of an update, and the EPB1 archive walked one header at a
# time. Standalone: the updater imports it (and so ed25519, sha512) only when an update arrives.
#
#     m = open_manifest(raw, trusted, revoked)      # shape, alg, key, signature, fields
#     m.check("sim-gate", "gate", installed_seq, slot_bytes, journal, now, installed_version)
#     a = Archive(f, m)                              # then: while a.next(): a.readinto(buf) ...
#
# Every refusal is a ReleaseError whose .code is the SPEC §10 reason (the `failed` reason of the
# update events): bad_manifest, bad_alg, revoked_key, unknown_key, bad_signature, wrong_class,
# downgrade, too_large, journal_format, outside_window, from_version, digest_mismatch, bad_archive.
# The reason is all it carries (no detail: every string here is code in each board's bundle, the
# result reports the reason alone, and the cloud knows the manifest it offered).
import hashlib
from binascii import hexlify, unhexlify

import cbor
import ed25519
import store
from cbor import CodecError

MAX_MANIFEST = 512  # bytes of the whole Sign1
MAX_PAYLOAD = 4 * 1024 * 1024
ALG_EDDSA = -8
SIGN1_TAG = 18
_SIG1 = b"\x84\x6aSignature1"  # array(4), tstr "Signature1": the Sig_structure's first two heads
_EMPTY_BSTR = b"\x40"  # external_aad: a manifest is bound to no topic
_REQUIRED = (1, 2, 3, 4, 5, 6, 7, 8, 9)
_OPTIONAL = (10, 11, 12)
FORMATS = ("bundle", "image")


class ReleaseError(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.code = code


def _text(v):
    if type(v) is not str or not 0 < len(v.encode()) <= 32:
        raise ReleaseError("bad_manifest")
    return v


def _uint(v, lo, hi):
    if type(v) is not int or not lo <= v <= hi:
        raise ReleaseError("bad_manifest")
    return v


class Manifest:
    # The payload map's fields (SPEC §10), validated as the host's Manifest.validate does.
    def __init__(self, p):
        if type(p) is not dict:
            raise ReleaseError("bad_manifest")
        for k in p:
            if type(k) is not int or (k not in _REQUIRED and k not in _OPTIONAL):
                raise ReleaseError("bad_manifest")
        for k in _REQUIRED:
            if k not in p:
                raise ReleaseError("bad_manifest")
        w = p.get(10)
        if w is not None and type(w) is not list:
            raise ReleaseError("bad_manifest")
        if 12 in p and p[12] is not True:
            raise ReleaseError("bad_manifest")
        self.board = _text(p[1])
        self.kind = _text(p[2])
        self.version = _text(p[3])
        self.seq = _uint(p[4], 1, 0xFFFFFFFF)
        self.size = _uint(p[5], 1, MAX_PAYLOAD)
        h = p[6]
        if type(h) is not bytes or len(h) != 32:
            raise ReleaseError("bad_manifest")
        self.sha256 = h
        self.chunk = _uint(p[7], 256, 1536)
        self.journal = _uint(p[8], 1, 255)
        if p[9] not in FORMATS:
            raise ReleaseError("bad_manifest")
        self.format = p[9]
        if w is not None:
            if len(w) != 2 or type(w[0]) is not int or type(w[1]) is not int \
                    or not 0 <= w[0] < w[1] < 1 << 40:
                raise ReleaseError("bad_manifest")
            w = (w[0], w[1])
        self.window = w
        f = p.get(11)
        self.from_version = None if f is None else _text(f)
        self.allow_lower = 12 in p

    def check(self, board, kind, installed_seq, slot_bytes, journal, now=None, installed_version=None):
        """The device's own checks, in SPEC §10 order; ReleaseError otherwise. `now` is trusted
        Unix time or None (an untrusted clock is outside any window: wait for the next time
        exchange)."""
        if self.board != board or self.kind != kind:
            raise ReleaseError("wrong_class")
        if self.seq <= installed_seq and not self.allow_lower:
            raise ReleaseError("downgrade")
        if self.size > slot_bytes:
            raise ReleaseError("too_large")
        if self.journal != journal:
            raise ReleaseError("journal_format")
        w = self.window
        if w is not None and (now is None or not w[0] <= now < w[1]):
            raise ReleaseError("outside_window")
        f = self.from_version
        if f is not None and installed_version is not None and _older(installed_version, f):
            raise ReleaseError("from_version")


def _older(a, b):
    # version a < version b: dot- (or dash-) separated parts, numbers by value, other parts as
    # text (the host's _vkey); a number against text cannot be ordered, and is refused as older
    pa = a.replace("-", ".").split(".")
    pb = b.replace("-", ".").split(".")
    for i in range(min(len(pa), len(pb))):
        x = pa[i]
        y = pb[i]
        dx = x.isdigit()
        dy = y.isdigit()
        if dx and dy:
            x = int(x)
            y = int(y)
        elif dx or dy:
            return True
        if x != y:
            return x < y
    return len(pa) < len(pb)


def _open(raw, trusted, revoked, bad):
    # a Sign1 by a release key, checked in SPEC §10 order: size and CBOR, shape, alg, kid not
    # revoked and trusted, the Ed25519 signature; bad: the reason for a malformed one. -> (kid, payload)
    if len(raw) > MAX_MANIFEST:
        raise ReleaseError(bad)
    try:
        tag, body = cbor.decode(raw, True)
    except CodecError:
        raise ReleaseError(bad)
    if tag != SIGN1_TAG:
        raise ReleaseError(bad)
    if type(body) is not list or len(body) != 4 or type(body[0]) is not memoryview \
            or body[1] != {} or type(body[2]) is not memoryview or type(body[3]) is not memoryview:
        raise ReleaseError(bad)
    prot = body[0]
    payload = body[2]
    sig = body[3]
    body = None
    try:
        hdr = cbor.decode(prot)
    except CodecError:
        raise ReleaseError(bad)
    if type(hdr) is not dict or len(hdr) != 2 or 1 not in hdr or 4 not in hdr or type(hdr[4]) is not bytes:
        raise ReleaseError(bad)
    if hdr[1] != ALG_EDDSA:
        raise ReleaseError("bad_alg")
    kid = hdr[4]
    hdr = None
    # a revoked kid is revoked_key whether or not it is still listed as trusted (as the host)
    if kid in revoked:
        raise ReleaseError("revoked_key")
    pub = trusted.get(kid)
    if pub is None:
        raise ReleaseError("unknown_key")
    if len(sig) != 64:
        raise ReleaseError("bad_signature")
    # Sig_structure ["Signature1", protected, h'', payload], fed to the hash in parts
    if not ed25519.verify(pub, bytes(sig), (_SIG1, cbor.head(2, len(prot)), prot, _EMPTY_BSTR,
                                            cbor.head(2, len(payload)), payload)):
        raise ReleaseError("bad_signature")
    try:
        return kid, cbor.decode(payload)
    except CodecError:
        raise ReleaseError(bad)


def open_manifest(raw, trusted, revoked=()):
    """Check a manifest (bytes) in SPEC §10 order: size and CBOR, Sign1 shape, alg, kid not revoked
    and trusted (trusted: {kid: raw 32-byte public key}; revoked: kids), the Ed25519 signature,
    then the payload's fields. -> Manifest; ReleaseError with the first failure's reason."""
    return Manifest(_open(raw, trusted, revoked, "bad_manifest")[1])


def trust(cfg):
    """The release keys the device trusts now: the last key list it took (the "relkeys" file),
    else config.json's "ota" section ({"keys": {kid: pub}, "revoked": [kid]}, hex).
    -> (list version, {kid: pub}, [revoked kid])"""
    s = store.read("relkeys") or cfg.get("ota") or {}
    return (s.get("v", 0), {unhexlify(k): unhexlify(v) for k, v in (s.get("keys") or {}).items()},
            [unhexlify(k) for k in s.get("revoked") or ()])


def open_keys(raw, version, trusted, revoked):
    """A release key list (SPEC §10 "The release key list") against the device's trust now (its
    version, keys, revoked kids): -> the trust it leaves (version, {kid: pub}, [revoked kid]);
    ReleaseError otherwise (bad_list, stale_version, self_revoked, empty, or a key's reason)."""
    kid, p = _open(raw, trusted, revoked, "bad_list")
    keys = {}
    try:  # {1: "keys", 2: version, 3: [pub] 1..4, 4?: [kid] <= 16}, nothing else; anything off is bad_list
        v = p[2]
        rev = p.get(4, [])
        for pub in p[3]:  # raw public keys; each one's kid is the first 8 bytes of its SHA-256
            if type(pub) is not bytes or len(pub) != 32:
                raise ValueError
            keys[hashlib.sha256(pub).digest()[:8]] = pub
        # (a map, a text, bytes or an int where a list goes fails the element checks)
        ok = p[1] == "keys" and type(v) is int and 0 < v < 1 << 32 and 0 < len(keys) == len(p[3]) <= 4 \
            and len(rev) <= 16 and len(p) == 3 + (4 in p)
        for k in rev:
            ok = ok and type(k) is bytes and len(k) == 8
    except Exception:  # not a map, a field missing or of another type
        ok = False
    if not ok:
        raise ReleaseError("bad_list")
    if v <= version:
        raise ReleaseError("stale_version")
    if kid in rev:
        raise ReleaseError("self_revoked")
    for k in revoked:  # a revocation stands for good
        if k not in rev:
            rev.append(k)
    if len(rev) > 16:
        raise ReleaseError("bad_list")
    for k in rev:
        keys.pop(k, None)
    if not keys:
        raise ReleaseError("empty")
    return v, keys, rev


def set_keys(raw, cfg):
    """The `set_release_keys` command: a key list checked against the trust now, stored (one
    power-safe write) for the next manifest. -> {"v", "keys"}; ReleaseError, nothing changed."""
    v, keys, rev = open_keys(raw, *trust(cfg))
    h = hexlify
    store.write("relkeys", {"v": v, "keys": {h(k).decode(): h(keys[k]).decode() for k in keys},
                            "revoked": [h(k).decode() for k in rev]})
    return {"v": v, "keys": len(keys)}


def check_payload(f, m, buf):
    """The SHA-256 of the first m.size bytes of file object f (a staged slot) against the
    manifest, read through buf (a bytearray); ReleaseError digest_mismatch otherwise."""
    h = hashlib.sha256()
    left = m.size
    mv = memoryview(buf)
    while left:
        n = f.readinto(mv[:left] if left < len(mv) else mv)
        if not n:
            break
        h.update(mv[:n])
        left -= n
    if left or h.digest() != m.sha256:
        raise ReleaseError("digest_mismatch")


class Archive:
    """An EPB1 archive (SPEC §10: b"EPB1", then per file in path order a u8 path length, the UTF-8
    path, a u32 big-endian size, the bytes) walked from file object f, one header held at a time,
    every byte hashed. m gives the payload's size and sha256 (a Manifest):

        a = Archive(f, m)
        while a.next():                  # sets a.path, a.size; None after the last file
            n = a.readinto(buf)          # the current file's bytes, 0 at its end

    Files seen before next() returns None are unproven: next() checks the digest of the whole
    payload at the end (digest_mismatch). A malformed archive is digest_mismatch when its digest
    is wrong too (corruption), bad_archive when it is not (a signed but malformed payload). Bytes
    of f past m.size are never read (a slot is larger than its payload)."""

    def __init__(self, f, m):
        self._f = f
        self._want = m.sha256
        self._left = m.size  # payload bytes not read yet
        self._h = hashlib.sha256()
        self._hdr = bytearray(260)  # a header (u8 + 255-byte path + u32), or scratch to skip
        self._mv = memoryview(self._hdr)
        self._prev = None  # the last path, to hold the archive to strictly ascending order
        self._file = 0  # bytes of the current file not read yet
        self.path = None
        self.size = 0
        if self._exact(4) != 4 or self._hdr[:4] != b"EPB1":
            self._fail()

    def _read(self, mv):
        # one read into mv, never past the payload; hashed
        n = len(mv)
        if n > self._left:
            n = self._left
        if not n:
            return 0
        n = self._f.readinto(mv[:n] if n < len(mv) else mv) or 0
        self._h.update(mv[:n])
        self._left -= n
        return n

    def _exact(self, n):
        # n header bytes into _hdr[:n]; the count read (short at the end of f or of the payload)
        got = 0
        while got < n:
            k = self._read(self._mv[got:n])
            if not k:
                break
            got += k
        return got

    def _fail(self):
        # the rest of the payload still goes through the hash: a corrupt archive is digest_mismatch
        while self._read(self._mv):
            pass
        self.path = None
        if self._left or self._h.digest() != self._want:
            raise ReleaseError("digest_mismatch")
        raise ReleaseError("bad_archive")

    def next(self):
        """Advance to the next file (the unread rest of the current one is skipped, hashed);
        -> its path, or None after the last one, once the whole payload's digest matches."""
        while self._file:
            n = self._read(self._mv[:self._file] if self._file < 260 else self._mv)
            if not n:
                self._fail()
            self._file -= n
        if not self._left:
            self.path = None
            if self._h.digest() != self._want:
                raise ReleaseError("digest_mismatch")
            return None
        if not self._exact(1):
            self._fail()
        n = self._hdr[0]
        if not n:
            self._fail()
        if self._exact(n + 4) != n + 4:
            self._fail()
        hdr = self._hdr
        size = (hdr[n] << 24) | (hdr[n + 1] << 16) | (hdr[n + 2] << 8) | hdr[n + 3]
        raw = bytes(self._mv[:n])
        if self._prev is not None and raw <= self._prev:
            self._fail()
        if not cbor._utf8_strict(raw, 0, n):
            self._fail()
        path = raw.decode()
        if path[0] == "/" or "\\" in path or "\x00" in path:
            self._fail()
        for part in path.split("/"):
            if part == "" or part == "." or part == "..":
                self._fail()
        if size > self._left:
            self._fail()
        self._prev = raw
        self._file = size
        self.path = path
        self.size = size
        return path

    def readinto(self, buf):
        """Up to len(buf) bytes of the current file into buf; 0 at its end."""
        if not self._file:
            return 0
        mv = memoryview(buf)
        n = self._read(mv[:self._file] if self._file < len(mv) else mv)
        if not n:
            self._fail()
        self._file -= n
        return n
