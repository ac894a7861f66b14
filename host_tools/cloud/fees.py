"""Fee rules of protocol/FEES.md, the cloud's own implementation.

The device computes every fee with firmware/apps/fees.py; the cloud recomputes it here, from the
same signed tariff, and the two must agree exactly (tests/test_fees.py runs both on the same
random tariffs and sessions). Nothing is shared but FEES.md: this module parses the tariff into a
typed `Tariff` once and computes from that; the firmware works on the raw map.

    validate(tariff) -> None                       raises FeeError("bad_tariff", key)
    parking(tariff, t0, t1, lost=False) -> int
    rental(tariff, t0, t1) -> (int, bool)          (amount, converted to a purchase)
    vending(tariff, taken) -> (int, [[sku, qty, unit_price], ...])
    parse(tariff) -> Tariff                        validate and keep the typed form

Integer minor units and integer seconds only; no float is ever produced or accepted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

MAX_MONEY = 2**30 - 1
MAX_DURATION = 2**30 - 1
MAX_UINT = 2**63 - 1
MAX_FREE_MIN = MAX_DURATION // 60
DAY = 24 * 60 * 60
MAX_PRICES = 64
MAX_TAKEN = 32
MAX_QTY = 2**16 - 1
SKU_BYTES = (1, 32)

_CURRENCY = re.compile(r"[A-Z]{3}")

Line = list  # [sku: str, qty: int, unit_price: int]


class FeeError(ValueError):
    """A fee cannot be computed. `code` is one of FEES.md §7; `field` the tariff key at fault
    (bad_tariff, 0 = not a map), the basket entry index (bad_lines / unknown_sku), else -1."""

    def __init__(self, code: str, field: int = -1) -> None:
        super().__init__(code if field == -1 else f"{code} (field {field})")
        self.code = code
        self.field = field


@dataclass(frozen=True)
class Rate:
    period_s: int
    period_price: int
    daily_cap: int | None

    def fee(self, seconds: int) -> int:
        """The time fee of FEES.md §3 without the grace window: started periods, each 24 h block
        from entry capped."""
        if self.daily_cap is None:
            return self.period_price * -(-seconds // self.period_s)
        full_blocks, rest = divmod(seconds, DAY)
        per_block = min(self.daily_cap, self.period_price * (DAY // self.period_s))
        last_block = min(self.daily_cap, self.period_price * -(-rest // self.period_s))
        return full_blocks * per_block + last_block


@dataclass(frozen=True)
class Tariff:
    version: int
    currency: str
    free_s: int
    rate: Rate | None
    lost_price: int | None
    prices: dict[str, int]          # sku -> unit price, in the tariff's order ({} without key 8)
    purchase_price: int | None

    def time_fee(self, seconds: int) -> int:
        assert self.rate is not None
        if seconds <= self.free_s:
            return 0
        return self.rate.fee(seconds)


# --- validation --------------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _in(v: Any, lo: int, hi: int) -> bool:
    return _is_int(v) and lo <= v <= hi


def _is_array(v: Any) -> bool:
    return isinstance(v, (list, tuple))


def _sku_ok(s: Any) -> bool:
    return isinstance(s, str) and SKU_BYTES[0] <= len(s.encode("utf-8", "surrogatepass")) <= SKU_BYTES[1]


def _price_list(v: Any) -> dict[str, int] | None:
    if not _is_array(v) or len(v) > MAX_PRICES:
        return None
    out: dict[str, int] = {}
    for entry in v:
        if not (_is_array(entry) and len(entry) == 2):
            return None
        sku, price = entry
        if not _sku_ok(sku) or not _in(price, 0, MAX_MONEY) or sku in out:
            return None
        out[sku] = price
    return out


_FIELD_RULES: dict[int, Any] = {
    1: lambda v: _in(v, 0, MAX_UINT),
    2: lambda v: isinstance(v, str) and _CURRENCY.fullmatch(v) is not None,
    3: lambda v: _in(v, 0, MAX_FREE_MIN),
    4: lambda v: _in(v, 1, MAX_DURATION),
    5: lambda v: _in(v, 0, MAX_MONEY),
    6: lambda v: _in(v, 0, MAX_MONEY),
    7: lambda v: _in(v, 0, MAX_MONEY),
    8: lambda v: _price_list(v) is not None,
    9: lambda v: _in(v, 1, MAX_MONEY),
}
_REQUIRED = (1, 2)


def parse(tariff: Any) -> Tariff:
    """Validate a set_tariff args map (FEES.md §2) and return its typed form."""
    if not isinstance(tariff, Mapping):
        raise FeeError("bad_tariff", 0)
    for key, rule in _FIELD_RULES.items():   # ascending key order
        if key not in tariff:
            if key in _REQUIRED:
                raise FeeError("bad_tariff", key)
            continue
        if not rule(tariff[key]):
            raise FeeError("bad_tariff", key)

    period_s, period_price = tariff.get(4), tariff.get(5)
    if (period_s is None) != (period_price is None):
        raise FeeError("bad_tariff", 4 if period_s is None else 5)
    cap = tariff.get(6)
    if cap is not None and (period_s is None or DAY % period_s != 0 or cap < period_price):
        raise FeeError("bad_tariff", 6)
    purchase = tariff.get(9)
    if purchase is not None and (period_s is None or purchase < period_price):
        raise FeeError("bad_tariff", 9)

    prices = _price_list(tariff[8]) if 8 in tariff else None
    return Tariff(
        version=tariff[1],
        currency=tariff[2],
        free_s=60 * tariff.get(3, 0),
        rate=None if period_s is None or period_price is None else Rate(period_s, period_price, cap),
        lost_price=tariff.get(7),
        prices=prices or {},
        purchase_price=purchase,
    )


def validate(tariff: Any) -> None:
    parse(tariff)


# --- fees --------------------------------------------------------------------------------------

def _timed(tariff: Any, t0: Any, t1: Any) -> tuple[Tariff, int]:
    tf = parse(tariff)
    if not (_in(t0, 0, MAX_UINT) and _in(t1, 0, MAX_UINT)):
        raise FeeError("bad_time")
    seconds = t1 - t0
    if not 0 <= seconds <= MAX_DURATION:
        raise FeeError("bad_time")
    if tf.rate is None:
        raise FeeError("no_rate")
    return tf, seconds


def parking(tariff: Any, t0: int, t1: int, lost: bool = False) -> int:
    """Amount of a stay from t0 to t1 (FEES.md §4); a lost ticket pays max(lost_price, fee)."""
    tf, seconds = _timed(tariff, t0, t1)
    if lost and tf.lost_price is None:
        raise FeeError("no_lost_price")
    fee = tf.time_fee(seconds)
    return max(fee, tf.lost_price) if lost else fee  # type: ignore[type-var]


def rental(tariff: Any, t0: int, t1: int) -> tuple[int, bool]:
    """(amount, converted) of a rental from t0 to t1 (FEES.md §5)."""
    tf, seconds = _timed(tariff, t0, t1)
    fee = tf.time_fee(seconds)
    if tf.purchase_price is not None and fee >= tf.purchase_price:
        return tf.purchase_price, True
    return fee, False


def vending(tariff: Any, taken: Sequence[Sequence[Any]]) -> tuple[int, list[Line]]:
    """(total, lines) of a vending basket (FEES.md §6)."""
    tf = parse(tariff)
    if not _is_array(taken) or len(taken) > MAX_TAKEN:
        raise FeeError("bad_lines")
    for index, entry in enumerate(taken):
        if not (_is_array(entry) and len(entry) == 2 and isinstance(entry[0], str)
                and _in(entry[1], 0, MAX_QTY)):
            raise FeeError("bad_lines", index)
        if entry[0] not in tf.prices:
            raise FeeError("unknown_sku", index)

    qty: dict[str, int] = {}          # dicts keep first-insertion order
    for sku, n in taken:
        if n:
            qty[sku] = qty.get(sku, 0) + n
    lines: list[Line] = [[sku, n, tf.prices[sku]] for sku, n in qty.items()]
    return sum(n * price for _, n, price in lines), lines
