# Fees from the signed tariff (protocol/FEES.md): integer minor units, integer seconds, no floats.
# The cloud recomputes every fee with its own implementation (host_tools/cloud/fees.py); the two
# share nothing but FEES.md. Allocation-light: validation and the time fee use only small ints
# (every tariff value is < 2^30), nothing is built. The shared time fee is here; parking's fee is
# apps/parkfee.py, a basket's price apps/basket.py, a rental's apps/rentfee.py: each kind carries only its own.

MAX_MONEY = 1073741823      # 2^30 - 1
MAX_DURATION = 1073741823   # seconds
MAX_UINT = 9223372036854775807
MAX_FREE_MIN = 17895697     # MAX_DURATION // 60
DAY = 86400
MAX_PRICES = 64
MAX_TAKEN = 32
MAX_QTY = 65535


class FeeError(Exception):
    # .code: bad_tariff, bad_time, no_rate, no_lost_price, bad_lines, unknown_sku
    # .field: the tariff key at fault (bad_tariff; 0 = not a map), the basket entry index, or -1
    def __init__(self, code, field=-1):
        super().__init__(code)
        self.code = code
        self.field = field


def _uint(v, lo, hi):
    return type(v) is int and lo <= v <= hi


def _arr(v):
    return isinstance(v, list) or isinstance(v, tuple)


def _sku(s):
    if type(s) is not str:
        return False
    n = len(s.encode())
    return 1 <= n <= 32


def _cur(c):
    if type(c) is not str or len(c) != 3:
        return False
    for ch in c:
        if not ("A" <= ch <= "Z"):
            return False
    return True


def _prices(p):
    if not _arr(p) or len(p) > MAX_PRICES:
        return False
    for i in range(len(p)):
        e = p[i]
        if not _arr(e) or len(e) != 2 or not _sku(e[0]) or not _uint(e[1], 0, MAX_MONEY):
            return False
        for j in range(i):
            if p[j][0] == e[0]:
                return False
    return True


# key -> (lo, hi) for the plain integer keys
_RANGES = {1: (0, MAX_UINT), 3: (0, MAX_FREE_MIN), 4: (1, MAX_DURATION), 5: (0, MAX_MONEY),
           6: (0, MAX_MONEY), 7: (0, MAX_MONEY), 9: (1, MAX_MONEY)}


def validate(t):
    if not isinstance(t, dict):
        raise FeeError("bad_tariff", 0)
    for k in range(1, 10):
        if k not in t:
            if k <= 2:
                raise FeeError("bad_tariff", k)
            continue
        v = t[k]
        if k == 2:
            ok = _cur(v)
        elif k == 8:
            ok = _prices(v)
        else:
            r = _RANGES[k]
            ok = _uint(v, r[0], r[1])
        if not ok:
            raise FeeError("bad_tariff", k)
    has_ps = 4 in t
    if has_ps != (5 in t):
        raise FeeError("bad_tariff", 5 if has_ps else 4)
    if 6 in t:
        if not has_ps or DAY % t[4] or t[6] < t[5]:
            raise FeeError("bad_tariff", 6)
    if 9 in t:
        if not has_ps or t[9] < t[5]:
            raise FeeError("bad_tariff", 9)


def _duration(t, t0, t1):
    # checks of FEES.md §4 steps 2-3, after validate(); returns t1 - t0
    if not (_uint(t0, 0, MAX_UINT) and _uint(t1, 0, MAX_UINT)) or t1 < t0 or t1 - t0 > MAX_DURATION:
        raise FeeError("bad_time")
    if 4 not in t:
        raise FeeError("no_rate")
    return t1 - t0


def _time_fee(t, d):
    if d <= t.get(3, 0) * 60:
        return 0
    ps = t[4]
    p = t[5]
    cap = t.get(6)
    if cap is None:
        return p * ((d + ps - 1) // ps)
    r = d % DAY
    part = p * ((r + ps - 1) // ps)
    if part > cap:
        part = cap
    days = d // DAY
    if days:
        full = p * (DAY // ps)
        if full > cap:
            full = cap
        return days * full + part
    return part

