# Device certificate renewal (SPEC §12). The cloud makes the new key pair (this MicroPython has no
# EC key generation) and sends the certificate with the private scalar wrapped under the device key
# (RFC 3394, rekey.unwrap). The pair is written beside the current one as files c<n>.der, k<n>.der,
# tried at once (a reconnect with it), and made current by one power-safe write of `cert` ({"n": n})
# only once the broker took it; else the current pair comes back. A cut anywhere leaves a pair that
# matches: at boot a pair `cert` does not name is removed. Imported only on a board with a
# certificate (mutual TLS), at boot and for a set_cert.
import asyncio
import os

import store
from commands import CommandError

# PKCS#8 around a P-256 ECPrivateKey that holds the scalar only (no public key: mbedtls derives it)
_P8 = b"0A\x02\x01\x000\x13\x06\x07*\x86H\xce=\x02\x01\x06\x08*\x86H\xce=\x03\x01\x07\x04'0%\x02\x01\x01\x04 "
_busy = False


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


def boot(b):
    """The pair `cert` names is the device's (config.json's until a renewal); a next pair whose
    trial never ended and an old one a cut left behind are removed."""
    n = _n()
    _rm(_names(n + 1))
    if n:
        _rm(_names(n - 1) if n > 1 else (b["cert"], b["certkey"]))
        b["cert"], b["certkey"] = _names(n)


def stage(a, args):
    """The set_cert command: {1: certificate DER <= 512 B, 2: the wrapped scalar (40 B)}."""
    global _busy
    c, w = args.get(1), args.get(2)
    if type(c) is not bytes or not 0 < len(c) <= 512 or c[0] != 0x30 or type(w) is not bytes or len(w) != 40:
        raise CommandError("bad_args", "cert")
    if _busy:
        raise CommandError("busy")
    from hashlib import sha256
    from rekey import unwrap  # not at boot: only for a renewal
    k = unwrap(bytes(x ^ 0x36 for x in a.signer.hkey._ip[:32]), w)  # the key, from its HMAC pads
    if k is None:
        raise CommandError("bad_args", "unwrap")
    n = _n() + 1
    for name, data in zip(_names(n), (c, _P8 + k)):
        with open(name + ".tmp", "wb") as f:
            f.write(data)
        os.rename(name + ".tmp", name)
    _busy = True
    h = sha256(c).digest()[:8]  # names this certificate in the event that ends its trial
    return {"st": "staged"}, lambda: asyncio.create_task(_trial(a, n, h))


async def _trial(a, n, h, tries=3):
    # the next pair on a new connection; `tries` failed connects (refused, or the network) end it
    global _busy
    m = a.mqtt
    cfg = m.cfg
    old = cfg["cert"], cfg["certkey"]
    fails = []
    prev = m._on_error

    def err(where, e):
        if where == "connect":
            fails.append(repr(e)[:40])
        prev(where, e)

    m.on_error(err)
    c0 = m.stats["connects"]
    cfg["cert"], cfg["certkey"] = _names(n)
    m.redial()
    while m.stats["connects"] == c0 and len(fails) < tries:
        await asyncio.sleep_ms(50)
    m.on_error(prev)
    if m.stats["connects"] != c0:
        store.write("cert", {"n": n})  # the one switch: before it the old pair, after it the new
        _rm(old)
        code, d = "cert_current", {"n": n, "h": h}
    else:
        cfg["cert"], cfg["certkey"] = old
        m.redial()
        _rm(_names(n))
        code, d = "cert_refused", {"h": h, "why": fails[0]}
    _busy = False
    asyncio.create_task(a.send(4, {10: code, 11: d}))
    import sys
    for m in ("certs", "rekey"):  # RAM back (~1.5 KB): imported again for the next renewal
        sys.modules.pop(m, None)
