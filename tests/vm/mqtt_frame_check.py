# Runs framing cases sent by tests/test_mqtt_frame.py; stdin: JSON list of cases, stdout: results.
import json
import sys
from binascii import hexlify, unhexlify
import mqtt_frame as F
import mqtt_peer as P  # the broker side: split, parse_connect/subscribe, whole publish


def hx(b):
    return hexlify(bytes(b)).decode()


def enc(c):
    op = c["op"]
    a = c.get("args", {})
    if op == "connect":
        return F.connect(**a)
    if op == "publish":
        a = dict(a)
        a["payload"] = unhexlify(a["payload"])
        return P.publish(**a)
    if op == "publish_header":
        return F.publish_header(**a)
    if op == "puback":
        return F.puback(a["pid"])
    if op == "subscribe":
        return F.subscribe(a["pid"], [tuple(t) for t in a["topics"]])
    if op == "varint":
        buf = bytearray(5)
        return buf[:F.put_varint(buf, 0, a["n"])]
    raise ValueError(op)


def dec(c):
    buf = unhexlify(c["hex"])
    r = P.split(buf, c.get("limit", F.MAX_REMAINING))
    if r is None:
        return {"incomplete": True}
    t, fl, body, total = r
    out = {"type": t, "flags": fl, "total": total}
    if t == F.CONNACK:
        out["sp"], out["rc"] = F.parse_connack(fl, body)
    elif t == F.PUBLISH:
        topic, payload, qos, retain, dup, pid = F.parse_publish(fl, body)
        out.update(topic=topic, payload=hx(payload), qos=qos, retain=retain, dup=dup, pid=pid)
    elif t == F.PUBACK:
        out["pid"] = F.parse_pid(fl, body)
    elif t == F.SUBACK:
        out["pid"], out["codes"] = F.parse_suback(fl, body)
    elif t in (F.PINGREQ, F.PINGRESP, F.DISCONNECT):
        F.parse_empty(fl, body)
    elif t == F.CONNECT:
        d = P.parse_connect(fl, body)
        for k in ("will_msg", "password"):
            if k in d:
                d[k] = hx(d[k])
        out.update(d)
    elif t == F.SUBSCRIBE:
        out["pid"], out["topics"] = P.parse_subscribe(fl, body)
    else:
        raise F.MalformedPacket("type")
    return out


def run(c):
    try:
        if c["op"] == "decode":
            return {"ok": dec(c)}
        if c["op"] == "match":
            return {"ok": F.topic_matches(c["filter"], c["topic"])}
        if c["op"] == "getvarint":
            r = P.get_varint(unhexlify(c["hex"]), 0, c.get("limit", F.MAX_REMAINING))
            return {"ok": list(r) if r else None}
        return {"ok": hx(enc(c))}
    except Exception as e:
        return {"err": type(e).__name__, "args": [str(x) for x in e.args]}


cases = json.loads(sys.stdin.read())
print(json.dumps([run(c) for c in cases]))
