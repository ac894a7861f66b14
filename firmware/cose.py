# COSE_Mac0 (RFC 9052 §6.2) with HMAC 256/256 and the MQTT topic as external AAD (SPEC §2).
# The MAC_structure ["MAC0", protected, aad, payload] is never built as a Python object: its CBOR
# heads and the parts are fed to the HMAC in order, and the envelope reuses the same parts.
import cbor
from cbor import CodecError
from hmac256 import equal

_MAC0 = b"\x84\x64MAC0"  # array(4), tstr "MAC0"
_HDR = b"\xa2\x01\x05\x04"  # {1: 5 (HMAC 256/256), 4: kid ...
_TAG17_ARR4 = b"\xd1\x84"
_EMPTY_MAP = b"\xa0"
_TAG32 = b"\x58\x20"


def _b(x):
    return x.encode() if type(x) is str else x


_pre = [None, b""]  # the last kid and its envelope prefix: a device uses one kid for a long time


def _prefix(kid):
    # d1 84 | bstr({1: 5, 4: kid}) | a0: how every envelope for this kid begins, made once
    if _pre[0] is not kid:
        k = _b(kid)
        if len(k) > 64:
            raise CodecError("too_large")
        kh = cbor.head(2, len(k))
        _pre[1] = b"".join((_TAG17_ARR4, cbor.head(2, 4 + len(kh) + len(k)), _HDR, kh, k, _EMPTY_MAP))
        _pre[0] = kid
    return _pre[1]


def build(hkey, kid, topic, payload):
    """-> tagged COSE_Mac0 bytes over payload (already encoded CBOR bytes)."""
    if len(payload) > cbor.MAX_MSG:
        raise CodecError("too_large")
    pre = _prefix(kid)
    pay_h = cbor.head(2, len(payload))
    tag = hkey.mac(_MAC0, memoryview(pre)[2:-1], cbor.head(2, len(memoryview(topic))), topic, pay_h, payload)
    out = b"".join((pre, pay_h, payload, _TAG32, tag))
    if len(out) > cbor.MAX_MSG:
        raise CodecError("too_large")
    return out


def verify_view(hkey, kid, topic, data):
    """Verify a tagged COSE_Mac0 from the cloud; -> its payload as a memoryview into data (no copy)."""
    # SPEC §7 order: size, envelope CBOR, bad_tag, bad_envelope, header, bad_alg, bad_kid, bad_mac
    if len(data) > cbor.MAX_MSG:
        raise CodecError("too_large")
    d = memoryview(data)
    pre = _prefix(kid)
    pe = len(pre) - 1  # where the protected header's bstr ends
    # The fast path: the envelope exactly as a canonical sender writes it for our kid, so every
    # check up to the MAC holds already (shape, shortest heads, alg, kid, a 32-byte tag last);
    # anything else is decoded in full below, for its exact error.
    e = 0
    if len(data) > pe + 36 and data.startswith(pre):
        ps = pe + 2
        n = data[pe + 1] - 0x40  # a bstr head: 0..23 in the byte, or 0x58 and 24..255 next
        if n == 24 and data[pe + 2] >= 24:
            ps += 1
            e = ps + data[pe + 2]
        elif 0 <= n < 24:
            e = ps + n
    if not e or len(data) != e + 34 or data[e] != 0x58 or data[e + 1] != 32:
        ps, e = _generic(kid, data)  # a longer payload too
    t = hkey.mac(_MAC0, d[2:pe], cbor.head(2, len(memoryview(topic))), topic, d[pe + 1:e])
    if not equal(t, d[e + 2:]):
        raise CodecError("bad_mac")
    return d[ps:e]


def _generic(kid, data):
    # -> (start, end) of the payload in data, or the envelope's SPEC §7 error
    tag, env = cbor.decode(data, True)
    if tag != 17:
        raise CodecError("bad_tag")
    mv = memoryview
    if type(env) is not list or len(env) != 4:
        raise CodecError("bad_envelope")
    prot, unprot, payload, mac = env
    if (type(prot) is not mv or type(unprot) is not dict or unprot
            or type(payload) is not mv or type(mac) is not mv):
        raise CodecError("bad_envelope")
    if not len(prot):
        raise CodecError("bad_envelope")  # empty = the empty map (RFC 9052 §3): no alg, no kid
    hdr = cbor.decode(prot)
    if type(hdr) is not dict or len(hdr) != 2 or 1 not in hdr or 4 not in hdr \
            or type(hdr[4]) is not bytes:
        raise CodecError("bad_envelope")
    alg = hdr[1]
    if type(alg) is not int or alg != 5:
        raise CodecError("bad_alg")
    if hdr[4] != _b(kid):
        raise CodecError("bad_kid")
    if len(mac) != 32:
        raise CodecError("bad_mac")
    # The decode proved the envelope canonical, and the header is ours: it begins with our prefix
    # and ends with bstr(tag), so the payload's bstr sits between.
    ps = len(_prefix(kid)) + _hlen(len(payload))
    return ps, ps + len(payload)


def _hlen(n):
    # size of a canonical head for a length n <= 2048
    return 1 if n < 24 else 2 if n < 256 else 3
