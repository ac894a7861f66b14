"""Pay-after ("use first, pay after", deposit-free) providers: the interface and a scripted double.

The order life cycle follows WeChat Pay Score service orders (ANCHORS.md):

    CREATED --start--> DOING --complete--> DONE
       |                 |
       +----cancel-------+------> REVOKED
       |
       +--expire (past its expiry, still CREATED)--> EXPIRED

- `create` is idempotent by `order_no` (like Alipay's out_order_no): the same order_no with
  identical parameters returns the existing order, whatever its state now; the same order_no with
  different parameters raises `OrderConflict` and changes nothing.
- Retrying a call that already took effect is idempotent too (a client that timed out cannot know
  whether its call landed): `start` on DOING, `cancel` on REVOKED and `complete` on DONE with the
  identical amount, currency and lines return the order unchanged. Every other call that does not
  fit the diagram raises `IllegalTransition`; an error never changes state.
- `complete` charges `amount` (integer minor units, `amount <= limit`, same currency) else
  `LimitExceeded` / `BadRequest`.
- Money is integer minor units only (`type(x) is int`, bool refused); never a float.

`ScriptedProvider` is the in-memory test double used by the simulator, the demo and the tests:
thread-safe, with refused payers (credit score too low), per-payer credit limits (a request above
the payer's limit is refused), deposit mode (the provider freezes a deposit instead of trusting
the score: the order's `mode` is "deposit"), artificial latency, scripted failures (timeouts that
either did or did not take effect at the provider), a settable clock, and every order's full
transition history.
"""
from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

# -- states and errors -------------------------------------------------------------------------


class OrderState(str, enum.Enum):
    CREATED = "CREATED"
    DOING = "DOING"
    DONE = "DONE"
    REVOKED = "REVOKED"
    EXPIRED = "EXPIRED"

    @property
    def final(self) -> bool:
        return self in (OrderState.DONE, OrderState.REVOKED, OrderState.EXPIRED)


MODE_CREDIT = "credit"     # pay-after on the credit score (auth mode 0)
MODE_DEPOSIT = "deposit"   # the provider froze a deposit (auth mode 1)


class PayAfterError(Exception):
    """Base of every provider error; `code` is a short stable name (fits an `auth` reason)."""
    code = "provider_error"
    transient = False      # True: retrying later may succeed (timeouts, outages)

    def __init__(self, detail: str = "", order_no: str | None = None):
        self.detail = detail
        self.order_no = order_no
        super().__init__(f"{self.code}: {detail}" if detail else self.code)


class BadRequest(PayAfterError):
    code = "bad_request"          # malformed parameters (non-int money, bad currency, ...)


class OrderNotFound(PayAfterError):
    code = "no_order"


class OrderConflict(PayAfterError):
    code = "order_conflict"       # same order_no, different parameters


class IllegalTransition(PayAfterError):
    code = "illegal_state"


class LimitExceeded(PayAfterError):
    code = "over_limit"           # complete amount > the order's limit


class PayerRefused(PayAfterError):
    code = "credit_refused"       # the provider will not trust this payer (score, limit)


class ProviderTimeout(PayAfterError):
    code = "provider_timeout"     # outcome unknown: the call may or may not have landed
    transient = True


class ProviderUnavailable(PayAfterError):
    code = "provider_down"        # refused before doing anything
    transient = True


# -- the order ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    frm: OrderState | None        # None: the order was created
    to: OrderState
    at: float
    op: str                       # create | start | complete | cancel | expire


@dataclass(frozen=True)
class Order:
    """A snapshot (immutable): providers hand out copies, never their live state."""
    order_no: str
    payer: str
    device: str                   # the start device
    sid: str
    limit: int                    # the most `complete` may charge, minor units
    cur: str
    expires_s: int                # CREATED orders expire this long after creation
    mode: str                     # MODE_CREDIT | MODE_DEPOSIT
    state: OrderState
    created_at: float
    expires_at: float
    amount: int | None = None     # charged (DONE only)
    lines: tuple = ()
    end_device: str | None = None
    t1: int | None = None
    history: tuple[Transition, ...] = ()

    @property
    def params(self) -> tuple:
        """What identifies an idempotent `create`."""
        return (self.payer, self.device, self.sid, self.limit, self.cur, self.expires_s)


