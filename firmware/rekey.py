# Device key rotation (SPEC §11). The next key arrives wrapped under the current one (RFC 3394 AES
# key wrap, on cryptolib's ECB), waits on flash ("keynext") beside it, and becomes current ("key")
# at the first downlink that verifies under it: the cloud's confirmation. Imported only while a
# rotation is in hand (a rekey command, or a key file found at boot).
import os
from binascii import hexlify, unhexlify

import cryptolib
import store
from hmac256 import HmacKey


def _kid(dev, v):
    return (dev + ":" + str(v)).encode()


def version(kid):
    return int(kid[kid.rfind(b":") + 1:])


def unwrap(kek, w):
    """RFC 3394 §2.2.2 unwrap of `w` under `kek` -> the key, or None if its integrity check fails."""
    n = len(w) // 8 - 1
    if len(w) % 8 or n < 2:
        return None
    aes = cryptolib.aes(kek, 1)  # ECB: the bare block function
    a = bytearray(w[:8])
    r = bytearray(w[8:])
    b = bytearray(16)
    for j in range(5, -1, -1):
        for i in range(n, 0, -1):
            t = n * j + i
            for k in range(8):
                b[k] = a[k] ^ ((t >> (56 - 8 * k)) & 255)
            b[8:] = r[8 * i - 8:8 * i]
            o = aes.decrypt(b)
            a[:] = o[:8]
            r[8 * i - 8:8 * i] = o[8:]
    return bytes(r) if a == b"\xa6" * 8 else None


def proof(key, kid):
    return HmacKey(key).mac(b"edgepay-rekey:", kid)[:16]


def offer(signer, args):
    """The rekey command: unwrap, store the next key, prove it. -> result data, or a refusal
    reason (str) for a bad_args answer."""
    v, w = args.get(1), args.get(2)
    if type(v) is not int or v != version(signer.kid) + 1 or type(w) is not bytes or len(w) != 40:
        return "rekey"
    # the current key is in its HMAC pads only: ipad = key ^ 0x36
    key = unwrap(bytes(x ^ 0x36 for x in signer.hkey._ip[:32]), w)
    if key is None:
        return "unwrap"
    k = hexlify(key).decode()
    store.write("keynext", {"v": v, "k": k})  # on flash before the proof leaves
    kid = _kid(signer.device, v)
    signer.nxt = (HmacKey(key), kid, k)
    return {"kv": v, "proof": proof(key, kid)}


def switch(signer):
    """A downlink verified under the next key: it is current from here on, on flash first."""
    hk, kid, k = signer.nxt
    store.write("key", {"v": version(kid), "k": k})
    _drop()
    signer.hkey, signer.kid, signer.nxt = hk, kid, None


def boot(signer):
    """At boot: a key made current by a rotation wins over config.json's; a next key still
    waiting is loaded, one no longer above the current version removed."""
    dev = signer.device
    c = store.read("key")
    if c and c["v"] > version(signer.kid):
        signer.hkey, signer.kid = HmacKey(unhexlify(c["k"])), _kid(dev, c["v"])
    n = store.read("keynext")
    if n:
        if n["v"] > version(signer.kid):
            signer.nxt = (HmacKey(unhexlify(n["k"])), _kid(dev, n["v"]), n["k"])
        else:
            _drop()


def _drop():
    try:
        os.remove(store.ROOT + "keynext")
    except OSError:
        pass
