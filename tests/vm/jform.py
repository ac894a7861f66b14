# SPEC §9 JSON form on the VM: bytes <-> {"$hex"}, dicts <-> {"$map": [[k, v], ...]} in wire order.
import binascii

import cbor


def to_json(v):
    t = type(v)
    if t is bytes or t is bytearray or t is memoryview:
        return {"$hex": binascii.hexlify(v).decode()}
    if t is dict:
        # wire order = bytewise order of the encoded keys (MicroPython dicts are unordered)
        ks = sorted(v, key=cbor.encode)
        return {"$map": [[k, to_json(v[k])] for k in ks]}
    if t is list or t is tuple:
        return [to_json(x) for x in v]
    return v


def from_json(v):
    t = type(v)
    if t is dict:
        if "$hex" in v:
            return binascii.unhexlify(v["$hex"])
        if "$map" in v:
            return {from_json(k): from_json(x) for k, x in v["$map"]}
        raise ValueError("plain JSON object")
    if t is list:
        return [from_json(x) for x in v]
    return v


def named(p):
    # a checked payload by field names (§4), unknown fields left out
    import msgschema
    t = p[0]
    r = {"type": msgschema.type_name(t)}
    for k, name in msgschema.names(t):
        if k and k in p:
            r[name] = to_json(p[k])
    return r


def cases():
    """A batch runner's input: one JSON document a line on stdin, each parsed into a freshly
    collected heap (a big batch then fits the 64K heap); blank lines are skipped."""
    import gc
    import json
    import sys
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            gc.collect()
            c = json.loads(line)
            line = None
            yield c
