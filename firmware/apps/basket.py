# The vending basket's price (protocol/FEES.md §6): apart from apps/fees.py so that only a vending
# cabinet carries it (a gate or a rental station never prices a basket).
from apps.fees import MAX_QTY, MAX_TAKEN, FeeError, _arr, _uint, validate


def vending(t, taken):
    validate(t)
    if not _arr(taken) or len(taken) > MAX_TAKEN:
        raise FeeError("bad_lines")
    prices = t.get(8, ())
    for i in range(len(taken)):
        e = taken[i]
        if not _arr(e) or len(e) != 2 or type(e[0]) is not str or not _uint(e[1], 0, MAX_QTY):
            raise FeeError("bad_lines", i)
        for sp in prices:
            if sp[0] == e[0]:
                break
        else:
            raise FeeError("unknown_sku", i)
    lines = []
    amount = 0
    for e in taken:
        q = e[1]
        if not q:
            continue
        sku = e[0]
        for ln in lines:
            if ln[0] == sku:
                ln[1] += q
                amount += q * ln[2]
                break
        else:
            for sp in prices:
                if sp[0] == sku:
                    lines.append([sku, q, sp[1]])
                    amount += q * sp[1]
                    break
    return amount, lines
