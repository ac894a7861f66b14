# Deterministic, bounded CBOR for the edgepay profile (protocol/SPEC.md §3).
# Decoding is strict: anything a second encoder could write differently is refused, so the
# bytes a MAC covers have exactly one meaning. Bounds are checked before any allocation.
import struct

MAX_MSG = 2048
MAX_DEPTH = 8
MAX_STR = 512
MAX_COUNT = 64
MAX_ITEMS = 256
NS = 0x100  # flag on a head's initial byte: argument not in shortest form


class CodecError(Exception):
    # .code is the SPEC §7 error name; one exception type for every refusal.
    def __init__(self, code):
        super().__init__(code)
        self.code = code


def _utf8_strict(b, i, end):
    # MicroPython's own check lets overlongs, surrogates and > U+10FFFF through (RFC 3629 forbids).
    while i < end:
        c = b[i]
        if c < 0x80:
            i += 1
            continue
        lo = 0x80
        hi = 0xBF
        if 0xC2 <= c <= 0xDF:
            n = 1
        elif 0xE0 <= c <= 0xEF:
            n = 2
            if c == 0xE0:
                lo = 0xA0
            elif c == 0xED:
                hi = 0x9F
        elif 0xF0 <= c <= 0xF4:
            n = 3
            if c == 0xF0:
                lo = 0x90
            elif c == 0xF4:
                hi = 0x8F
        else:
            return False
        if i + n >= end:
            return False
        c = b[i + 1]
        if c < lo or c > hi:
            return False
        j = i + 2
        i += n + 1
        while j < i:
            if b[j] & 0xC0 != 0x80:
                return False
            j += 1
    return True


class _Dec:
    # One decode call: buffer, cursor and item budget, so no (value, offset) tuples per item.
    def __init__(self, buf, views):
        self.b = buf
        self.mv = memoryview(buf)
        self.end = len(buf)
        self.o = 0
        self.items = 0
        self.views = views  # return bstrs as memoryviews (envelope: no payload copy)
        self.a = 0  # the last head's argument
        self.tag = None

    def head(self):
        # -> (major << 5 | ai), plus NS (0x100) when the argument is not in shortest form; the
        # argument is left in self.a. Only well-formedness and indefinite lengths are judged
        # here: the caller classifies the item (type, bounds) before it may report non_canonical
        # (SPEC §3).
        b = self.b
        o = self.o
        if o >= self.end:
            raise CodecError("malformed")
        ib = b[o]
        ai = ib & 31
        o += 1
        ns = 0
        if ai < 24:
            self.a = ai
        elif ai < 28:
            n = 1 << (ai - 24)
            if o + n > self.end:
                raise CodecError("malformed")
            v = 0
            for k in range(o, o + n):
                v = (v << 8) | b[k]
            o += n
            if ib >= 0xE0:
                # major 7: floats have no argument to be shortest about (the caller rejects them);
                # f8 with a value below 32 is not well-formed (RFC 8949 §3.3)
                if ai == 24 and v < 32:
                    raise CodecError("malformed")
            elif v < (24 if n == 1 else 1 << (4 * n)):
                ns = NS
            self.a = v
        elif ai == 31:
            mt = ib >> 5
            if 2 <= mt <= 5:
                raise CodecError("indefinite")
            raise CodecError("malformed")  # break outside indefinite, or ai 31 on int/tag
        else:
            raise CodecError("malformed")  # reserved 28..30
        self.o = o
        return ib | ns

    def item(self, depth, tag_ok=False, key=False, big=MAX_STR):
        # SPEC §3, within one item: the head (malformed, indefinite) -> its type
        # (unsupported_cbor) -> the item total (too_large) -> depth (too_deep) -> the length or
        # count (too_large) -> shortest form (non_canonical). A map key is read the same way.
        # big: the bound of a bstr that is a value of the top-level map (a chunk's data on
        # dn/ota, SPEC §3); only maps hand it on to their values, and it counts only at depth 2.
        ib = self.head()
        mt = (ib >> 5) & 7
        a = self.a
        if key and mt != 0 and mt != 1 and mt != 3:
            raise CodecError("unsupported_cbor")  # map keys: ints and text only
        if mt == 6:
            if not tag_ok:
                raise CodecError("unsupported_cbor")
            if ib > 0xFF:  # NS set
                raise CodecError("non_canonical")
            # tags do not count for depth or items; the caller checks the number (bad_tag)
            self.tag = a
            return self.item(depth, False)
        if mt == 7 and (ib < 0xF4 or ib > 0xF6):
            raise CodecError("unsupported_cbor")  # floats, undefined, other simple values
        self.items += 1
        if self.items > MAX_ITEMS:
            raise CodecError("too_large")  # items are counted before depth is judged
        if depth > MAX_DEPTH:
            raise CodecError("too_deep")
        if mt == 7:
            if ib == 0xF6:
                return None
            return ib == 0xF5  # false (f4) or true (f5)
        if mt < 2:
            if ib > 0xFF:  # NS set
                raise CodecError("non_canonical")
            return a if mt == 0 else -1 - a
        if mt == 2 or mt == 3:
            # Only the envelope's own byte strings (depth 2: protected, payload, tag) are bounded
            # by the message size instead: they hold CBOR that is decoded, with these bounds, on
            # its own; and a top-level map's bstr values by big (MAX_STR unless the caller
            # says). Checked before reading, like every other length.
            if a > ((MAX_MSG if self.views else big) if mt == 2 and depth == 2 else MAX_STR):
                raise CodecError("too_large")
            if ib > 0xFF:  # NS set
                raise CodecError("non_canonical")
            o = self.o
            e = o + a
            if e > self.end:
                raise CodecError("malformed")
            self.o = e
            if mt == 2:
                if self.views:
                    return self.mv[o:e]
                return bytes(self.mv[o:e])
            try:
                s = str(self.mv[o:e], "utf-8")
            except UnicodeError:
                raise CodecError("malformed")
            # len(s) == byte length only for pure ASCII; otherwise validate strictly
            if len(s) != a and not _utf8_strict(self.b, o, e):
                raise CodecError("malformed")
            return s
        if a > MAX_COUNT:
            raise CodecError("too_large")
        if ib > 0xFF:  # NS set
            raise CodecError("non_canonical")
        if mt == 4:
            r = []
            d = depth + 1
            for _ in range(a):
                r.append(self.item(d, False))
            return r
        # major 5: a map
        r = {}
        d = depth + 1
        ps = pe = -1
        b = self.b
        for _ in range(a):
            ks = self.o
            k = self.item(d, False, True)
            ke = self.o
            if ps >= 0:
                c = _cmp(b, ps, pe, ks, ke)
                if c == 0:
                    raise CodecError("dup_key")
                if c > 0:
                    raise CodecError("non_canonical")
            ps = ks
            pe = ke
            r[k] = self.item(d, False, False, big)
        return r


