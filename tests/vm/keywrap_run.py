# Run protocol/vectors/keywrap.json (given on stdin) through firmware/rekey.py on the VM: each case's
# unwrap and proof, or its unwrap failure. Prints one JSON line: {name: "ok" | what went wrong}.
import json
import sys
from binascii import hexlify, unhexlify

import rekey

out = {}
for c in json.loads(sys.stdin.read()):
    k = rekey.unwrap(unhexlify(c["kek"]), unhexlify(c["wrapped"]))
    if "error" in c:
        out[c["name"]] = "ok" if k is None else "unwrapped: " + hexlify(k).decode()
    elif k is None or hexlify(k).decode() != c["key"]:
        out[c["name"]] = "key"
    elif hexlify(rekey.proof(k, c["kid"].encode())).decode() != c["proof"]:
        out[c["name"]] = "proof"
    else:
        out[c["name"]] = "ok"
print(json.dumps(out))
