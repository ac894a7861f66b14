# Uplink.record on the VM: a well-formed money record is checked, signed and journaled; a
# malformed one is refused (CodecError) before it is signed, with nothing journaled. argv: board
# dir. Prints one JSON object (the facts the host test asserts on) as its last line.
import json
import os
import sys

import journal
import msg
import store
from agent import Signer
from cbor import CodecError
from hal import flash
from hmac256 import HmacKey
from uplink import Uplink

D = sys.argv[1]
os.chdir(D)  # the store's files (the seq counter)
KID = b"dev1:1"
TOPIC = "v1/dev/dev1/up/rec"
alarms = []
j = journal.Journal(flash.mount({"flash": {"dir": D, "blocks": 32}}) + "/j", 20000)
key = HmacKey(b"k" * 32)


class Link:  # what Uplink asks of the MQTT client before anything is sent: its subscription
    subs = []

    def subscribe(self, topic, qos, handler):
        self.subs.append(topic)


up = Uplink(Signer(key, KID, "dev1"), store.Counter("seq"), Link(), "v1/dev/dev1/", j,
            lambda code, detail=None: alarms.append([code, detail]))
assert Link.subs == ["v1/dev/dev1/dn/ack"] and up.topic == TOPIC


def close(k=None, v=None):
    f = {10: "S-1", 11: "card:1", 13: 1700000000, 16: 250, 17: "EUR", 18: 1700000600}
    if k is not None:
        f[k] = v
    return f


out = {}
seq = up.record(8, close())
p = msg.open(key, KID, TOPIC, [d for s, d in j.pending()][0])
out["ok"] = [seq, j.last_seq, j.depth(), up.committed(seq), p[0], p[8], p[16], p[17]]
head = [j.last_seq, bytes(j.last_hash), j.depth()]
bad = {
    "float_amount": close(16, 2.5),     # money is integer minor units, never a float
    "negative_amount": close(16, -1),
    "no_currency": {10: "S-1", 11: "card:1", 13: 1700000000, 16: 250, 18: 1700000600},
    "bad_currency": close(17, "euro"),
    "long_reason": close(20, "x" * 17),
    "sid_not_text": close(10, 7),
}
for name, f in bad.items():
    nxt = up.seq.value + 1
    try:
        up.record(8, f, nxt)
        out[name] = "recorded"
    except CodecError as e:
        out[name] = [e.code, [j.last_seq, bytes(j.last_hash), j.depth()] == head, up.committed(nxt)]
try:
    up.record(99, close())  # not a record type at all
    out["unknown_type"] = "recorded"
except CodecError as e:
    out["unknown_type"] = [e.code, j.depth()]
up.on_ack(0, False, [seq])
out["alarms"] = alarms
print(json.dumps(out))
