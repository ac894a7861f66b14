# Fuzz the firmware decoder on the VM. argv: seed n. Inputs are mutations (bit flips,
# truncations, insertions, interesting-byte overwrites, splices) of valid messages built here, plus
# random bytes; mutated payloads are also re-signed so they get past the MAC into decode + check.
# Only CodecError (with a §7 code) may come out. Prints "acc <hex>" for (up to 100) inputs the plain
# decoder accepted, for the host to cross-check against cbor2, then one JSON summary line.
import binascii
import gc
import json
import sys

import cbor
import cose
import hmac256
import msg

SEED = int(sys.argv[1])
N = int(sys.argv[2])
KEY = hmac256.HmacKey(bytes(range(32)))
KID = b"gate-001:1"
DEV = "v1/dev/gate-001/"

x = SEED * 2654435761 % 4294967296 or 1


def rnd(n):
    # xorshift32: deterministic on every port, no dependency on random's implementation
    global x
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    x ^= (x << 5) & 0xFFFFFFFF
    return x % n


PAYLOADS = (
    ("up/hello", {0: 1, 6: 1767225600, 8: 1, 10: "1.0.0", 11: "esp32-s3", 12: "power_on",
                  13: ["nfc", "relay"], 14: "gate", 15: 17}),
    ("up/status", {0: 2, 8: 2, 10: True}),
    ("up/hb", {0: 3, 8: 42, 10: 3600, 11: 81234, 12: 0, 13: -67, 14: 1, 99: [1, {"a": None}]}),
    ("up/evt", {0: 4, 8: 5, 10: "door", 11: {1: 2, 24: "x", -1: False, "a": b"\x00\xff"}}),
    ("up/evt", {0: 5, 8: 7, 10: "tamper", 11: {"zone": [[[[1]]]]}, 12: True}),
    ("up/rec", {0: 6, 8: 100, 9: bytes(16), 10: "s-1", 11: "card:4111", 12: 2, 13: 1767225600,
                14: False, 15: "auth-1", 16: 500, 17: "EUR"}),
    ("up/rec", {0: 7, 8: 102, 9: b"\xd1" * 16, 10: "s-1", 16: 1 << 40, 17: "JPY", 18: 1767227400}),
    ("up/rec", {0: 8, 8: 104, 9: b"\x5a" * 16, 10: "s-3", 11: "p", 12: 4, 13: 1767225600,
                16: 1200, 17: "EUR", 18: 1767229200, 19: [["coffee", 2, 350], ["water", 1, 500]],
                20: "normal"}),
    ("up/res", {0: 9, 7: b"\x0f" * 8, 8: 106, 10: 0, 11: "open", 12: {1: 2}, 13: 9001}),
    ("dn/cmd", {0: 20, 3: "gate-001", 4: 1767225900, 5: 1767225600, 6: 1767225600,
                7: b"\x0f\x1e" * 4, 8: 500, 10: "set_tariff",
                11: {1: 3, 2: "EUR", 8: [["coffee", 350], ["tea", 300]]}}),
    ("dn/ack", {0: 21, 3: "gate-001", 6: 1767225600, 8: 511, 10: 104, 11: True}),
    ("dn/time", {0: 22, 3: "gate-001", 6: 1767225607, 8: 513}),
)
TOPICS = [DEV + t for t, _ in PAYLOADS]
PAY = [cbor.encode(p) for _, p in PAYLOADS]
ENV = [cose.build(KEY, KID, TOPICS[i], PAY[i]) for i in range(len(PAY))]
PAYLOADS = None
INTERESTING = b"\x00\x17\x18\x19\x1a\x1b\x1c\x1f\x20\x38\x3b\x40\x58\x5a\x5f\x60\x78\x7f\x80\x98" \
              b"\x9f\xa0\xb8\xbf\xc0\xd1\xd8\xf4\xf5\xf6\xf7\xf8\xf9\xfa\xfb\xff"
CODES = msg.ERRORS


def mutate(b):
    b = bytearray(b)
    k = rnd(5)
    if k == 0:  # bit flips
        for _ in range(1 + rnd(3)):
            if b:
                i = rnd(len(b))
                b[i] ^= 1 << rnd(8)
    elif k == 1:  # truncation
        b = b[:rnd(len(b) + 1)]
    elif k == 2:  # insertion
        i = rnd(len(b) + 1)
        b[i:i] = bytes(rnd(256) for _ in range(1 + rnd(4)))
    elif k == 3:  # interesting bytes overwrite
        for _ in range(1 + rnd(2)):
            if b:
                b[rnd(len(b))] = INTERESTING[rnd(len(INTERESTING))]
    else:  # splice two valid messages
        o = ENV[rnd(len(ENV))] if rnd(2) else PAY[rnd(len(PAY))]
        b = b[:rnd(len(b) + 1)] + o[rnd(len(o) + 1):]
    return bytes(b)


def random_input():
    k = rnd(4)
    if k == 0:
        return bytes(rnd(256) for _ in range(rnd(64)))
    if k == 1:  # nesting and counts near the bounds
        head = INTERESTING[rnd(len(INTERESTING))]
        return bytes([0x81 + rnd(2) * 0x20] * rnd(12)) + bytes([head]) + bytes(rnd(256) for _ in range(rnd(12)))
    if k == 2:  # a big string or array header with little behind it
        return bytes([(0x40, 0x60, 0x80, 0xa0)[rnd(4)] | (24 + rnd(4))]) + bytes(rnd(256) for _ in range(rnd(10)))
    return bytes([0xd1, 0x84]) + bytes(rnd(256) for _ in range(rnd(80)))


counts = {}
fails = []
ok = 0
gc.collect()
mem0 = gc.mem_alloc()
peak = 0
n_acc = 0


def run(data, topic):
    global ok
    acc = False
    for mode in range(3):
        try:
            if mode == 0:
                cbor.decode(data)
                acc = True
            elif mode == 1:
                cbor.decode(data, True)
            else:
                msg.open(KEY, KID, topic, data)
            ok += 1
        except cbor.CodecError as e:
            c = e.code
            if c not in CODES:
                raise ValueError("unknown code " + repr(c))
            counts[c] = counts.get(c, 0) + 1
    return acc


for it in range(N):
    j = rnd(len(ENV))
    topic = TOPICS[j]
    k = rnd(10)
    try:
        if k < 4:
            data = mutate(ENV[j])
        elif k < 8:
            # mutated payload, validly signed: reaches payload decode and msg.check
            p = mutate(PAY[j])
            try:
                data = cose.build(KEY, KID, topic, p)
            except cbor.CodecError:
                data = p
        else:
            data = random_input()
        gc.collect()
        m = gc.mem_alloc()
        acc = run(data, topic)
        d = gc.mem_alloc() - m
        if d > peak:
            peak = d
        if acc and n_acc < 100 and data not in PAY:
            n_acc += 1
            print("acc", binascii.hexlify(data).decode())
    except Exception as e:
        if len(fails) < 5:
            fails.append({"it": it, "exc": "%s: %s" % (type(e).__name__, e),
                          "hex": binascii.hexlify(data).decode()})
        else:
            fails.append(None)
    data = p = None

gc.collect()
mem1 = gc.mem_alloc()
print(json.dumps({"n": N, "ok": ok, "codes": counts, "failures": [f for f in fails if f],
                  "n_failures": len(fails), "mem_start": mem0, "mem_end": mem1, "peak": peak}))
