# Release verification cases (firmware/ed25519.py, release.py), one JSON object a line on stdin;
# prints one line each:
#   {"op": "ed", "pub", "sig", "msg"}                          -> {"ok": bool}
#   {"op": "sha512", "msg"}                                    -> {"hex"} (the pure-Python fallback)
#   {"op": "manifest", "raw", "trusted": {kid: pub}, "revoked": [kid], "device"?: {board, kind,
#    seq, slot, journal, now, version}}                         -> {"fields": {...}} or {"error"}
#   {"op": "keylist", "raw", "version", "trusted": {kid: pub}, "revoked": [kid]}
#                                                               -> {"v", "keys": {kid: pub}, "revoked"} or {"error"}
#   {"op": "archive", "file", "size", "sha256", "buf"}         -> {"files": [[path, size, sha256]]}
#   {"op": "payload", "file", "size", "sha256"}                -> {"ok": true} or {"error"}
# all bytes as hex; a ReleaseError is {"error": code}, anything else {"exc": text}.
import binascii
import hashlib
import json

import ed25519
import sha512
from jform import cases

u = binascii.unhexlify


def h(b):
    return binascii.hexlify(b).decode()


class _M:
    def __init__(self, c):
        self.size = c["size"]
        self.sha256 = u(c["sha256"])


def run(c):
    op = c["op"]
    if op == "ed":
        return {"ok": ed25519.verify(u(c["pub"]), u(c["sig"]), u(c["msg"]))}
    if op == "sha512":
        return {"hex": h(sha512.sha512(u(c["msg"])).digest())}
    import release  # the release cases only

    if op == "manifest":
        trusted = {}
        for k in c["trusted"]:
            trusted[u(k)] = u(c["trusted"][k])
        revoked = [u(k) for k in c.get("revoked", ())]
        m = release.open_manifest(u(c["raw"]), trusted, revoked)
        d = c.get("device")
        if d is not None:
            m.check(d["board"], d["kind"], d["seq"], d["slot"], d["journal"], d.get("now"), d.get("version"))
        return {"fields": {"board": m.board, "kind": m.kind, "version": m.version, "seq": m.seq,
                           "size": m.size, "sha256": h(m.sha256), "chunk": m.chunk, "journal": m.journal,
                           "format": m.format, "window": list(m.window) if m.window else None,
                           "from_version": m.from_version, "allow_lower": m.allow_lower}}
    if op == "keylist":
        trusted = {}
        for k in c["trusted"]:
            trusted[u(k)] = u(c["trusted"][k])
        v, keys, rev = release.open_keys(u(c["raw"]), c["version"], trusted, [u(k) for k in c.get("revoked", ())])
        return {"v": v, "keys": {h(k): h(keys[k]) for k in keys}, "revoked": [h(k) for k in rev]}
    if op == "archive":
        buf = bytearray(c.get("buf", 100))
        out = []
        with open(c["file"], "rb") as f:
            a = release.Archive(f, _M(c))
            while a.next():
                d = hashlib.sha256()
                n = 0
                while True:
                    k = a.readinto(buf)
                    if not k:
                        break
                    d.update(memoryview(buf)[:k])
                    n += k
                out.append([a.path, n, h(d.digest())])
        return {"files": out}
    if op == "payload":
        with open(c["file"], "rb") as f:
            release.check_payload(f, _M(c), bytearray(128))
        return {"ok": True}
    return {"exc": "unknown op " + op}


for c in cases():
    try:
        r = run(c)
    except Exception as e:
        code = getattr(e, "code", None)  # release.ReleaseError
        r = {"error": code} if type(code) is str else {"exc": "%s: %s" % (type(e).__name__, e)}
    r["id"] = c.get("id")
    c = None
    print(json.dumps(r))
