# protocol/vectors cases, one JSON object a line on stdin ({name, key, kid, topic, hex}); prints
# one line each: {"name", "decoded": §9 form} or {"name", "error": code} or {"name", "exc": text}.
import binascii
import json

import cbor
import hmac256
import msg
from jform import cases, named


def unhex(v):
    if type(v) is str:
        return binascii.unhexlify(v)
    b = bytearray()
    for h, n in v:
        b.extend(binascii.unhexlify(h) * n if n > 1 else binascii.unhexlify(h))
    return bytes(b)


for c in cases():
    r = {"name": c["name"]}
    try:
        k = hmac256.HmacKey(binascii.unhexlify(c["key"]))
        r["decoded"] = named(msg.open(k, c["kid"].encode(), c["topic"], unhex(c["hex"])))
    except cbor.CodecError as e:
        r["error"] = e.code
    except Exception as e:
        r["exc"] = "%s: %s" % (type(e).__name__, e)
    c = None
    print(json.dumps(r))
