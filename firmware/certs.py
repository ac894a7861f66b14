# The broker link's credentials, changed over the air (SPEC §12): the device's certificate
# (set_cert) and the broker's CA (set_ca). Imported only for those commands, and at boot on a
# board with a certificate (mutual TLS); it leaves RAM when a trial ends.
#
# A certificate: the cloud makes the new key pair (this MicroPython has no EC key generation) and
# sends the certificate with the private scalar wrapped under the device key (RFC 3394,
# rekey.unwrap). The pair is written beside the current one as files c<n>.der, k<n>.der, tried at
# once (a reconnect with it), and made current by one power-safe write of `cert` ({"n": n}) only
# once the broker took it; else the current pair comes back. A cut anywhere leaves a pair that
# matches: at boot a pair `cert` does not name is removed.
# A CA: written as ca<n>.der beside the current one (trusted with it from the next connect); with
# 2: true tried alone on a new connection and made the only one by the write of `ca` (n) once the
# broker took it, the retired file removed after it (a cut between: the agent removes it at boot).
import asyncio
import os

import store
from commands import CommandError

# PKCS#8 around a P-256 ECPrivateKey that holds the scalar only (no public key: mbedtls derives it)
_P8 = b"0A\x02\x01\x000\x13\x06\x07*\x86H\xce=\x02\x01\x06\x08*\x86H\xce=\x03\x01\x07\x04'0%\x02\x01\x01\x04 "
_busy = False  # a trial (a certificate's or a CA's) owns the next connection: one at a time


def _names(n):
    return store.ROOT + "c%d.der" % n, store.ROOT + "k%d.der" % n


def _rm(names):
    for f in names:
        try:
            os.remove(f)
        except OSError:
            pass


def _n():
    p = store.read("cert")
    return p["n"] if p else 0


def _put(name, data):  # power-safe: a temporary file renamed into place
    with open(name + ".tmp", "wb") as f:
        f.write(data)
    os.rename(name + ".tmp", name)


def boot(b):
    """The pair `cert` names is the device's (config.json's until a renewal); a next pair whose
    trial never ended and an old one a cut left behind are removed."""
    n = _n()
    _rm(_names(n + 1))
    if n:
        _rm(_names(n - 1) if n > 1 else (b["cert"], b["certkey"]))
        b["cert"], b["certkey"] = _names(n)


def _der(c):  # a certificate as the commands carry it: a DER SEQUENCE of 1-512 bytes
    return type(c) is bytes and 0 < len(c) <= 512 and c[0] == 0x30


def _go(a, new, name, n, c):
    # the answer, and once it is acknowledged the trial; -> what the command returns
    global _busy
    _busy = True
    from hashlib import sha256
    h = sha256(c).digest()[:8]  # names the certificate or CA in the event that ends its trial
    return lambda: asyncio.create_task(_trial(a, new, name, n, h))


def stage(a, args):
    """The set_cert command: {1: certificate DER <= 512 B, 2: the wrapped scalar (40 B)}."""
    c, w = args.get(1), args.get(2)
    if not _der(c) or type(w) is not bytes or len(w) != 40:
        raise CommandError("bad_args", "cert")
    if _busy:
        raise CommandError("busy")
    from rekey import unwrap  # not at boot: only for a renewal
    k = unwrap(bytes(x ^ 0x36 for x in a.signer.hkey._ip[:32]), w)  # the key, from its HMAC pads
    if k is None:
        raise CommandError("bad_args", "unwrap")
    n = _n() + 1
    new = dict(zip(("cert", "certkey"), _names(n)))
    _put(new["cert"], c)
    _put(new["certkey"], _P8 + k)
    return {"st": "staged"}, _go(a, new, "cert", n, c)


def set_ca(a, args):
    """The set_ca command: {1: CA DER <= 512 B, 2: retire the others}. The CA is ca<n>.der (n = `ca`
    + 1), trusted beside the current one; with 2: true the only one, on trial."""
    c = args.get(1)
    if not _der(c):
        raise CommandError("bad_args", "ca")
    if _busy:
        raise CommandError("busy")
    n = store.read("ca", 0) + 1
    f = store.ROOT + "ca%d.der" % n
    _put(f, c)
    m = a.mqtt
    if not args.get(2):
        m._ssl_ctx = None  # both from the next connect
        _free()
        return {"ca": n}
    return {"ca": n, "st": "trial"}, _go(a, {"ca": f, "ca2": store.ROOT + "ca%d.der" % (n + 1)}, "ca", n, c)


async def _trial(a, new, name, n, h, tries=3):
    # the broker settings `new` on a new connection; `tries` failed connects (refused, or the
    # network) end it. Taken: the one switch (store `name`), then the files no longer named go.
    # Refused: the old settings again, the new files no longer named go (a CA stays beside).
    global _busy
    m = a.mqtt
    cfg = m.cfg
    old = {k: cfg[k] for k in new}
    fails = []
    prev = m._on_error

    def err(where, e):
        if where == "connect":
            fails.append(repr(e)[:40])
        prev(where, e)

    m.on_error(err)
    c0 = m.stats["connects"]
    cfg.update(new)
    m.redial()
    while m.stats["connects"] == c0 and len(fails) < tries:
        await asyncio.sleep_ms(50)
    m.on_error(prev)
    d = {"h": h}
    if m.stats["connects"] != c0:
        store.write(name, {"n": n} if name == "cert" else n)  # before it the old, after it the new
        keep, gone, code, d["n"] = new, old, "_current", n
    else:
        cfg.update(old)
        m.redial()
        keep, gone, code, d["why"] = old, new, "_refused", fails[0]
    _rm(v for v in gone.values() if v not in keep.values())  # file names only: no bytes compared
    _busy = False
    asyncio.create_task(a.send(4, {10: name + code, 11: d}))
    _free()


def _free():
    import sys
    for m in ("certs", "rekey"):  # RAM back (~1.5 KB): imported again for the next change
        sys.modules.pop(m, None)
