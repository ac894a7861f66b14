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


def build(hkey, kid, topic, payload):
    """-> tagged COSE_Mac0 bytes over payload (already encoded CBOR bytes)."""
    kid = _b(kid)
    if len(payload) > cbor.MAX_MSG or len(kid) > 64:
        raise CodecError("too_large")
    kh = cbor.head(2, len(kid))
    ph = cbor.head(2, 4 + len(kh) + len(kid))
    pay_h = cbor.head(2, len(payload))
    tag = hkey.mac(_MAC0, ph, _HDR, kh, kid, cbor.head(2, len(memoryview(topic))), topic,
                   pay_h, payload)
    out = b"".join((_TAG17_ARR4, ph, _HDR, kh, kid, _EMPTY_MAP, pay_h, payload, _TAG32, tag))
    if len(out) > cbor.MAX_MSG:
        raise CodecError("too_large")
    return out


def verify_view(hkey, kid, topic, data):
    """As verify() but returns the payload as a memoryview into data (no copy)."""
    # SPEC §7 order: size, envelope CBOR, bad_tag, bad_envelope, header, bad_alg, bad_kid, bad_mac
    if len(data) > cbor.MAX_MSG:
        raise CodecError("too_large")
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
    # The decode proved the envelope canonical, so its bytes are d1 84 | bstr(prot) | a0 |
    # bstr(payload) | bstr(tag): the MAC_structure's two bstrs are fed straight from data.
    d = memoryview(data)
    pe = 2 + _hlen(len(prot)) + len(prot)
    t = hkey.mac(_MAC0, d[2:pe], cbor.head(2, len(memoryview(topic))), topic,
                 d[pe + 1:pe + 1 + _hlen(len(payload)) + len(payload)])
    if not equal(t, mac):
        raise CodecError("bad_mac")
    return payload


def _hlen(n):
    # size of a canonical head for a length n <= 2048
    return 1 if n < 24 else 2 if n < 256 else 3