@runtime_checkable
class PayAfterProvider(Protocol):
    """What the session service needs from a pay-after provider. All money is integer minor units."""

    def create(self, order_no: str, payer: str, device: str, sid: str, limit: int, cur: str,
               expires_s: int) -> Order:
        """Open an order (CREATED); idempotent by order_no (identical params -> the same order,
        different params -> OrderConflict). PayerRefused when the payer is not trusted for `limit`."""
        ...

    def start(self, order_no: str) -> Order:
        """CREATED -> DOING (the service has begun)."""
        ...

    def complete(self, order_no: str, amount: int, cur: str, lines: Sequence = (),
                 end_device: str | None = None, t1: int | None = None) -> Order:
        """DOING -> DONE, charging `amount` (<= limit, else LimitExceeded)."""
        ...

    def cancel(self, order_no: str) -> Order:
        """CREATED / DOING -> REVOKED (nothing charged)."""
        ...

    def expire(self, now: float | None = None) -> list[Order]:
        """Every CREATED order past its expiry -> EXPIRED; the orders that expired."""
        ...

    def get(self, order_no: str) -> Order:
        """The order (OrderNotFound if none)."""
        ...


# -- validation helpers ------------------------------------------------------------------------


def _money(name: str, v: Any) -> int:
    if type(v) is not int or v < 0:
        raise BadRequest(f"{name} must be a non-negative int (minor units), not {v!r}")
    return v


def _cur(v: Any) -> str:
    if not (isinstance(v, str) and len(v) == 3 and v.isascii() and v.isalpha() and v.isupper()):
        raise BadRequest(f"currency must be ISO 4217 alphabetic, not {v!r}")
    return v


