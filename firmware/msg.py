# The edgepay message model (SPEC §4) and its validation, on top of cbor + cose.
# The schema is one bytes constant (5 bytes a field), an index and a few string tuples: a few
# hundred bytes of RAM (nothing when frozen) instead of a dict of dicts.
import cbor
import cose
from cbor import CodecError

# SPEC §7: the error names and their numbers (a cmd_result carries the number). Built from two
# constants: a dict literal would put every name in the module's qstr table, and compiling this
# module from source (64K heap) must stay small.
_ERRNOS = (b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0a\x0b\x0c\x0d\x0e\x14"
           b"\x15\x16\x17\x18\x1e\x1f\x20\x21\x22\x23\x24\x25\x28\x29\x2a\x2b\x2c")
ERRORS = dict(zip((
    "ok", "malformed", "trailing", "non_canonical", "indefinite", "dup_key", "too_deep",
    "too_large", "unsupported_cbor", "bad_tag", "bad_envelope", "bad_alg", "bad_kid", "bad_mac",
    "bad_type", "missing", "unknown_type", "bad_value", "bad_topic", "wrong_audience",
    "stale_seq", "expired", "not_yet_valid", "clock_untrusted", "replay", "ttl_exceeded",
    "future_iat", "unsupported",
    "bad_args", "failed", "refused", "busy"), _ERRNOS))

