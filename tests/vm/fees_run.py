# firmware/apps/fees.py on the VM, one case a line on stdin:
#   {"f": "validate" | "parking" | "rental" | "vending", "t": tariff, "a": [args after the tariff]}
# A map anywhere in "t" or "a" is {"$m": [[key, value], ...]} (JSON keys are only text; tariff keys
# are ints). Prints one line each: {"r": result} ("ok" for validate; tuples as lists), or
# {"e": [code, field]} for a FeeError, or {"x": "Type: text"} for anything else.
import json

from apps import fees
from apps.parkfee import parking
from apps.basket import vending
from apps.rentfee import rental_fee
from jform import cases


def dec(v):
    if isinstance(v, dict):
        m = {}
        for kv in v["$m"]:
            m[dec(kv[0])] = dec(kv[1])
        return m
    if isinstance(v, list):
        return [dec(x) for x in v]
    return v


FN = {"parking": parking, "rental": rental_fee, "vending": vending}

for c in cases():
    try:
        t = dec(c["t"])
        a = dec(c["a"])
        f = c["f"]
        if f == "validate":
            fees.validate(t)
            r = {"r": "ok"}
        else:
            v = FN[f](t, *a)
            r = {"r": list(v) if isinstance(v, tuple) else v}
    except fees.FeeError as e:
        r = {"e": [e.code, e.field]}
    except Exception as e:
        r = {"x": "%s: %s" % (type(e).__name__, e)}
    c = t = a = None
    print(json.dumps(r))