def _cmp(b, s1, e1, s2, e2):
    # bytewise lexicographic compare of two encoded keys, in place (RFC 8949 §4.2.1)
    n1 = e1 - s1
    n2 = e2 - s2
    n = n1 if n1 < n2 else n2
    for i in range(n):
        x = b[s1 + i]
        y = b[s2 + i]
        if x != y:
            return x - y
    return n1 - n2


def decode(buf, envelope=False, big=MAX_STR):
    """Strictly decode one CBOR item filling all of buf.

    envelope=True: the outermost item may be a tag; returns (tag or None, item) with byte strings
    as memoryviews into buf (no copies). Otherwise returns the item, byte strings as bytes.
    big: the bound of a byte string that is a value of the top-level map (SPEC §3: 1536 in
    a dn/ota payload; MAX_STR otherwise).
    """
    if len(buf) > MAX_MSG:
        raise CodecError("too_large")
    d = _Dec(buf, envelope)
    v = d.item(1, envelope, False, big)
    if d.o != d.end:
        raise CodecError("trailing")
    if envelope:
        return d.tag, v
    return v


# --- encoding ---

def _head(out, mt, n):
    mt <<= 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out.append(mt | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(mt | 25)
        out.extend(struct.pack(">H", n))
    elif n < 0x100000000:
        out.append(mt | 26)
        out.extend(struct.pack(">I", n))
    elif n < 0x10000000000000000:
        out.append(mt | 27)
        out.extend(struct.pack(">Q", n))
    else:
        raise CodecError("too_large")  # beyond CBOR's 64-bit argument


def head(mt, n):
    # a lone head as bytes in one allocation (bstr/array headers fed straight into a MAC)
    mt <<= 5
    if n < 24:
        return struct.pack("B", mt | n)
    if n < 0x100:
        return struct.pack("BB", mt | 24, n)
    if n < 0x10000:
        return struct.pack(">BH", mt | 25, n)
    if n < 0x100000000:
        return struct.pack(">BI", mt | 26, n)
    if n < 0x10000000000000000:
        return struct.pack(">BQ", mt | 27, n)
    raise CodecError("too_large")


class _Enc:
    def __init__(self):
        self.out = bytearray()
        self.items = 0

    def item(self, v, depth):
        # mirror the decoder's bounds (items counted before depth): never emit what a peer
        # must refuse
        self.items += 1
        if self.items > MAX_ITEMS:
            raise CodecError("too_large")
        if depth > MAX_DEPTH:
            raise CodecError("too_deep")
        out = self.out
        t = type(v)
        if t is bool:
            out.append(0xF5 if v else 0xF4)
        elif v is None:
            out.append(0xF6)
        elif t is int:
            if v >= 0:
                _head(out, 0, v)
            else:
                _head(out, 1, -1 - v)
        elif t is str or t is bytes or t is bytearray or t is memoryview:
            n = len(v)  # for str in MicroPython this is chars; use the UTF-8 byte length
            if t is str:
                n = len(memoryview(v))
            if n > MAX_STR:
                raise CodecError("too_large")
            _head(out, 3 if t is str else 2, n)
            out.extend(v)
        elif t is list or t is tuple:
            if len(v) > MAX_COUNT:
                raise CodecError("too_large")
            _head(out, 4, len(v))
            for x in v:
                self.item(x, depth + 1)
        elif t is dict:
            if len(v) > MAX_COUNT:
                raise CodecError("too_large")
            _head(out, 5, len(v))
            d = depth + 1
            ks = sorted(v) if _uints(v) else None
            if ks is not None:
                # non-negative int keys: canonical byte order is numeric order
                for k in ks:
                    self.item(k, d)
                    self.item(v[k], d)
            else:
                ks = []
                for k in v:
                    tk = type(k)
                    if tk is not int and tk is not str:
                        raise CodecError("unsupported_cbor")
                    e = _Enc()
                    e.item(k, d)
                    ks.append((bytes(e.out), k))
                ks.sort()  # on the encoded key: bytewise, not length-first
                for ek, k in ks:
                    self.items += 1
                    out.extend(ek)
                    self.item(v[k], d)
        else:
            raise CodecError("unsupported_cbor")  # floats and anything else


def _uints(d):
    for k in d:
        if type(k) is not int or k < 0:
            return False
    return True


def encode(obj):
    """Deterministic encoding of int/bytes/str/list/tuple/dict/True/False/None."""
    e = _Enc()
    e.item(obj, 1)
    if len(e.out) > MAX_MSG:
        raise CodecError("too_large")
    return bytes(e.out)