# Field kinds (second byte of a record):
#  u uint | i int | b bool | t tstr lo..hi UTF-8 bytes | B bstr lo..hi | c currency ^[A-Z]{3}$
#  d device id | e enum tstr (lo = index in _ENUMS) | m map | a [tstr lo..hi] <= 16 (caps)
#  L lines [[sku tstr 1-32, qty uint, unit_price uint]] <= hi | n uint <= hi
#  E status: 0 or a SPEC §7 error number (any other uint is bad_value)
#  q [uint] <= hi (an ack's quarantined seqs)
# Integer bounds (SPEC §4): the hi byte of a u or i field picks its maximum in _UMAX (0 counts,
# seqs, sizes; 1 times; 2 money); list items are counts (qty, seqs) or money (unit_price).
# A record is 5 bytes: key, kind, required, lo, hi. All records are one bytes constant (adjacent
# literals join at compile time); per type they are in ascending key order, because SPEC §7
# checks fields in that order and the first failing field decides the error.
# cmd_result may carry 6 iat, as in SPEC §4 and protocol/edgepay.cddl.
_ENUMS = (
    ("power_on", "hard", "soft", "watchdog", "deepsleep", "brownout", "unknown"),
    ("gate", "vending", "rental"),
    ("entry", "exit", "vend", "rent", "return", "reauth"),
)
_UMAX = ((1 << 53) - 1, (1 << 32) - 1, 10 ** 12)
_SPEC = (
    # 1 hello: 6? iat, 8 seq, 10 fw, 11 board, 12 reset, 13 caps, 14 kind, 15? boots
    b"\x06u\x00\x00\x01" b"\x08u\x01\x00\x00" b"\x0at\x01\x01\x20" b"\x0bt\x01\x01\x20"
    b"\x0ce\x01\x00\x10" b"\x0da\x01\x01\x10" b"\x0ee\x01\x01\x07" b"\x0fu\x00\x00\x00"
    # 2 status: 6? iat, 8 seq, 10 online
    b"\x06u\x00\x00\x01" b"\x08u\x01\x00\x00" b"\x0ab\x01\x00\x00"
    # 3 heartbeat: 6? iat, 8 seq, 10 uptime, 11 heap, 12 jdepth, 13? rssi, 14 clock,
    #   15? rx_refused, 16? rx_oversize, 17? rx_dropped, 18? off_amt, 19? off_n
    b"\x06u\x00\x00\x01" b"\x08u\x01\x00\x00" b"\x0au\x01\x00\x00" b"\x0bu\x01\x00\x00"
    b"\x0cu\x01\x00\x00" b"\x0di\x00\x00\x00" b"\x0en\x01\x00\x01" b"\x0fu\x00\x00\x00"
    b"\x10u\x00\x00\x00" b"\x11u\x00\x00\x00" b"\x12u\x00\x00\x00" b"\x13u\x00\x00\x00"
    # 4 event: 6? iat, 8 seq, 10 code, 11? detail
    b"\x06u\x00\x00\x01" b"\x08u\x01\x00\x00" b"\x0at\x01\x01\x20" b"\x0bm\x00\x00\x00"
    # 5 alarm: 6? iat, 8 seq, 10 code, 11? detail, 12 active
    b"\x06u\x00\x00\x01" b"\x08u\x01\x00\x00" b"\x0at\x01\x01\x20" b"\x0bm\x00\x00\x00"
    b"\x0cb\x01\x00\x00"
    # 6 sess_open: 8 seq, 9 prev, 10 sid, 11 payer, 12? slot, 13 t0, 14? offline, 15? auth,
    #   16? amount, 17? cur, 21? item
    b"\x08u\x01\x00\x00" b"\x09B\x01\x10\x10" b"\x0at\x01\x01\x20" b"\x0bt\x01\x01\x40"
    b"\x0cu\x00\x00\x00" b"\x0du\x01\x00\x01" b"\x0eb\x00\x00\x00" b"\x0ft\x00\x01\x40"
    b"\x10u\x00\x00\x02" b"\x11c\x00\x00\x00" b"\x15t\x00\x01\x40"
    # 7 sess_update: 8 seq, 9 prev, 10 sid, 16 amount, 17 cur, 18 t1
    b"\x08u\x01\x00\x00" b"\x09B\x01\x10\x10" b"\x0at\x01\x01\x20" b"\x10u\x01\x00\x02"
    b"\x11c\x01\x00\x00" b"\x12u\x01\x00\x01"
    # 8 sess_close: 8 seq, 9 prev, 10 sid, 11 payer, 12? slot, 13 t0, 14? offline, 15? auth,
    #   16 amount, 17 cur, 18 t1, 19? lines, 20? reason
    b"\x08u\x01\x00\x00" b"\x09B\x01\x10\x10" b"\x0at\x01\x01\x20" b"\x0bt\x01\x01\x40"
    b"\x0cu\x00\x00\x00" b"\x0du\x01\x00\x01" b"\x0eb\x00\x00\x00" b"\x0ft\x00\x01\x40"
    b"\x10u\x01\x00\x02" b"\x11c\x01\x00\x00" b"\x12u\x01\x00\x01" b"\x13L\x00\x00\x20"
    b"\x14t\x00\x01\x10"
    # 9 cmd_result: 6? iat, 7? cti, 8 seq, 10 status, 11? name, 12? data, 13? cseq
    b"\x06u\x00\x00\x01" b"\x07B\x00\x08\x10" b"\x08u\x01\x00\x00" b"\x0aE\x01\x00\x00"
    b"\x0bt\x00\x01\x18" b"\x0cm\x00\x00\x00" b"\x0du\x00\x00\x00"
    # 10 auth_req: 6? iat, 8 seq, 10 sid, 11 payer, 12? slot, 14 purpose, 15? auth, 16? amount,
    #   17? cur, 18? t0, 19? t1
    b"\x06u\x00\x00\x01" b"\x08u\x01\x00\x00" b"\x0at\x01\x01\x20" b"\x0bt\x01\x01\x40"
    b"\x0cu\x00\x00\x00" b"\x0ee\x01\x02\x06" b"\x0ft\x00\x01\x40" b"\x10u\x00\x00\x02"
    b"\x11c\x00\x00\x00" b"\x12u\x00\x00\x01" b"\x13u\x00\x00\x01"
    # 20 command: 3 aud, 4 exp, 5? nbf, 6 iat, 7 cti, 8 seq, 10 name, 11? args
    b"\x03d\x01\x00\x00" b"\x04u\x01\x00\x01" b"\x05u\x00\x00\x01" b"\x06u\x01\x00\x01"
    b"\x07B\x01\x08\x10" b"\x08u\x01\x00\x00" b"\x0at\x01\x01\x18" b"\x0bm\x00\x00\x00"
    # 21 ack: 3 aud, 6 iat, 8 seq, 10 upto, 11? resend, 12? quarantined
    b"\x03d\x01\x00\x00" b"\x06u\x01\x00\x01" b"\x08u\x01\x00\x00" b"\x0au\x01\x00\x00"
    b"\x0bb\x00\x00\x00" b"\x0cq\x00\x00\x10"
    # 22 time: 3 aud, 6 iat, 8 seq, 10 nonce (the time_req's, echoed)
    b"\x03d\x01\x00\x00" b"\x06u\x01\x00\x01" b"\x08u\x01\x00\x00" b"\x0aB\x01\x08\x10"
    # 11 time_req: 8 seq, 10 nonce
    b"\x08u\x01\x00\x00" b"\x0aB\x01\x08\x10"
    # 12 chunk_req: 6? iat, 8 seq, 10 rel, 11 i
    b"\x06u\x00\x00\x01" b"\x08u\x01\x00\x00" b"\x0aB\x01\x08\x08" b"\x0bu\x01\x00\x00"
    # 23 chunk: 3 aud, 6? iat, 8? seq, 10 rel, 11 i, 12 data (hi 0: up to 1536, SPEC §3)
    b"\x03d\x01\x00\x00" b"\x06u\x00\x00\x01" b"\x08u\x00\x00\x00" b"\x0aB\x01\x08\x08"
    b"\x0bu\x01\x00\x00" b"\x0cB\x01\x01\x00"
)
# Per type, in the order above: number, first record, record count. A bytes literal: one
# constant, where bytes((...)) compiled to code that builds a tuple first.
_IDX = (b"\x01\x00\x08" b"\x02\x08\x03" b"\x03\x0b\x0c" b"\x04\x17\x04" b"\x05\x1b\x05"  # 1-5
        b"\x06\x20\x0b" b"\x07\x2b\x06" b"\x08\x31\x0d" b"\x09\x3e\x07" b"\x0a\x45\x0b"  # 6-10
        b"\x14\x50\x08" b"\x15\x58\x06" b"\x16\x5e\x04" b"\x0b\x62\x02"  # 20, 21, 22, 11
        b"\x0c\x64\x04" b"\x17\x68\x06")  # 12, 23
