# Batch runner: one JSON operation a line on stdin, one JSON outcome a line on stdout (streamed, so
# a big batch fits the 64K heap). Outcome: {"ok": value} / {"error": CodecError code} /
# {"exc": "Type: text"}.
import binascii
import gc
import json
import sys

import cbor
import cose
import hmac256
import msg
from jform import from_json, named, to_json



def unhex(v):
    # hex text, or run-length segments [[hex, repeat], ...] so big inputs make short lines
    if type(v) is str:
        return binascii.unhexlify(v)
    b = bytearray()
    for h, n in v:
        b.extend(binascii.unhexlify(h) * n if n > 1 else binascii.unhexlify(h))
    return bytes(b)


def run(c):
    op = c["op"]
    if op == "decode":
        return to_json(cbor.decode(unhex(c["hex"])))
    if op == "decode_big":
        return to_json(cbor.decode(unhex(c["hex"]), False, c["big"]))
    if op == "decode_env":
        tag, v = cbor.decode(unhex(c["hex"]), True)
        return [tag, to_json(v)]
    if op == "encode":
        return binascii.hexlify(cbor.encode(from_json(c["value"]))).decode()
    if op == "hmac":
        k = hmac256.HmacKey(unhex(c["key"]))
        chunks = [unhex(x) for x in c["chunks"]]
        return binascii.hexlify(k.mac(*chunks)).decode()
    if op == "equal":
        return hmac256.equal(unhex(c["a"]), unhex(c["b"]))
    k = hmac256.HmacKey(unhex(c.get("key", "")))
    if op == "build":
        return binascii.hexlify(cose.build(k, c["kid"], c["topic"], unhex(c["payload"]))).decode()
    if op == "verify":
        return to_json(bytes(cose.verify_view(k, c["kid"], c["topic"], unhex(c["hex"]))))
    if op == "open":
        return named(msg.open(k, c["kid"], c["topic"], unhex(c["hex"])))
    if op == "seal":
        return binascii.hexlify(msg.seal(k, c["kid"], c["topic"], from_json(c["fields"]))).decode()
    if op == "check":
        p = from_json(c["payload"])
        msg.check(p, c["topic"])
        return named(p)
    raise ValueError(op)


while True:
    line = sys.stdin.readline()
    if not line:
        break
    if not line.strip():
        continue
    gc.collect()  # each case starts from a collected 64K heap
    try:
        r = {"ok": run(json.loads(line))}
    except cbor.CodecError as e:
        r = {"error": e.code}
    except Exception as e:
        r = {"exc": "%s: %s" % (type(e).__name__, e)}
    print(json.dumps(r))
