"""firmware/mqtt_frame.py on the MicroPython VM. Expected bytes are built here independently
(a tiny CPython encoder written from the MQTT 3.1.1 spec), never by the code under test."""
import struct

import pytest

from tests.vm import run_vm_json


def vm(cases):
    return run_vm_json("mqtt_frame_check.py", cases)


def rl(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(x):
    x = x.encode() if isinstance(x, str) else x
    return struct.pack(">H", len(x)) + x


def pkt(first, body):
    return bytes([first]) + rl(len(body)) + body


def ref_connect(cid, user=None, pw=None, ka=60, clean=True, wt=None, wm=b"", wq=0, wr=False):
    flags = (2 if clean else 0) | (0x80 if user is not None else 0) | (0x40 if pw is not None else 0)
    pay = s(cid)
    if wt is not None:
        flags |= 4 | (wq << 3) | (0x20 if wr else 0)
        pay += s(wt) + s(wm)
    if user is not None:
        pay += s(user)
    if pw is not None:
        pay += s(pw)
    return pkt(0x10, s("MQTT") + bytes([4, flags]) + struct.pack(">H", ka) + pay)


def ref_publish(topic, payload, qos=0, retain=False, dup=False, pid=0):
    first = 0x30 | (8 if dup else 0) | (qos << 1) | (1 if retain else 0)
    return pkt(first, s(topic) + (struct.pack(">H", pid) if qos else b"") + payload)


def test_encode_round_trip_and_reference_bytes():
    big = bytes(range(256)) * 2  # 512 B: 2-byte remaining length (64K heap holds the JSON)
    cases = [
        {"op": "connect", "args": {"client_id": "dev1"}},
        {"op": "connect", "args": {"client_id": "dev1", "username": "dev1", "password": "pw", "keepalive": 2,
                                   "clean_session": False, "will_topic": "v1/dev/dev1/up/status",
                                   "will_msg": "offline", "will_qos": 1, "will_retain": True}},
        {"op": "publish", "args": {"topic": "v1/dev/dev1/up/rec", "payload": "0102", "qos": 1, "pid": 258,
                                   "retain": True, "dup": True}},
        {"op": "publish", "args": {"topic": "a", "payload": "", "qos": 0}},
        {"op": "publish", "args": {"topic": "ä/b", "payload": big.hex(), "qos": 1, "pid": 65535}},
        {"op": "publish_header", "args": {"topic": "t", "payload_len": 200, "qos": 1, "pid": 7}},
        {"op": "puback", "args": {"pid": 65535}},
        {"op": "subscribe", "args": {"pid": 3, "topics": [["v1/dev/dev1/dn/#", 1], ["x/+", 0]]}},
    ]
    want = [
        ref_connect("dev1"),
        ref_connect("dev1", "dev1", "pw", 2, False, "v1/dev/dev1/up/status", b"offline", 1, True),
        ref_publish("v1/dev/dev1/up/rec", b"\x01\x02", 1, True, True, 258),
        ref_publish("a", b""),
        ref_publish("ä/b", big, 1, pid=65535),
        ref_publish("t", b"\0" * 200, 1, pid=7)[:-200],
        b"\x40\x02\xff\xff",
        pkt(0x82, b"\x00\x03" + s("v1/dev/dev1/dn/#") + b"\x01" + s("x/+") + b"\x00"),
    ]
    got = vm(cases)
    for c, g, w in zip(cases, got, want):
        assert g == {"ok": w.hex()}, c["op"]
    # decode what we encoded (and reference packets)
    dec = vm([{"op": "decode", "hex": w.hex()} for w in want]
             + [{"op": "decode", "hex": "20020105"}, {"op": "decode", "hex": "9003000380"},
                {"op": "decode", "hex": "d000"}])
    assert dec[0]["ok"]["client_id"] == "dev1" and dec[0]["ok"]["clean_session"] is True
    d1 = dec[1]["ok"]
    assert d1 == {**d1, "username": "dev1", "password": b"pw".hex(), "keepalive": 2, "clean_session": False,
                  "will_topic": "v1/dev/dev1/up/status", "will_msg": b"offline".hex(), "will_qos": 1,
                  "will_retain": True}
    p = dec[2]["ok"]
    assert (p["topic"], p["payload"], p["qos"], p["pid"], p["retain"], p["dup"]) == \
        ("v1/dev/dev1/up/rec", "0102", 1, 258, True, True)
    assert dec[4]["ok"]["payload"] == big.hex() and dec[4]["ok"]["topic"] == "ä/b"
    assert dec[6]["ok"]["pid"] == 65535
    assert dec[7]["ok"]["topics"] == [["v1/dev/dev1/dn/#", 1], ["x/+", 0]]
    assert dec[-3]["ok"]["sp"] is True and dec[-3]["ok"]["rc"] == 5
    assert dec[-2]["ok"]["codes"] == [0x80]
    assert dec[-1]["ok"]["type"] == 13


def test_varint_boundaries():
    ns = [0, 127, 128, 16383, 16384, 2097151, 2097152, 268435455]
    got = vm([{"op": "varint", "args": {"n": n}} for n in ns] + [{"op": "varint", "args": {"n": 268435456}}]
             + [{"op": "getvarint", "hex": rl(n).hex()} for n in ns])
    for n, g in zip(ns, got):
        assert g == {"ok": rl(n).hex()}
    assert got[len(ns)]["err"] == "ValueError"
    for i, n in enumerate(ns):
        assert got[len(ns) + 1 + i] == {"ok": [n, len(rl(n))]}


def test_too_large_refused_from_header_alone():
    # header claims 1 MB but only the header is present: refused before any body is needed
    hdr = "30" + rl(1 << 20).hex()
    got = vm([{"op": "decode", "hex": hdr, "limit": 4096},
              {"op": "getvarint", "hex": rl(4097).hex(), "limit": 4096},
              {"op": "getvarint", "hex": rl(4096).hex(), "limit": 4096},
              {"op": "decode", "hex": "30" + rl(268435455).hex(), "limit": 65536}])
    assert got[0]["err"] == "PacketTooLarge" and got[0]["args"] == [str(1 << 20), "4096"]
    assert got[1]["err"] == "PacketTooLarge"
    assert got[2] == {"ok": [4096, 2]}
    assert got[3]["err"] == "PacketTooLarge"


@pytest.mark.parametrize("hexpkt,err", [
    ("30ffffffff7f", "MalformedPacket"),       # 5-byte remaining length
    ("308000", "MalformedPacket"),             # non-shortest varint
    ("36050001610001", "MalformedPacket"),     # QoS 3
    ("3803000161", "MalformedPacket"),         # DUP on QoS 0
    ("30050009616263", "MalformedPacket"),       # topic length past the end
    ("300400022f23", "MalformedPacket"),       # wildcard in a PUBLISH topic
    ("300400026162", None),                    # ok: topic "ab"
    ("30030001ff", "MalformedPacket"),         # invalid UTF-8 topic
    ("32050001610000", "MalformedPacket"),     # QoS1 packet id 0
    ("320300016100", "MalformedPacket"),       # QoS1 missing packet id
    ("2003000000", "MalformedPacket"),         # CONNACK length 3
    ("21020000", "MalformedPacket"),           # CONNACK flags
    ("20020200", "MalformedPacket"),           # CONNACK reserved ack flags
    ("400100", "MalformedPacket"),             # PUBACK length 1
    ("40020000", "MalformedPacket"),           # PUBACK pid 0
    ("9003000105", "MalformedPacket"),         # SUBACK bad return code
    ("d00100", "MalformedPacket"),             # PINGRESP with a body
    ("f000", "MalformedPacket"),               # reserved type 15
    ("3005000161", "incomplete"),
    ("30", "incomplete"),
    ("", "incomplete"),
])
def test_malformed_packets_typed_errors(hexpkt, err):
    [g] = vm([{"op": "decode", "hex": hexpkt}])
    if err == "incomplete":
        assert g == {"ok": {"incomplete": True}}
    elif err is None:
        assert "ok" in g
    else:
        assert g.get("err") == err, g


def test_encoder_refuses_bad_arguments():
    got = vm([{"op": "publish", "args": {"topic": "t", "payload": "", "qos": 2, "pid": 1}},
              {"op": "publish", "args": {"topic": "t", "payload": "", "qos": 1, "pid": 0}},
              {"op": "publish", "args": {"topic": "", "payload": ""}},
              {"op": "publish", "args": {"topic": "t", "payload": "", "dup": True}},
              {"op": "puback", "args": {"pid": 70000}},
              {"op": "connect", "args": {"client_id": "x", "password": "p"}},
              {"op": "connect", "args": {"client_id": "x", "keepalive": 70000}}])
    assert all(g.get("err") == "ValueError" for g in got), got


@pytest.mark.parametrize("flt,topic,want", [
    ("v1/dev/d/dn/#", "v1/dev/d/dn/cmd", True), ("v1/dev/d/dn/#", "v1/dev/d/dn", True),
    ("v1/dev/+/dn/cmd", "v1/dev/x/dn/cmd", True), ("v1/dev/+/dn/cmd", "v1/dev/x/y/dn/cmd", False),
    ("a/b", "a/b/c", False), ("a/+", "a", False), ("#", "$SYS/x", False), ("+/x", "/x", True),
    ("a/b/c", "a/b", False), ("a/+/c", "a//c", True),
])
def test_topic_matches(flt, topic, want):
    assert vm([{"op": "match", "filter": flt, "topic": topic}]) == [{"ok": want}]
