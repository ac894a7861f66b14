# HMAC-SHA256 (RFC 2104) on the port's hashlib. The padded key blocks are made once per key:
# hashlib.sha256 has no copy(), so each MAC re-feeds one 64-byte block instead of re-deriving it.
import hashlib

_BLOCK = 64


class HmacKey:
    def __init__(self, key):
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        ip = bytearray(_BLOCK)
        op = bytearray(_BLOCK)
        for i in range(len(key)):
            ip[i] = key[i]
            op[i] = key[i]
        for i in range(_BLOCK):
            ip[i] ^= 0x36
            op[i] ^= 0x5C
        self._ip = bytes(ip)
        self._op = bytes(op)

    def mac(self, *chunks):
        # chunks are fed in turn: callers never concatenate a message just to MAC it
        h = hashlib.sha256(self._ip)
        for c in chunks:
            h.update(c)
        h2 = hashlib.sha256(self._op)
        h2.update(h.digest())
        return h2.digest()


def equal(a, b):
    # constant time in the contents (the length is public: a tag is always 32 bytes)
    if len(a) != len(b):
        return False
    r = 0
    for i in range(len(a)):
        r |= a[i] ^ b[i]
    return r == 0
