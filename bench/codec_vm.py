"""Codec micro-benchmark on the MicroPython VM (the unix port, 64-bit: object sizes there are
about twice an ESP32's, so the allocation figures are an upper bound for the board).

Run from the repo root: `.venv/bin/python bench/codec_vm.py`. Under CPython this file re-runs
itself on the VM; under MicroPython it measures. The last line printed is one JSON object.
"""
import sys

if sys.implementation.name != "micropython":
    import json
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.vm import run_vm

    proc = run_vm(Path(__file__).resolve(), timeout=300)
    out = proc.stdout.strip().splitlines()
    for ln in out[:-1]:
        print(ln)
    print(json.dumps(json.loads(out[-1])))
    sys.exit(0)

import gc
import time

import cbor
import cose
import hmac256
import msg

RUNS = 300
KID = b"gate-001:1"
TOPIC = "v1/dev/gate-001/up/rec"
REC = {
    0: 8, 8: 1042, 9: bytes(range(16)), 10: "S-20240611-0042", 11: "card:4111111111111111",
    12: 3, 13: 1718000000, 15: "A1B2C3D4", 16: 1250, 17: "EUR", 18: 1718003600,
    19: [["coffee-l", 2, 350], ["water-05", 1, 550]], 20: "normal",
}


def median_us(f):
    # sized once: appending would grow the list to 512 slots (a 4 KB block, hard to find in a
    # fragmented 64K heap after the firmware modules are compiled from source)
    ts = [0] * RUNS
    for i in range(RUNS):
        t = time.ticks_us()
        f()
        ts[i] = time.ticks_diff(time.ticks_us(), t)
    ts.sort()
    return ts[RUNS // 2]


def alloc(f):
    # bytes allocated by one call (result included), counted from a collected heap
    best = None
    for _ in range(5):
        gc.collect()
        a = gc.mem_alloc()
        r = f()
        d = gc.mem_alloc() - a
        r = None
        best = d if best is None or d < best else best
    return best


key = hmac256.HmacKey(bytes(range(32)))
payload = cbor.encode(REC)
env = cose.build(key, KID, TOPIC, payload)
assert msg.open(key, KID, TOPIC, env) == REC

enc = lambda: cbor.encode(REC)
dec = lambda: cbor.decode(payload)
build = lambda: cose.build(key, KID, TOPIC, payload)
verify = lambda: msg.open(key, KID, TOPIC, env)

res = {
    "encode_us": median_us(enc),
    "decode_us": median_us(dec),
    "build_us": median_us(build),
    "verify_us": median_us(verify),
    "build_alloc_bytes": alloc(build),
    "verify_alloc_bytes": alloc(verify),
}
print("payload", len(payload), "bytes; envelope", len(env), "bytes")
print("encode alloc", alloc(enc), "decode alloc", alloc(dec))
print("{" + ", ".join('"%s": %d' % (k, res[k]) for k in (
    "encode_us", "decode_us", "build_us", "verify_us", "build_alloc_bytes",
    "verify_alloc_bytes")) + "}")
