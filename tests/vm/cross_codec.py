# Cross-codec server (tests/test_cross_codec.py): one JSON operation a line on stdin, one JSON
# outcome a line on stdout, answered at once, so one VM process serves a whole hypothesis run
# (hundreds of cases), each case starting from a collected heap. The test runs it with a 256K heap:
# the lines, their JSON forms and the §9 output share the heap with the codec and fragment it over
# a long run (the codec's own memory bounds at 64K are tests/test_fw_fuzz.py's business).
# Text arrives and leaves as raw UTF-8 (the host writes JSON with ensure_ascii=False: MicroPython's
# json does not join \ud83d\ude00 surrogate escapes into one character).
# Ops: {"op": "open", key, kid, topic, hex}  -> {"decoded": SPEC §9 form by field names}
#      {"op": "seal", key, kid, topic, fields} -> {"hex": envelope}  (fields: {"$map": ...})
#      {"op": "decode", hex, env?}             -> {"value": §9 form}  (plain cbor.decode)
#      {"op": "ping"}                          -> {"pong": mem_free}
# Refusals: {"error": CodecError code}; anything else: {"exc": "Type: text"}.
import binascii
import gc
import json
import sys

import cbor
import hmac256
import msg
from jform import from_json, named, to_json


def run(c):
    # c is the only reference to the parsed line: parts are popped off it before the codec runs,
    # so the JSON form is garbage by the time the heap is needed
    op = c["op"]
    if op == "ping":
        return "pong", gc.mem_free()
    if op == "decode":
        data = binascii.unhexlify(c.pop("hex"))
        gc.collect()
        if c.get("env"):
            tag, v = cbor.decode(data, True)
            return "value", [tag, to_json(v)]
        return "value", to_json(cbor.decode(data))
    k = hmac256.HmacKey(binascii.unhexlify(c["key"]))
    kid = c["kid"].encode()
    topic = c["topic"]
    if op == "open":
        data = binascii.unhexlify(c.pop("hex"))
        gc.collect()
        return "decoded", named(msg.open(k, kid, topic, data))
    if op == "seal":
        fields = from_json(c.pop("fields"))
        gc.collect()
        return "hex", binascii.hexlify(msg.seal(k, kid, topic, fields)).decode()
    raise ValueError(op)


while True:
    line = sys.stdin.readline()
    if not line:
        break
    if not line.strip():
        continue
    gc.collect()
    try:
        c = json.loads(line)
        line = None
        name, v = run(c)
        r = {name: v}
    except cbor.CodecError as e:
        r = {"error": e.code}
    except Exception as e:
        r = {"exc": "%s: %s" % (type(e).__name__, e)}
    c = v = None
    gc.collect()
    try:
        out = json.dumps(r)
    except MemoryError:
        out = '{"exc": "MemoryError: writing the answer"}'
    r = None
    print(out)
