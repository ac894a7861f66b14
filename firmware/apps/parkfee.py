# A parking fee (protocol/FEES.md §4) on the shared time fee of apps/fees.py: apart from it so that
# only a gate carries it.
from apps.fees import FeeError, _duration, _time_fee, validate


def parking(t, t0, t1, lost=False):
    validate(t)
    d = _duration(t, t0, t1)
    if lost and 7 not in t:
        raise FeeError("no_lost_price")
    fee = _time_fee(t, d)
    if lost and t[7] > fee:
        return t[7]
    return fee