# Per type: its topic's suffix; the last level (topic_suffix) is what follows "/up/" or "/dn/".
TOPICS = ("/up/hello", "/up/status", "/up/hb", "/up/evt", "/up/evt", "/up/rec", "/up/rec",
          "/up/rec", "/up/res", "/up/req", "/dn/cmd", "/dn/ack", "/dn/time", "/up/time",
          "/up/ota", "/dn/ota")
_PREFIX = "v1/dev/"


def _err(code):
    raise CodecError(code)


def _row(t):
    # -> index of type t in the tables, or -1 (t may be any int, even a bignum)
    for i in range(0, len(_IDX), 3):
        if _IDX[i] == t:
            return i // 3
    return -1


def topic_suffix(t):
    """-> the topic's last level for type t ("hello", "rec", "cmd"...): it follows up/ or dn/."""
    i = _row(t)
    return TOPICS[i][4:] if i >= 0 else None


def _devid(b, s, e):
    # [a-z0-9][a-z0-9-]{0,31} on UTF-8 bytes b[s:e]
    if e - s < 1 or e - s > 32:
        return False
    for i in range(s, e):
        c = b[i]
        if not (0x61 <= c <= 0x7A or 0x30 <= c <= 0x39 or (c == 0x2D and i > s)):
            return False
    return True


def _topic_ok(topic, suffix):
    if type(topic) is not str or not topic.startswith(_PREFIX) or not topic.endswith(suffix):
        return False
    b = memoryview(topic)  # its UTF-8 bytes, no copy
    return _devid(b, len(_PREFIX), len(b) - len(suffix))


def _tlen(v, lo, hi):
    n = len(memoryview(v))  # bounds are in UTF-8 bytes, as on the wire
    return lo <= n <= hi


def _uint(v):
    return type(v) is int and v >= 0


