# A rental's fee (protocol/FEES.md §5) on the shared time fee of apps/fees.py: apart from it so that
# only a rental station carries it.
from apps.fees import _duration, _time_fee, validate


def rental_fee(t, t0, t1):
    """(amount, converted) of a rental from t0 to t1: rate x started periods, capped; at the
    purchase price it becomes a purchase."""
    validate(t)
    fee = _time_fee(t, _duration(t, t0, t1))
    q = t.get(9)
    if q is not None and fee >= q:
        return q, True
    return fee, False
