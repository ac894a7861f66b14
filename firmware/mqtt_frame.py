# MQTT 3.1.1 framing: bytes in, bytes out. No I/O here (see mqtt_client.py).
# Packets we build are bytearrays; packets we parse are (type, flags, body) with body a
# memoryview the caller owns. Every length is checked before anything is allocated.

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBSCRIBE = 8
SUBACK = 9
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

MAX_REMAINING = 268435455  # 4-byte varint limit (spec)

PINGREQ_PKT = b"\xc0\x00"
DISCONNECT_PKT = b"\xe0\x00"


class MQTTError(Exception):
    pass


class MalformedPacket(MQTTError):
    pass


class PacketTooLarge(MQTTError):
    # args: (size, limit)
    pass


def _len_bytes(n):
    # bytes needed by the remaining-length varint for n
    if n < 128:
        return 1
    if n < 16384:
        return 2
    if n < 2097152:
        return 3
    return 4


def put_varint(buf, off, n):
    """Write remaining length n at buf[off:]; return the new offset."""
    if n < 0 or n > MAX_REMAINING:
        raise ValueError("length")
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            buf[off] = b | 0x80
            off += 1
        else:
            buf[off] = b
            return off + 1


def _blen(s):
    # length of a str/bytes as UTF-8 bytes (MicroPython str len is chars)
    if isinstance(s, str):
        s = s.encode()
    n = len(s)
    if n > 65535:
        raise ValueError("string too long")
    return n


def _put_str(buf, off, s):
    if isinstance(s, str):
        s = s.encode()
    n = len(s)
    buf[off] = n >> 8
    buf[off + 1] = n & 0xFF
    off += 2
    buf[off:off + n] = s
    return off + n


def _new(first, rl):
    # allocate a packet with fixed header written; return (buf, offset of variable header)
    if rl > MAX_REMAINING:
        raise ValueError("packet too large")
    buf = bytearray(1 + _len_bytes(rl) + rl)
    buf[0] = first
    return buf, put_varint(buf, 1, rl)


def connect(client_id, username=None, password=None, keepalive=60, clean_session=True,
            will_topic=None, will_msg=None, will_qos=0, will_retain=False):
    if not 0 <= keepalive <= 65535:
        raise ValueError("keepalive")
    if will_qos not in (0, 1, 2):
        raise ValueError("will_qos")
    if password is not None and username is None:
        raise ValueError("password without username")
    rl = 10 + 2 + _blen(client_id)
    flags = 0x02 if clean_session else 0
    if will_topic is not None:
        if will_msg is None:
            will_msg = b""
        rl += 2 + _blen(will_topic) + 2 + _blen(will_msg)
        flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
    if username is not None:
        rl += 2 + _blen(username)
        flags |= 0x80
    if password is not None:
        rl += 2 + _blen(password)
        flags |= 0x40
    buf, off = _new(0x10, rl)
    buf[off:off + 7] = b"\x00\x04MQTT\x04"
    off += 7
    buf[off] = flags
    buf[off + 1] = keepalive >> 8
    buf[off + 2] = keepalive & 0xFF
    off = _put_str(buf, off + 3, client_id)
    if will_topic is not None:
        off = _put_str(buf, off, will_topic)
        off = _put_str(buf, off, will_msg)
    if username is not None:
        off = _put_str(buf, off, username)
    if password is not None:
        off = _put_str(buf, off, password)
    return buf


def publish_header(topic, payload_len, qos=0, retain=False, dup=False, pid=0):
    """Fixed header + topic + packet id of a PUBLISH; the caller sends the payload after it
    (so a payload is never copied)."""
    if qos not in (0, 1):
        raise ValueError("qos")  # QoS 2 is not supported
    if qos and not 0 < pid < 65536:
        raise ValueError("pid")
    if dup and not qos:
        raise ValueError("dup with qos0")
    tl = _blen(topic)
    if tl == 0:
        raise ValueError("empty topic")
    rl = 2 + tl + (2 if qos else 0) + payload_len
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    n = 1 + _len_bytes(rl) + rl - payload_len
    buf = bytearray(n)
    buf[0] = first
    off = put_varint(buf, 1, rl)
    off = _put_str(buf, off, topic)
    if qos:
        buf[off] = pid >> 8
        buf[off + 1] = pid & 0xFF
    return buf