def _field(kind, lo, hi, v):
    # kind is a byte value; type first (bad_type), then range (bad_value)
    if kind == 0x75:  # u
        if not _uint(v):
            _err("bad_type")
        if v > _UMAX[hi]:
            _err("bad_value")
    elif kind == 0x74:  # t
        if type(v) is not str:
            _err("bad_type")
        if not _tlen(v, lo, hi):
            _err("bad_value")
    elif kind == 0x42:  # B (hi 0: 1536, a chunk's data)
        if type(v) is not bytes:
            _err("bad_type")
        if not lo <= len(v) <= (hi or 1536):
            _err("bad_value")
    elif kind == 0x62:  # b
        if type(v) is not bool:
            _err("bad_type")
    elif kind == 0x63:  # c
        if type(v) is not str:
            _err("bad_type")
        b = memoryview(v)
        if len(b) != 3 or not (0x41 <= b[0] <= 0x5A and 0x41 <= b[1] <= 0x5A and 0x41 <= b[2] <= 0x5A):
            _err("bad_value")
    elif kind == 0x64:  # d
        if type(v) is not str:
            _err("bad_type")
        b = memoryview(v)
        if not _devid(b, 0, len(b)):
            _err("bad_value")
    elif kind == 0x65:  # e
        if type(v) is not str:
            _err("bad_type")
        if v not in _ENUMS[lo]:
            _err("bad_value")
    elif kind == 0x45:  # E: a §7 number
        if not _uint(v):
            _err("bad_type")
        if v > 44 or v not in _ERRNOS:
            _err("bad_value")
    elif kind == 0x6D:  # m
        if type(v) is not dict:
            _err("bad_type")
    elif kind == 0x69:  # i
        if type(v) is not int:
            _err("bad_type")
        if v > _UMAX[hi] or -v > _UMAX[hi]:
            _err("bad_value")
    elif kind == 0x71:  # q: [uint] <= hi
        if type(v) is not list and type(v) is not tuple:
            _err("bad_type")
        for x in v:
            if not _uint(x):
                _err("bad_type")
        if len(v) > hi:
            _err("bad_value")
        for x in v:
            if x > _UMAX[0]:
                _err("bad_value")
    elif kind == 0x6E:  # n
        if not _uint(v):
            _err("bad_type")
        if v > hi:
            _err("bad_value")
    elif kind == 0x61:  # a: caps
        if type(v) is not list and type(v) is not tuple:
            _err("bad_type")
        for x in v:
            if type(x) is not str:
                _err("bad_type")
        if len(v) > 16:
            _err("bad_value")
        for x in v:
            if not _tlen(x, lo, hi):
                _err("bad_value")
    elif kind == 0x4C:  # L: lines
        if type(v) is not list and type(v) is not tuple:
            _err("bad_type")
        for x in v:
            # a line's shape is its type: exactly [tstr, uint, uint]
            if (type(x) is not list and type(x) is not tuple) or len(x) != 3 \
                    or type(x[0]) is not str or not _uint(x[1]) or not _uint(x[2]):
                _err("bad_type")
        if len(v) > hi:
            _err("bad_value")
        for x in v:
            if not _tlen(x[0], 1, 32) or x[1] > _UMAX[0] or x[2] > _UMAX[2]:
                _err("bad_value")


def check(p, topic):
    """Validate a payload map for topic in SPEC §7 order; -> its type number."""
    if type(p) is not dict:
        _err("bad_type")
    if 0 not in p:
        _err("missing")
    t = p[0]
    if not _uint(t):
        _err("bad_type")
    i = _row(t)
    if i < 0:
        _err("unknown_type")
    if not _topic_ok(topic, TOPICS[i]):
        _err("bad_topic")
    spec = _SPEC
    o = _IDX[i * 3 + 1] * 5
    for o in range(o, o + _IDX[i * 3 + 2] * 5, 5):
        k = spec[o]
        if k in p:
            _field(spec[o + 1], spec[o + 3], spec[o + 4], p[k])
        elif spec[o + 2]:
            _err("missing")
    if (t == 6 or t == 10) and (16 in p) != (17 in p):  # sess_open, auth_req
        _err("missing")  # amount and cur come together or not at all
    return t


def seal(hkey, kid, topic, fields):
    """Validate and encode a payload dict (int keys), -> signed envelope bytes for topic."""
    check(fields, topic)
    return cose.build(hkey, kid, topic, cbor.encode(fields))


def open(hkey, kid, topic, data):
    """Verify an envelope received on topic and validate its payload; -> payload dict."""
    # SPEC §3: in a payload on dn/ota (TOPICS[15]) a bstr value of the top-level map (a chunk's
    # data) may be 1536 bytes
    p = cbor.decode(cose.verify_view(hkey, kid, topic, data), False,
                    1536 if topic.endswith(TOPICS[15]) else 512)
    check(p, topic)
    return p
