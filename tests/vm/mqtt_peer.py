# The broker's side of MQTT 3.1.1 framing, for tests and fake brokers on the VM: splitting a
# stream into packets, CONNECT and SUBSCRIBE parsing, CONNACK / SUBACK / whole-PUBLISH building.
# A device never needs these (its client reads packets in place: mqtt_client._read_head), so they
# live here, outside every firmware bundle; the shared pieces are mqtt_frame's.
from mqtt_frame import MAX_REMAINING, MalformedPacket, PacketTooLarge, publish_header, _str, _u16

PINGRESP_PKT = b"\xd0\x00"


def get_varint(buf, off=0, limit=MAX_REMAINING):
    """Decode a remaining length at buf[off:]. Return (value, next_off), or None if more bytes
    are needed. Raise MalformedPacket for a 5th continuation byte (or a non-shortest form) and
    PacketTooLarge if value > limit."""
    n = 0
    shift = 0
    i = off
    end = len(buf)
    while True:
        if i >= end:
            return None
        if i - off >= 4:
            raise MalformedPacket("varint")
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            if b == 0 and i - off > 1:
                raise MalformedPacket("varint not shortest")
            break
        shift += 7
    if n > limit:
        raise PacketTooLarge(n, limit)
    return n, i


def publish(topic, payload, qos=0, retain=False, dup=False, pid=0):
    h = publish_header(topic, len(payload), qos, retain, dup, pid)
    h.extend(payload)
    return h


def connack(session_present, rc):
    return bytes((0x20, 2, 1 if session_present else 0, rc))


def suback(pid, codes):
    return bytes((0x90, 2 + len(codes), pid >> 8, pid & 0xFF)) + bytes(codes)


def split(buf, limit=MAX_REMAINING):
    """Find one whole packet at the start of buf. Return (ptype, flags, body memoryview,
    total_len), or None if buf holds only part of one. The size bound is checked on the header
    alone, before the body is read or allocated."""
    if not len(buf):
        return None
    r = get_varint(buf, 1, limit)
    if r is None:
        return None
    n, off = r
    if len(buf) < off + n:
        return None
    b = buf[0]
    return b >> 4, b & 0x0F, memoryview(buf)[off:off + n], off + n


def parse_connect(flags, body):
    """Return a dict (used by tests and fake brokers)."""
    if flags:
        raise MalformedPacket("connect flags")
    proto, off = _str(body, 0)
    if proto != "MQTT" or off + 4 > len(body) or body[off] != 4:
        raise MalformedPacket("protocol")
    cf = body[off + 1]
    if cf & 1:
        raise MalformedPacket("reserved flag")
    d = {"clean_session": bool(cf & 2), "keepalive": _u16(body, off + 2)}
    off += 4
    d["client_id"], off = _str(body, off)
    if cf & 4:
        d["will_topic"], off = _str(body, off)
        n = _u16(body, off)
        if off + 2 + n > len(body):
            raise MalformedPacket("will")
        d["will_msg"] = bytes(body[off + 2:off + 2 + n])
        off += 2 + n
        d["will_qos"] = (cf >> 3) & 3
        d["will_retain"] = bool(cf & 0x20)
    elif cf & 0x38:
        raise MalformedPacket("will flags")
    if cf & 0x80:
        d["username"], off = _str(body, off)
    if cf & 0x40:
        n = _u16(body, off)
        if off + 2 + n > len(body):
            raise MalformedPacket("password")
        d["password"] = bytes(body[off + 2:off + 2 + n])
        off += 2 + n
    if off != len(body):
        raise MalformedPacket("trailing")
    return d


def parse_subscribe(flags, body):
    """Return (pid, [(filter, qos)])."""
    if flags != 2:
        raise MalformedPacket("subscribe flags")
    pid = _u16(body, 0)
    off = 2
    out = []
    while off < len(body):
        t, off = _str(body, off)
        if off >= len(body) or body[off] > 2:
            raise MalformedPacket("subscribe qos")
        out.append((t, body[off]))
        off += 1
    if not out or not pid:
        raise MalformedPacket("subscribe")
    return pid, out