def _pid_pkt(first, pid):
    if not 0 < pid < 65536:
        raise ValueError("pid")
    return bytes((first, 2, pid >> 8, pid & 0xFF))


def puback(pid):
    return _pid_pkt(0x40, pid)


def subscribe(pid, topics):
    """topics: sequence of (filter, qos)."""
    if not topics:
        raise ValueError("no topics")
    rl = 2
    for t, q in topics:
        if q not in (0, 1, 2):
            raise ValueError("qos")
        if _blen(t) == 0:
            raise ValueError("empty filter")
        rl += 2 + _blen(t) + 1
    buf, off = _new(0x82, rl)
    if not 0 < pid < 65536:
        raise ValueError("pid")
    buf[off] = pid >> 8
    buf[off + 1] = pid & 0xFF
    off += 2
    for t, q in topics:
        off = _put_str(buf, off, t)
        buf[off] = q
        off += 1
    return buf


# ---- parsing ---------------------------------------------------------------------------

def _u16(b, off):
    if off + 2 > len(b):
        raise MalformedPacket("short")
    return (b[off] << 8) | b[off + 1]


def _str(b, off):
    n = _u16(b, off)
    off += 2
    if off + n > len(b):
        raise MalformedPacket("string past end")
    try:
        s = str(b[off:off + n], "utf-8")
    except UnicodeError:
        raise MalformedPacket("utf-8")
    if "\x00" in s:
        raise MalformedPacket("nul in string")
    return s, off + n


def parse_connack(flags, body):
    """Return (session_present, return_code)."""
    if flags or len(body) != 2 or body[0] & 0xFE:
        raise MalformedPacket("connack")
    return bool(body[0] & 1), body[1]


def parse_pid(flags, body, want_flags=0):
    """PUBACK (and PUBREC/PUBREL/PUBCOMP/UNSUBACK shape): return the packet id."""
    if flags != want_flags or len(body) != 2:
        raise MalformedPacket("ack")
    pid = (body[0] << 8) | body[1]
    if not pid:
        raise MalformedPacket("pid 0")
    return pid


def parse_publish_head(flags, body):
    """Return (topic, qos, retain, dup, pid, payload_offset). body needs only to hold the
    topic and packet id (used to skip an oversized PUBLISH without reading its payload)."""
    qos = (flags >> 1) & 3
    if qos == 3:
        raise MalformedPacket("qos 3")
    dup = bool(flags & 8)
    if dup and not qos:
        raise MalformedPacket("dup on qos0")
    topic, off = _str(body, 0)
    if not topic or "+" in topic or "#" in topic:
        raise MalformedPacket("topic")
    pid = 0
    if qos:
        pid = _u16(body, off)
        off += 2
        if not pid:
            raise MalformedPacket("pid 0")
    return topic, qos, bool(flags & 1), dup, pid, off


def parse_publish(flags, body):
    """Return (topic, payload memoryview, qos, retain, dup, pid)."""
    topic, qos, retain, dup, pid, off = parse_publish_head(flags, body)
    return topic, body[off:], qos, retain, dup, pid


def parse_suback(flags, body):
    """Return (pid, list of return codes)."""
    if flags or len(body) < 3:
        raise MalformedPacket("suback")
    codes = list(body[2:])
    for c in codes:
        if c not in (0, 1, 2, 0x80):
            raise MalformedPacket("suback code")
    return parse_pid(0, body[:2]), codes


def parse_empty(flags, body):
    # PINGREQ / PINGRESP / DISCONNECT
    if flags or len(body):
        raise MalformedPacket("nonempty")


def topic_matches(flt, topic):
    """MQTT filter match with + and # (no allocation beyond index arithmetic)."""
    if flt == topic:
        return True
    fi = ti = 0
    fl = len(flt)
    tl = len(topic)
    if topic and topic[0] == "$" and flt and flt[0] in "+#":
        return False
    while fi < fl:
        fe = flt.find("/", fi)
        if fe < 0:
            fe = fl
        seg = flt[fi:fe]
        if seg == "#":
            return True
        if ti > tl:
            return False
        te = topic.find("/", ti)
        if te < 0:
            te = tl
        if seg != "+" and seg != topic[ti:te]:
            return False
        fi = fe + 1
        ti = te + 1
        if fe == fl:
            return te == tl
    return False