def _text(name: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise BadRequest(f"{name} must be a non-empty string")
    return v


def _lines(lines: Sequence) -> tuple:
    out = []
    for ln in lines or ():
        ln = tuple(ln)
        if len(ln) != 3 or not isinstance(ln[0], str) or any(type(x) is not int or x < 0 for x in ln[1:]):
            raise BadRequest(f"a line is (sku, qty, unit_price) with int money, not {ln!r}")
        out.append(ln)
    return tuple(out)


# -- the scripted double -----------------------------------------------------------------------


@dataclass
class _Fail:
    op: str                       # create | start | complete | cancel | get | "*"
    exc: type[PayAfterError]
    applied: bool                 # True: the call took effect at the provider, then "timed out"
    order_no: str | None          # only calls for this order (None: any)


@dataclass
class Call:
    op: str
    order_no: str | None
    at: float
    outcome: str                  # "ok" or an error code


class ScriptedProvider:
    """In-memory, thread-safe pay-after provider with scriptable behaviour.

        p = ScriptedProvider()
        p.refuse("plate-bad")                 # credit score too low: create raises PayerRefused
        p.set_credit("acct-7", 3000)          # at most 30.00 may be guaranteed for this payer
        p.set_deposit("acct-9")               # orders for acct-9 are deposit-mode
        p.latency_s = 0.2                     # every call sleeps first
        p.fail_next("create", ProviderTimeout, applied=True)   # lands, then the caller times out
    """

    def __init__(self, clock: Callable[[], float] = time.time, default_credit: int | None = None):
        self._lock = threading.RLock()
        self._orders: dict[str, Order] = {}
        self._refused: dict[str, str] = {}
        self._credit: dict[str, int] = {}
        self._deposit: set[str] = set()
        self._fails: list[_Fail] = []
        self.default_credit = default_credit   # None: unlimited unless set per payer
        self.latency_s = 0.0
        self.clock = clock
        self.calls: list[Call] = []

    # -- scripting
    def refuse(self, payer: str, why: str = "credit score too low") -> None:
        with self._lock:
            self._refused[payer] = why

    def allow(self, payer: str) -> None:
        with self._lock:
            self._refused.pop(payer, None)

    def set_credit(self, payer: str, limit: int | None) -> None:
        with self._lock:
            if limit is None:
                self._credit.pop(payer, None)
            else:
                self._credit[payer] = _money("credit", limit)

    def set_deposit(self, payer: str, on: bool = True) -> None:
        with self._lock:
            (self._deposit.add if on else self._deposit.discard)(payer)

    def fail_next(self, op: str, exc: type[PayAfterError] = ProviderTimeout, *, times: int = 1,
                  applied: bool = False, order_no: str | None = None) -> None:
        """The next `times` calls of `op` ("*" any) raise `exc`; with applied=True the call takes
        effect first (a timeout after the provider acted: the caller cannot tell)."""
        with self._lock:
            self._fails.extend(_Fail(op, exc, applied, order_no) for _ in range(times))

    # -- queries
    def orders(self) -> list[Order]:
        with self._lock:
            return sorted(self._orders.values(), key=lambda o: (o.created_at, o.order_no))

    def history(self, order_no: str) -> tuple[Transition, ...]:
        return self.get(order_no).history

    # -- the interface
    def create(self, order_no: str, payer: str, device: str, sid: str, limit: int, cur: str,
               expires_s: int) -> Order:
        for name, value in (("order_no", order_no), ("payer", payer), ("device", device), ("sid", sid)):
            _text(name, value)
        _money("limit", limit)
        _cur(cur)
        _money("expires_s", expires_s)
        params = (payer, device, sid, limit, cur, expires_s)

        def act() -> Order:
            old = self._orders.get(order_no)
            if old is not None:
                if old.params != params:
                    raise OrderConflict(f"order {order_no} exists with other parameters", order_no)
                return old
            why = self._refused.get(payer)
            if why is not None:
                raise PayerRefused(why, order_no)
            credit = self._credit.get(payer, self.default_credit)
            if credit is not None and limit > credit:
                raise PayerRefused(f"limit {limit} above the payer's credit {credit}", order_no)
            now = self.clock()
            o = Order(order_no, payer, device, sid, limit, cur, expires_s,
                      MODE_DEPOSIT if payer in self._deposit else MODE_CREDIT, OrderState.CREATED,
                      now, now + expires_s, history=(Transition(None, OrderState.CREATED, now, "create"),))
            self._orders[order_no] = o
            return o
        return self._call("create", order_no, act)

    def start(self, order_no: str) -> Order:
        def act() -> Order:
            o = self._get(order_no)
            if o.state is OrderState.DOING:
                return o                                  # a retry of a call that landed
            return self._move(o, OrderState.DOING, "start", (OrderState.CREATED,))
        return self._call("start", order_no, act)

    def complete(self, order_no: str, amount: int, cur: str, lines: Sequence = (),
                 end_device: str | None = None, t1: int | None = None) -> Order:
        _money("amount", amount)
        _cur(cur)
        lns = _lines(lines)
        if t1 is not None:
            _money("t1", t1)

        def act() -> Order:
            o = self._get(order_no)
            if o.state is OrderState.DONE and (o.amount, o.cur, o.lines) == (amount, cur, lns):
                return o                                  # a retry of a call that landed
            if o.state is not OrderState.DOING:
                raise IllegalTransition(f"complete needs DOING, order is {o.state.value}", order_no)
            if cur != o.cur:
                raise BadRequest(f"currency {cur} is not the order's {o.cur}", order_no)
            if amount > o.limit:
                raise LimitExceeded(f"amount {amount} above the limit {o.limit}", order_no)
            return self._move(o, OrderState.DONE, "complete", (OrderState.DOING,), amount=amount,
                              lines=lns, end_device=end_device or o.device, t1=t1)
        return self._call("complete", order_no, act)

    def cancel(self, order_no: str) -> Order:
        def act() -> Order:
            o = self._get(order_no)
            if o.state is OrderState.REVOKED:
                return o
            return self._move(o, OrderState.REVOKED, "cancel", (OrderState.CREATED, OrderState.DOING))
        return self._call("cancel", order_no, act)

    def expire(self, now: float | None = None) -> list[Order]:
        with self._lock:
            now = self.clock() if now is None else now
            out = []
            for o in list(self._orders.values()):
                if o.state is OrderState.CREATED and now >= o.expires_at:
                    out.append(self._move(o, OrderState.EXPIRED, "expire", (OrderState.CREATED,), at=now))
            return out

    def get(self, order_no: str) -> Order:
        return self._call("get", order_no, lambda: self._get(order_no))

    # -- internals
    def _get(self, order_no: str) -> Order:
        o = self._orders.get(order_no)
        if o is None:
            raise OrderNotFound(f"no order {order_no}", order_no)
        return o

    def _move(self, o: Order, to: OrderState, op: str, allowed: tuple[OrderState, ...],
              at: float | None = None, **changes: Any) -> Order:
        if o.state not in allowed:
            raise IllegalTransition(f"{op} not allowed from {o.state.value}", o.order_no)
        at = self.clock() if at is None else at
        new = replace(o, state=to, history=o.history + (Transition(o.state, to, at, op),), **changes)
        self._orders[o.order_no] = new
        return new

    def _take_fail(self, op: str, order_no: str | None) -> _Fail | None:
        for i, f in enumerate(self._fails):
            if f.op in (op, "*") and (f.order_no is None or f.order_no == order_no):
                return self._fails.pop(i)
        return None

    def _call(self, op: str, order_no: str | None, act: Callable[[], Order]) -> Order:
        if self.latency_s > 0:
            time.sleep(self.latency_s)                    # outside the lock: calls overlap
        with self._lock:
            fail = self._take_fail(op, order_no)
            try:
                if fail is not None and not fail.applied:
                    raise fail.exc(f"scripted {fail.exc.code} on {op}", order_no)
                result = act()
                if fail is not None:
                    raise fail.exc(f"scripted {fail.exc.code} on {op} (applied)", order_no)
            except PayAfterError as e:
                self.calls.append(Call(op, order_no, self.clock(), e.code))
                raise
            self.calls.append(Call(op, order_no, self.clock(), "ok"))
            return result
