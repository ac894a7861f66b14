# Ed25519 signature verification (RFC 8032 §5.1.7), pure MicroPython: field elements are Python
# ints (arbitrary precision on the unix, ESP32 and RP2040 ports), points are tuples in extended
# coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, x*y = T/Z (§5.1.4). Verification only: a device
# never signs with a release key. It runs once per firmware update, so it is written for RAM,
# not speed: no tables, one point at a time; every intermediate is garbage the GC takes back.
#
# The check is the cofactorless [S]B == R + [k]A of §5.1.7 step 3 (computed as [S]B - [k]A == R
# in one double-and-add pass), as OpenSSL, and so the cloud's `cryptography`, does it. S >= L
# (non-canonical) is refused, and so are an R or A that do not decode (y >= p, no square root,
# x = 0 with the sign bit set).
try:
    from hashlib import sha512 as _sha512
except ImportError:  # the unix and ESP32 ports: sha1, sha256 and md5 only
    from sha512 import sha512 as _sha512

P = (1 << 255) - 19
L = (1 << 252) + 27742317777372353535851937790883648493


def _pow(b, e):
    # b**e mod P; three-argument pow where the port has it (MICROPY_PY_BUILTINS_POW3)
    try:
        return pow(b, e, P)
    except (TypeError, NotImplementedError):
        r = 1
        while e:
            if e & 1:
                r = r * b % P
            b = b * b % P
            e >>= 1
        return r


# The curve's constants are derived at import (four exponentiations, once per update) rather than
# written out: each literal would be 77 digits of code in every board's bundle.
_D = -121665 * _pow(121666, P - 2) % P  # d = -121665/121666
_D2 = 2 * _D % P
_SQRT_M1 = _pow(2, (P - 1) >> 2)  # a square root of -1
_ZERO = (0, 1, 1, 0)  # the neutral element


def _add(p, q):
    # RFC 8032 §5.1.4 addition (complete: valid for doubling and the neutral element too)
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = t1 * _D2 % P * t2 % P
    d = 2 * z1 * z2 % P
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _dbl(p):
    # RFC 8032 §5.1.4 doubling
    x1, y1, z1, _ = p
    a = x1 * x1 % P
    b = y1 * y1 % P
    c = 2 * z1 * z1 % P
    h = a + b
    s = x1 + y1
    e = h - s * s % P
    g = a - b
    f = c + g
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def decode_point(s):
    """RFC 8032 §5.1.3: 32 bytes -> an extended point, or None when they do not decode."""
    if len(s) != 32:
        return None
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    yy = y * y % P
    u = (yy - 1) % P
    v = (_D * yy + 1) % P
    v3 = v * v % P * v % P
    x = u * v3 % P * _pow(u * v3 % P * v3 % P * v % P, (P - 5) >> 3) % P
    vxx = v * x % P * x % P
    if vxx != u:
        if vxx != (P - u) % P:
            return None  # not a square: no point with this y
        x = x * _SQRT_M1 % P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


_B = decode_point((4 * _pow(5, P - 2) % P).to_bytes(32, "little"))  # y = 4/5, x even (RFC 8032 §5.1)


def verify(pub, sig, msg):
    """True when sig (64 bytes) is a valid Ed25519 signature by pub (32 bytes) over msg: bytes, or a
    tuple or list of byte strings hashed in turn (a COSE Sig_structure is never assembled)."""
    if len(pub) != 32 or len(sig) != 64:
        return False
    s = int.from_bytes(sig[32:], "little")
    if s >= L:
        return False  # non-canonical S (RFC 8032 §5.1.7 step 1): signatures are not malleable
    r = decode_point(sig[:32])
    a = decode_point(pub)
    if r is None or a is None:
        return False
    h = _sha512(sig[:32])
    h.update(pub)
    if type(msg) is tuple or type(msg) is list:
        for part in msg:
            h.update(part)
    else:
        h.update(msg)
    k = int.from_bytes(h.digest(), "little") % L
    h = None
    # -A, and B - A for the joint double-and-add (Straus): [s]B + [k](-A) in one pass of 253 bits
    na = ((P - a[0]) % P, a[1], a[2], (P - a[3]) % P)
    a = None
    bna = _add(_B, na)
    q = _ZERO
    i = 252  # s < L and k < L: both below 2**253
    while i >= 0:
        q = _dbl(q)
        bs = (s >> i) & 1
        bk = (k >> i) & 1
        if bs:
            q = _add(q, bna if bk else _B)
        elif bk:
            q = _add(q, na)
        i -= 1
    # q == R projectively (R has Z = 1)
    return (q[0] - r[0] * q[2]) % P == 0 and (q[1] - r[1] * q[2]) % P == 0
