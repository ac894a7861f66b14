"""The session service: authorises pay-after sessions for devices and settles them.

    svc = SessionService(registry, provider, "127.0.0.1", broker.cloud_port, "cloud", "pw").start()
    svc.bind("SH-A12345", "acct-42")                 # plate / QR / tag -> pay-after account
    svc.set_tariff("gate-001", {1: 1, 2: "EUR", 3: 15, 4: 3600, 5: 250, 6: 1800, 7: 3000})
    worker = IngestWorker(..., on_commit=svc.on_commit)   # the settle path
    svc.orders(); svc.flags(); svc.settle_status("gate-001", "s-1")

Input: `auth_req` (type 10) on `v1/dev/+/up/req`, verified with the registry key (open_message:
kid, MAC with the topic as AAD, schema). Output: the signed command `auth` {1: sid, 2: granted,
3?: auth ref, 4?: limit, 5?: reason, 6?: mode} (or `paid` {1: sid, 2: auth ref}) through a
CommandClient, numbered from the registry's per-device counter. Committed `sess_close` records
(IngestWorker `on_commit`, or `settle_ledger` polling a ledger) settle the orders.

Rules decided here (the report of the session module lists them too):

- Order number: `f"{device}:{sid}"`; the auth ref sent to the device is the order number.
- Purposes per device kind: gate entry/exit, vending vend, rental rent/return; reauth for any.
  Another purpose for the kind is denied "bad purpose".
- entry / vend / rent: the payer id (plate, QR, tag) must be bound to an account (`bind`);
  unbound at a gate -> denied "scan QR to pay" (the QR path: `pay_by_qr`, then `paid`); unbound
  elsewhere -> denied "unknown payer". Bound -> provider.create(limit, tariff currency) + start ->
  granted with the limit and the mode (0 credit, 1 deposit). PayerRefused -> denied
  "credit refused". No tariff known for the device -> denied "no tariff".
- Limit (the most a pay-after order may charge): `set_limit(device, n)` if set; else gate:
  max(lost_price, 7 x daily_cap); rental: purchase_price; vending: the dearest price x
  `vend_max_items`; else `default_limit`.
- Provider failure that may pass (timeout, outage) on entry / vend / rent / reauth: an explicit
  deny, reason "provider unavailable" (retryable: a new auth_req re-runs the idempotent
  create+start, which finds any order the failed call did leave). `sweep()` later cancels the
  orders of such sessions that were never granted (after `doubt_s`) and expires stale CREATED ones.
- exit / return: the cloud recomputes the fee (host_tools/cloud/fees) from the tariff it last
  sent the device, t0 from the request (else the entry it saw) and t1 = the request's iat (else
  now; an iat more than `max_skew_s` from the cloud's clock is flagged "clock_skew" and the
  cloud's time is used). The cloud's amount is charged. A device amount that differs is FLAGGED ("fee_mismatch",
  both amounts kept), never adjusted silently. If the fee cannot be computed (no tariff, FeeError)
  the device's amount is charged and the session is flagged "fee_unverified". An amount above the
  order's limit charges the limit and flags "over_limit" (the rest is for collection). Then
  provider.complete and a grant (open the barrier / accept the return). A transient failure of
  complete still grants (the DOING order is the credit guarantee): settle status "pending",
  retried by the sess_close settle path and `sweep()`. An exit with no order but a bound, trusted
  payer (entered offline, never re-authorised) opens the order then and completes it; otherwise
  a gate denies "scan QR to pay" (the cloud fee is kept for `pay_by_qr`), others "no order".
- reauth (a session opened offline): the payer is checked now (binding, create+start). Refused
  or unknown -> flag "reauth_refused" (an alarm: logged at ERROR) and denied, so the device flags
  it too; never dropped silently.
- sess_close (settle): recompute the fee from the record (t0, t1, reason "lost" for parking, the
  lines' [sku, qty] for vending); differs from the record's amount -> "fee_mismatch". Order DOING
  -> complete with the cloud amount; DONE with a charge different from the recompute ->
  "charge_mismatch"; no order but a bound payer (offline session never re-authorised) -> a late
  order create+start+complete; refused -> "offline_refused"; nothing to charge it to -> "no_order".
  REVOKED / EXPIRED order and money due -> "order_closed".
- The order of a session is always `device:sid`; an auth ref from the device naming another
  order is flagged "auth_mismatch" and not followed (a device can never close another's order).
  A different payer at exit than at entry is flagged "payer_mismatch" (the entry's order is used).
- Idempotency: an auth_req with a (device, seq) already answered gets the same answer again (the
  device may have missed it); the same seq with other content is refused ("seq_reuse", no
  answer); concurrent duplicates are serialised per session. A new auth_req for the same session
  re-runs the decision on top of the provider's idempotent order. A flag is recorded once per
  (device, sid, kind).
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

from host_tools.cloud.commands import Command, CommandClient
from host_tools.cloud.ledger import Ledger, Record
from host_tools.cloud.payafter import (MODE_DEPOSIT, IllegalTransition, LimitExceeded, Order,
                                       OrderConflict, OrderNotFound, OrderState, PayAfterError,
                                       PayAfterProvider, PayerRefused)
from host_tools.cloud.registry import Registry, RegistryError
from host_tools.protocol import ProtocolError, open_message, parse_topic

log = logging.getLogger("edgepay.sessions")

REQ_FILTER = "v1/dev/+/up/req"
PURPOSES = {"gate": {"entry", "exit", "reauth"}, "vending": {"vend", "reauth"},
            "rental": {"rent", "return", "reauth"}}
OPENING = {"entry", "vend", "rent"}
CLOSING = {"exit", "return"}

# auth reasons (<= 32 characters, SPEC: auth arg 5)
R_QR = "scan QR to pay"
R_UNKNOWN = "unknown payer"
R_REFUSED = "credit refused"
R_UNAVAILABLE = "provider unavailable"
R_NO_TARIFF = "no tariff"
R_PURPOSE = "bad purpose"
R_CLOSED = "order closed"
R_CONFLICT = "order conflict"
R_NO_ORDER = "no order"


@dataclass
class Flag:
    kind: str
    device: str
    sid: str
    detail: str
    order_no: str | None = None
    device_amount: int | None = None
    cloud_amount: int | None = None
    charged: int | None = None
    cur: str | None = None
    at: float = 0.0


@dataclass
class SessionState:
    """What the service knows of one (device, sid)."""
    device: str
    sid: str
    kind: str
    payer: str | None = None            # the id the device saw (plate, QR, tag)
    account: str | None = None          # the pay-after account it is bound to
    order_no: str | None = None
    t0: int | None = None
    status: str = "new"                 # new | authorized | denied | awaiting_qr | paid | closing | settled | pending | unpaid
    granted: bool | None = None
    limit: int | None = None
    cur: str | None = None
    qr_amount: int | None = None        # the fee the QR path will charge
    device_amount: int | None = None    # last amount the device reported (exit/return or sess_close)
    cloud_amount: int | None = None     # last amount the cloud computed
    charged: int | None = None          # what the provider charged (DONE)
    closed: bool = False                # a sess_close was settled
    last_deny_at: float | None = None   # a transient deny (orders in doubt: swept later)
    answers: int = 0


@dataclass
class TariffState:
    args: dict
    command: Command | None = None
    sent_at: float = 0.0


def _lines_taken(lines: list | None) -> list:
    return [[ln[0], ln[1]] for ln in (lines or [])]


class SessionService:
    """Authorises pay-after sessions (auth_req -> signed `auth`) and settles closed ones (see the
    module doc for every rule). State (bindings, tariffs sent, sessions, flags) is in memory."""

    def __init__(self, registry: Registry, provider: PayAfterProvider, host: str, port: int,
                 username: str, password: str, *, client_id: str | None = None, group: str | None = None,
                 ca_file: str | None = None, workers: int = 8, clock: Callable[[], float] = time.time,
                 bindings: dict[str, str] | None = None, order_expires_s: int = 300,
                 default_limit: int = 10_000, vend_max_items: int = 5, cmd_ttl: int = 60,
                 doubt_s: float = 120.0, answer_cache: int = 10_000, max_skew_s: int = 300):
        self.registry = registry
        self.provider = provider
        self.clock = clock
        self.order_expires_s = order_expires_s
        self.default_limit = default_limit
        self.vend_max_items = vend_max_items
        self.cmd_ttl = cmd_ttl
        self.doubt_s = doubt_s
        self.max_skew_s = max_skew_s
        self.cmd = CommandClient(registry, host, port, username, password, ca_file=ca_file,
                                 client_id=client_id)
        self.subscription = f"$share/{group}/{REQ_FILTER}" if group else REQ_FILTER
        self.cmd.mqtt.subscribe(self.subscription, self._on_req, qos=1)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sessions")
        self._lock = threading.RLock()
        self._slocks: dict[tuple[str, str], threading.Lock] = {}
        self._bindings: dict[str, str] = dict(bindings or {})
        self._tariffs: dict[str, TariffState] = {}
        self._limits: dict[str, int] = {}
        self._sessions: dict[tuple[str, str], SessionState] = {}
        self._answered: collections.OrderedDict[tuple[str, int], tuple[tuple, tuple[str, dict]]] = \
            collections.OrderedDict()
        self._answer_cache = answer_cache
        self._pending: dict[tuple[str, str], Any] = {}      # closed sessions still to charge
        self._items: dict[str, tuple[str, str]] = {}         # rented item tag -> its open rental
        self._links: dict[tuple[str, str], tuple[str, str]] = {}  # (return station, sid) -> rental
        self._flags: list[Flag] = []
        self._flag_keys: set[tuple[str, str, str]] = set()
        self.sent: list[tuple[str, str, dict]] = []          # (device, command name, args), in order
        self.stats: collections.Counter = collections.Counter()
        self.refused: collections.Counter = collections.Counter()  # auth_req refused by code

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> "SessionService":
        self.cmd.connect(timeout)
        return self

    def stop(self) -> None:
        self._pool.shutdown(wait=True)
        self.cmd.close()

    def __enter__(self) -> "SessionService":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- configuration -----------------------------------------------------------------------
    def bind(self, ident: str, account: str) -> None:
        """Bind a plate / QR / tag to a pay-after account."""
        with self._lock:
            self._bindings[ident] = account

    def unbind(self, ident: str) -> None:
        with self._lock:
            self._bindings.pop(ident, None)

    def account(self, ident: str | None) -> str | None:
        with self._lock:
            return self._bindings.get(ident) if ident else None

    def set_limit(self, device: str, limit: int | None) -> None:
        with self._lock:
            if limit is None:
                self._limits.pop(device, None)
            else:
                if type(limit) is not int or limit < 0:
                    raise ValueError("a limit is int minor units")
                self._limits[device] = limit

    def set_tariff(self, device: str, args: dict, *, wait: bool = False, timeout: float = 10.0) -> Command:
        """Validate and send a tariff (`set_tariff`); the service charges by the tariff it last sent
        each device (whatever the device answered: a refusal is visible on the returned command)."""
        from host_tools.cloud import fees
        fees.validate(args)
        if wait:
            cmd = self.cmd.send(device, "set_tariff", dict(args), timeout=timeout, ttl=self.cmd_ttl)
        else:
            cmd = self.cmd.submit(device, "set_tariff", dict(args), ttl=self.cmd_ttl, publish_timeout=timeout)
        with self._lock:
            self._tariffs[device] = TariffState(dict(args), cmd, self.clock())
            self.sent.append((device, "set_tariff", dict(args)))
        return cmd

    def tariff(self, device: str) -> dict | None:
        with self._lock:
            t = self._tariffs.get(device)
            return dict(t.args) if t else None

    def tariff_state(self, device: str) -> TariffState | None:
        with self._lock:
            return self._tariffs.get(device)

    # ---- queries -----------------------------------------------------------------------------
    def orders(self) -> list[Order]:
        """Every provider order this service opened (the provider's current view)."""
        with self._lock:
            nos = sorted({s.order_no for s in self._sessions.values() if s.order_no})
        out = []
        for no in nos:
            try:
                out.append(self.provider.get(no))
            except PayAfterError:
                pass
        return out

    def flags(self, device: str | None = None, kind: str | None = None) -> list[Flag]:
        with self._lock:
            return [f for f in self._flags if (device is None or f.device == device)
                    and (kind is None or f.kind == kind)]

    def session(self, device: str, sid: str) -> SessionState | None:
        with self._lock:
            s = self._sessions.get((device, sid))
            return None if s is None else SessionState(**asdict(s))

    def sessions(self) -> list[SessionState]:
        with self._lock:
            return [SessionState(**asdict(s)) for s in self._sessions.values()]

    def settle_status(self, device: str, sid: str) -> dict:
        """{status, order_no, order_state, device_amount, cloud_amount, charged, cur, flags}.
        status: unknown | open (authorised, not closed) | denied | awaiting_qr | paid (QR) |
        pending (money due, not charged yet) | settled | settled_flagged | unpaid | revoked."""
        s = self.session(device, sid)
        flags = [f.kind for f in self.flags(device) if f.sid == sid]
        if s is None:
            return {"status": "unknown", "flags": flags}
        order = None
        if s.order_no:
            try:
                order = self.provider.get(s.order_no)
            except PayAfterError:
                order = None
        st = s.status
        if order is not None and order.state is OrderState.DONE:
            st = "settled_flagged" if flags else "settled"
            if s.status == "paid" and not s.closed:
                st = "paid"
        elif order is not None and order.state in (OrderState.REVOKED, OrderState.EXPIRED):
            st = "revoked"
        elif st == "authorized" and not s.closed:
            st = "open"
        return {"status": st, "order_no": s.order_no, "order_state": order.state.value if order else None,
                "device_amount": s.device_amount, "cloud_amount": s.cloud_amount,
                "charged": order.amount if order else s.charged, "cur": s.cur, "flags": flags}

    # ---- internals: state --------------------------------------------------------------------
    def _slock(self, device: str, sid: str) -> threading.Lock:
        with self._lock:
            return self._slocks.setdefault((device, sid), threading.Lock())

    def _state(self, device: str, sid: str, kind: str) -> SessionState:
        with self._lock:
            s = self._sessions.get((device, sid))
            if s is None:
                s = self._sessions[(device, sid)] = SessionState(device, sid, kind)
            return s

    def _flag(self, kind: str, s: SessionState, detail: str, **kw: Any) -> None:
        with self._lock:
            key = (s.device, s.sid, kind)
            if key in self._flag_keys:
                return
            self._flag_keys.add(key)
            f = Flag(kind, s.device, s.sid, detail, order_no=kw.pop("order_no", s.order_no),
                     cur=kw.pop("cur", s.cur), at=self.clock(), **kw)
            self._flags.append(f)
        lvl = logging.ERROR if kind in ("reauth_refused", "offline_refused", "order_conflict") else logging.WARNING
        log.log(lvl, "session flag %s device=%s sid=%s: %s (device %s, cloud %s, charged %s)",
                kind, s.device, s.sid, detail, f.device_amount, f.cloud_amount, f.charged)

    def _limit(self, device: str, kind: str, tariff: dict) -> int:
        with self._lock:
            if device in self._limits:
                return self._limits[device]
        if kind == "gate":
            n = max(tariff.get(7, 0), 7 * tariff.get(6, 0))
        elif kind == "rental":
            n = tariff.get(9, 0)
        elif kind == "vending":
            n = max((p for _, p in tariff.get(8, [])), default=0) * self.vend_max_items
        else:
            n = 0
        return n or self.default_limit

    def _fee(self, kind: str, tariff: dict | None, t0: int | None, t1: int | None, *,
             lost: bool = False, lines: list | None = None) -> tuple[int | None, list, str]:
        """The cloud's fee: (amount or None, provider lines, why None)."""
        if tariff is None:
            return None, [], "no tariff"
        from host_tools.cloud import fees
        try:
            if kind == "vending":
                amount, out = fees.vending(tariff, _lines_taken(lines))
                return amount, [list(x) for x in out], ""
            if t0 is None or t1 is None:
                return None, [], "no t0/t1"
            if kind == "rental":
                amount, converted = fees.rental(tariff, t0, t1)
                return amount, [["purchase" if converted else "rent", 1, amount]], ""
            amount = fees.parking(tariff, t0, t1, lost)
            return amount, [["lost" if lost else "park", 1, amount]], ""
        except fees.FeeError as e:
            return None, [], f"fee error {getattr(e, 'code', e)}"

    # ---- auth_req in -------------------------------------------------------------------------
    def _on_req(self, topic: str, payload: bytes) -> None:
        """paho's thread: verify, then hand to the pool (provider calls and publishing block)."""
        self.stats["received"] += 1
        try:
            device, suffix = parse_topic(topic)
            if suffix != "up/req":
                raise ProtocolError("bad_topic", topic)
            dev = self.registry.get(device)
            msg = open_message(dev.key, dev.kid, topic, payload)
            if msg["type"] != "auth_req":
                raise ProtocolError("bad_topic", f"{msg['type']} on {topic}")
        except ProtocolError as e:
            self.refused[e.code] += 1
            log.warning("refused a request on %s: %s", topic, e)
            return
        except RegistryError as e:
            self.refused["unknown_device"] += 1
            log.warning("request from an unknown device on %s: %s", topic, e)
            return
        self._pool.submit(self._handle_safe, device, dev.kind, msg)

    def _handle_safe(self, device: str, kind: str, msg: dict) -> None:
        try:
            self.handle(device, kind, msg)
        except Exception:  # noqa: BLE001 - a worker must survive; the device retries
            self.stats["errors"] += 1
            log.exception("auth_req from %s failed", device)

    def handle(self, device: str, kind: str, msg: dict) -> tuple[str, dict]:
        """Decide and answer one verified auth_req; returns (command name, args) sent."""
        sid = msg["sid"]
        with self._slock(device, sid):
            key = (device, msg["seq"])
            ident = tuple(sorted(msg.items()))
            with self._lock:
                hit = self._answered.get(key)
            if hit is not None:
                if hit[0] != ident:                        # one seq, two contents: never answered
                    self.refused["seq_reuse"] += 1
                    log.error("auth_req seq %s of %s reused with other content: ignored", msg["seq"], device)
                    return hit[1]
                self.stats["duplicates"] += 1              # a QoS1 duplicate: the same answer
                self._send(device, *hit[1])
                return hit[1]
            s = self._state(device, sid, kind)
            purpose = msg["purpose"]
            if purpose not in PURPOSES.get(kind, ()):
                answer = self._deny(s, R_PURPOSE)
            elif purpose in OPENING:
                answer = self._open(s, msg)
            elif purpose == "return" and s.order_no is None and s.status == "new":
                answer = self._return(s, msg)  # a session it never rented: an item from elsewhere
            elif purpose in CLOSING:
                answer = self._close(s, msg)
            else:
                answer = self._reauth(s, msg)
            with self._lock:
                self._answered[key] = (ident, answer)
                while len(self._answered) > self._answer_cache:
                    self._answered.popitem(last=False)
                s.answers += 1
            self._send(device, *answer)
            return answer

    def _send(self, device: str, name: str, args: dict) -> None:
        self.cmd.submit(device, name, dict(args), ttl=self.cmd_ttl, publish_timeout=5.0)
        with self._lock:
            self.sent.append((device, name, dict(args)))

    def _deny(self, s: SessionState, reason: str, transient: bool = False) -> tuple[str, dict]:
        s.granted = False
        if s.status not in ("authorized", "paid"):
            s.status = "awaiting_qr" if reason == R_QR else "denied"
        if transient:
            s.last_deny_at = self.clock()
        self.stats["denied"] += 1
        return "auth", {1: s.sid, 2: False, 5: reason}

    def _grant(self, s: SessionState, order: Order, limit: int | None = None) -> tuple[str, dict]:
        s.granted = True
        s.last_deny_at = None
        self.stats["granted"] += 1
        args = {1: s.sid, 2: True, 3: order.order_no, 4: order.limit if limit is None else limit,
                6: 1 if order.mode == MODE_DEPOSIT else 0}
        return "auth", args

    def _open_order(self, s: SessionState, account: str) -> Order:
        """create + start (both idempotent); raises PayAfterError."""
        tariff = self.tariff(s.device)
        assert tariff is not None
        order_no = f"{s.device}:{s.sid}"
        limit = self._limit(s.device, s.kind, tariff)
        s.order_no, s.limit, s.cur = order_no, limit, tariff[2]
        order = self.provider.create(order_no, account, s.device, s.sid, limit, tariff[2], self.order_expires_s)
        if order.state is OrderState.CREATED:
            order = self.provider.start(order_no)
        return order

    def _open(self, s: SessionState, msg: dict) -> tuple[str, dict]:
        s.payer = msg["payer"]
        s.t0 = msg.get("t0", s.t0 if s.t0 is not None else msg.get("iat", int(self.clock())))
        account = self.account(s.payer)
        if account is None:
            return self._deny(s, R_QR if s.kind == "gate" else R_UNKNOWN)
        s.account = account
        if self.tariff(s.device) is None:
            return self._deny(s, R_NO_TARIFF)
        try:
            order = self._open_order(s, account)
        except PayerRefused:
            return self._deny(s, R_REFUSED)
        except OrderConflict as e:
            self._flag("order_conflict", s, str(e))
            return self._deny(s, R_CONFLICT)
        except PayAfterError as e:
            if e.transient:
                log.warning("provider failed on %s/%s: %s", s.device, s.sid, e)
                return self._deny(s, R_UNAVAILABLE, transient=True)
            log.warning("provider refused %s/%s: %s", s.device, s.sid, e)
            return self._deny(s, R_CLOSED if isinstance(e, IllegalTransition) else e.code[:32])
        if order.state is not OrderState.DOING:
            return self._deny(s, R_CLOSED)
        s.status = "authorized"
        return self._grant(s, order)

    def _reauth(self, s: SessionState, msg: dict) -> tuple[str, dict]:
        s.payer = s.payer or msg["payer"]
        if "t0" in msg:
            s.t0 = msg["t0"]
        if s.closed:  # its sess_close was settled first: never open an order for a closed session
            if s.status == "unpaid":
                self._flag("reauth_refused", s, "offline session closed and not chargeable")
                return self._deny(s, R_REFUSED)
            s.granted = True
            return "auth", {1: s.sid, 2: True, **({3: s.order_no} if s.order_no else {})}
        account = self.account(s.payer)
        if account is None:
            self._flag("reauth_refused", s, f"payer {s.payer!r} has no pay-after binding")
            return self._deny(s, R_QR if s.kind == "gate" else R_UNKNOWN)
        s.account = account
        if self.tariff(s.device) is None:
            self._flag("reauth_refused", s, "no tariff for the device")
            return self._deny(s, R_NO_TARIFF)
        try:
            order = self._open_order(s, account)
        except PayerRefused as e:
            self._flag("reauth_refused", s, f"provider refused the payer now: {e.detail}")
            return self._deny(s, R_REFUSED)
        except PayAfterError as e:
            if e.transient:
                return self._deny(s, R_UNAVAILABLE, transient=True)
            self._flag("reauth_refused", s, str(e))
            return self._deny(s, R_CLOSED if isinstance(e, IllegalTransition) else e.code[:32])
        if order.state is OrderState.DONE:               # already closed and charged: fine
            return self._grant(s, order)
        if order.state is not OrderState.DOING:
            self._flag("reauth_refused", s, f"order is {order.state.value}")
            return self._deny(s, R_CLOSED)
        s.status = "authorized"
        return self._grant(s, order)

    def _close(self, s: SessionState, msg: dict) -> tuple[str, dict]:
        """exit / return: recompute, compare, complete, grant."""
        if s.payer is None:
            s.payer = msg["payer"]
        elif s.payer != msg["payer"]:
            self._flag("payer_mismatch", s, f"entry payer {s.payer!r}, exit payer {msg['payer']!r}")
        if "t0" in msg:
            if s.t0 is not None and s.t0 != msg["t0"]:
                log.warning("t0 of %s/%s: entry said %s, exit says %s", s.device, s.sid, s.t0, msg["t0"])
            s.t0 = msg["t0"]
        now = int(self.clock())
        t1 = msg.get("iat", now)
        if abs(t1 - now) > self.max_skew_s:
            self._flag("clock_skew", s, f"request iat {t1} is {t1 - now:+d} s from the cloud's clock; cloud time used")
            t1 = now
        tariff = self.tariff(s.device)
        cloud, lines, why = self._fee(s.kind, tariff, s.t0, t1)
        dev_amount = msg.get("amount")
        s.device_amount, s.cloud_amount = dev_amount, cloud
        cur = tariff[2] if tariff else msg.get("cur")
        if tariff and "cur" in msg and msg["cur"] != tariff[2]:
            self._flag("fee_mismatch", s, f"device currency {msg['cur']} is not the tariff's {tariff[2]}",
                       device_amount=dev_amount, cloud_amount=cloud)
        elif cloud is not None and dev_amount is not None and dev_amount != cloud:
            self._flag("fee_mismatch", s, f"{s.kind} fee t0={s.t0} t1={t1}: device {dev_amount}, cloud {cloud}",
                       device_amount=dev_amount, cloud_amount=cloud)
        amount = cloud
        if amount is None:
            amount = dev_amount
            self._flag("fee_unverified", s, f"cloud cannot compute the fee ({why}); device amount charged",
                       device_amount=dev_amount)
            lines = [["fee", 1, amount]] if amount is not None else []
        order_no = self._own_order_no(s, msg.get("auth"))
        try:
            order = self.provider.get(order_no)
        except OrderNotFound:
            order = None
        except PayAfterError as e:                       # cannot even read it: retry later
            if e.transient:
                return self._deny(s, R_UNAVAILABLE, transient=False)
            raise
        if order is None:
            order = self._late_order(s)                  # entered offline, never re-authorised
        if order is None:
            s.qr_amount = amount
            s.cur = cur
            return self._deny(s, R_QR if s.kind == "gate" else R_NO_ORDER)
        s.order_no, s.cur = order.order_no, order.cur
        if order.state is OrderState.DONE:               # already paid (QR, or a repeated exit)
            s.charged = order.amount
            return self._grant(s, order, limit=order.amount)
        if order.state in (OrderState.REVOKED, OrderState.EXPIRED):
            self._flag("order_closed", s, f"exit with an order {order.state.value}", device_amount=dev_amount,
                       cloud_amount=cloud)
            return self._deny(s, R_CLOSED)
        if amount is None:                               # nothing we could charge: keep it open
            s.status = "pending"
            return self._grant(s, order)
        done = self._complete(s, order, amount, lines, t1, dev_amount, cloud)
        return self._grant(s, done or order, limit=(done.amount if done else None))

    def _return(self, s: SessionState, msg: dict) -> tuple[str, dict]:
        """A rental station asks about an item it does not know (rented elsewhere): payer is the
        item's tag. The rental is found from its sess_open (field 21 item); the answer carries the
        rental's start (7), sid (8) and payer (9) and the rental's order as the auth ref, so the
        station closes THAT session (a sess_close with the rental's sid), settled on its order."""
        with self._lock:
            ref = self._items.get(msg["payer"])
            rs = self._sessions.get(ref) if ref else None
        if rs is None or rs.closed or rs.t0 is None:
            s.payer = msg["payer"]
            return self._deny(s, "unknown item")
        with self._lock:
            self._links[(s.device, rs.sid)] = (rs.device, rs.sid)
        s.granted = True
        self.stats["granted"] += 1
        args = {1: s.sid, 2: True, 3: f"{rs.device}:{rs.sid}", 7: rs.t0, 8: rs.sid, 9: rs.payer}
        if rs.limit is not None:
            args[4] = rs.limit
        return "auth", args

    def _own_order_no(self, s: SessionState, ref: str | None) -> str:
        """The order of this session is always `device:sid`: an auth ref naming anything else
        (another device's order, a stale ref) is flagged and never followed."""
        own = f"{s.device}:{s.sid}"
        if ref is not None and ref != own:
            self._flag("auth_mismatch", s, f"device gave auth ref {ref!r}, the session's order is {own!r}",
                       order_no=own)
        return own

    def _late_order(self, s: SessionState) -> Order | None:
        """An exit/return with no order: open one now if the payer is bound and trusted, else None."""
        account = self.account(s.payer)
        if account is None or self.tariff(s.device) is None:
            return None
        s.account = account
        try:
            order = self._open_order(s, account)
        except PayAfterError as e:
            log.warning("no late order for %s/%s: %s", s.device, s.sid, e)
            return None
        return order if order.state is OrderState.DOING else None

    def _complete(self, s: SessionState, order: Order, amount: int, lines: list, t1: int | None,
                  dev_amount: int | None, cloud: int | None) -> Order | None:
        """complete (start first if still CREATED); None when it must be retried later."""
        if amount > order.limit:
            self._flag("over_limit", s, f"fee {amount} above the order limit {order.limit}: limit charged",
                       device_amount=dev_amount, cloud_amount=cloud, charged=order.limit)
            amount = order.limit
            lines = [[lines[0][0] if lines else "fee", 1, amount]]
        try:
            if order.state is OrderState.CREATED:
                order = self.provider.start(order.order_no)
            done = self.provider.complete(order.order_no, amount, order.cur, lines, s.device, t1)
        except PayAfterError as e:
            if e.transient:
                s.status = "pending"
                log.warning("complete of %s failed (%s): pending", order.order_no, e)
                return None
            if isinstance(e, LimitExceeded):  # the provider's limit is not what we thought
                self._flag("over_limit", s, str(e), device_amount=dev_amount, cloud_amount=cloud)
            else:
                self._flag("complete_failed", s, str(e), device_amount=dev_amount, cloud_amount=cloud)
            s.status = "pending"
            return None
        s.charged = done.amount
        s.status = "closing"
        return done

    # ---- the QR path -------------------------------------------------------------------------
    def pay_by_qr(self, device: str, sid: str, account: str | None = None, now: int | None = None) -> Order:
        """The user scanned the QR for a session without pay-after: charge the fee now (create +
        start + complete an order) and send `paid` {1: sid, 2: order_no}. Idempotent."""
        with self._slock(device, sid):
            with self._lock:
                s = self._sessions.get((device, sid))
            if s is None:
                raise KeyError(f"no session {device}/{sid}")
            tariff = self.tariff(device)
            now = int(self.clock()) if now is None else now
            amount = s.qr_amount
            lines: list = []
            if amount is None:
                amount, lines, why = self._fee(s.kind, tariff, s.t0, now)
                if amount is None:
                    raise ValueError(f"cannot price {device}/{sid}: {why}")
                s.cloud_amount = amount
            lines = lines or [["park" if s.kind == "gate" else "fee", 1, amount]]
            cur = s.cur or (tariff[2] if tariff else None)
            if cur is None:
                raise ValueError(f"no currency for {device}/{sid}")
            order_no = f"{device}:{sid}"
            account = account or f"qr:{device}:{sid}"
            order = self.provider.create(order_no, account, device, sid, amount, cur, self.order_expires_s)
            if order.state is OrderState.CREATED:
                order = self.provider.start(order_no)
            if order.state is OrderState.DOING:
                order = self.provider.complete(order_no, amount, cur, lines, device, now)
            if order.state is not OrderState.DONE:
                raise IllegalTransition(f"QR order is {order.state.value}", order_no)
            s.order_no, s.account, s.cur, s.charged, s.status = order_no, account, cur, order.amount, "paid"
            self._send(device, "paid", {1: sid, 2: order_no})
            return order

    # ---- settle: committed records -----------------------------------------------------------
    def on_commit(self, records: Iterable[Record]) -> None:
        """IngestWorker's `on_commit`: settle every committed sess_close (in the pool); a rental's
        sess_open with its item tag (21) is remembered, so a return elsewhere finds the rental."""
        for r in records:
            if r.type == 6 and getattr(r, "item", None):
                try:
                    kind = self.registry.get(r.device).kind
                except RegistryError:
                    continue
                s = self._state(r.device, r.sid, kind)
                with self._lock:
                    s.payer = s.payer or r.payer
                    s.t0 = r.t0  # the committed start, not the request's
                    self._items[r.item] = (r.device, r.sid)
            if r.type == 8:
                self._pool.submit(self._settle_safe, r)

    def _settle_safe(self, r: Any) -> None:
        try:
            self.settle(r)
        except Exception:  # noqa: BLE001
            self.stats["errors"] += 1
            log.exception("settle of %s/%s failed", r.device, r.sid)

    def settle_ledger(self, ledger: Ledger) -> int:
        """Poll: settle every closed session of the ledger not settled yet; how many were."""
        n = 0
        for sess in ledger.sessions():
            if sess.state != "closed":
                continue
            with self._lock:
                s = self._sessions.get((sess.device, sess.sid))
                if s is not None and s.closed and s.status != "pending":
                    continue
            self.settle(sess)
            n += 1
        return n

    def settle(self, r: Any) -> str:
        """Settle one closed session (a ledger Record of type sess_close, or a ledger Session);
        returns the settle status."""
        try:
            kind = self.registry.get(r.device).kind
        except RegistryError:
            kind = "gate"
        key = (r.device, r.sid)
        with self._slock(r.device, r.sid):
            with self._lock:   # registered before anything can show "pending"; dropped once final
                self._pending[key] = r
            status = self._settle(r, kind)
            if status != "pending":
                with self._lock:
                    self._pending.pop(key, None)
            return status

    def _settle(self, r: Any, kind: str) -> str:
        with self._lock:  # a rental closed at another station settles on the rental's session
            dev, sid = self._links.get((r.device, r.sid), (r.device, r.sid))
            for tag in [t for t, v in self._items.items() if v == (dev, sid)]:
                del self._items[tag]
        s = self._state(dev, sid, kind)
        s.payer = s.payer or r.payer
        if r.t0 is not None:
            s.t0 = r.t0
        s.device_amount = r.amount
        tariff = self.tariff(r.device)
        cloud, lines, why = self._fee(kind, tariff, r.t0, r.t1, lost=(r.reason == "lost"), lines=r.lines)
        s.cloud_amount = cloud
        if tariff and r.currency and r.currency != tariff[2]:
            self._flag("fee_mismatch", s, f"record currency {r.currency} is not the tariff's {tariff[2]}",
                       device_amount=r.amount, cloud_amount=cloud)
        elif cloud is not None and r.amount is not None and cloud != r.amount:
            self._flag("fee_mismatch", s, f"sess_close seq {getattr(r, 'seq', getattr(r, 'close_seq', None))}: "
                       f"device {r.amount}, cloud {cloud}", device_amount=r.amount, cloud_amount=cloud)
        amount = cloud
        if amount is None:
            if r.amount:
                self._flag("fee_unverified", s, f"cloud cannot compute the fee ({why})", device_amount=r.amount)
            amount = r.amount or 0
            lines = [["fee", 1, amount]]
        order_no = self._own_order_no(s, r.auth)
        try:
            order: Order | None = self.provider.get(order_no)
        except OrderNotFound:
            order = None
        except PayAfterError as e:
            if not e.transient:
                raise
            s.status, s.closed = "pending", True
            return "pending"
        s.closed = True
        if order is None:
            return self._settle_without_order(s, order_no, amount, lines, r, cloud)
        s.order_no, s.cur = order.order_no, order.cur
        if order.state in (OrderState.CREATED, OrderState.DOING):
            done = self._complete(s, order, amount, lines, r.t1, r.amount, cloud)
            if done is None:
                return "pending"
            order = done
        if order.state is OrderState.DONE:
            s.charged = order.amount
            if order.amount not in (amount, min(amount, order.limit), r.amount):
                self._flag("charge_mismatch", s, f"charged {order.amount}, the closed session costs {amount}",
                           device_amount=r.amount, cloud_amount=cloud, charged=order.amount)
            s.status = "settled"
            return "settled"
        if amount:
            self._flag("order_closed", s, f"money due but the order is {order.state.value}",
                       device_amount=r.amount, cloud_amount=cloud)
        s.status = "unpaid" if amount else "settled"
        return s.status

    def _settle_without_order(self, s: SessionState, order_no: str, amount: int, lines: list, r: Any,
                              cloud: int | None) -> str:
        if not amount:
            s.status = "settled"
            return "settled"
        account = self.account(s.payer)
        if account is None or self.tariff(s.device) is None:
            self._flag("no_order", s, f"{amount} due and no order or pay-after binding for {s.payer!r}",
                       device_amount=r.amount, cloud_amount=cloud, order_no=None)
            s.status = "unpaid"
            return "unpaid"
        s.account = account
        try:  # an offline session never re-authorised: a late order
            order = self._open_order(s, account)
        except PayerRefused as e:
            self._flag("offline_refused", s, f"offline session, payer refused now: {e.detail}",
                       device_amount=r.amount, cloud_amount=cloud)
            s.status = "unpaid"
            return "unpaid"
        except PayAfterError as e:
            if e.transient:
                s.status = "pending"
                return "pending"
            self._flag("complete_failed", s, str(e), device_amount=r.amount, cloud_amount=cloud)
            s.status = "unpaid"
            return "unpaid"
        done = self._complete(s, order, amount, lines, r.t1, r.amount, cloud)
        if done is None:
            return "pending"
        s.status = "settled"
        return "settled"

    # ---- housekeeping ------------------------------------------------------------------------
    def sweep(self, now: float | None = None) -> dict:
        """Expire stale CREATED orders at the provider, cancel orders of sessions left in doubt by a
        transient deny (never granted, older than doubt_s), retry pending completions."""
        now = self.clock() if now is None else now
        out = {"expired": [], "cancelled": [], "retried": 0}
        try:
            out["expired"] = [o.order_no for o in self.provider.expire(now)]
        except PayAfterError as e:
            log.warning("provider expire failed: %s", e)
        for s in self.sessions():
            if s.status == "denied" and s.last_deny_at is not None and now - s.last_deny_at >= self.doubt_s:
                order_no = f"{s.device}:{s.sid}"
                try:
                    o = self.provider.get(order_no)
                    if o.state in (OrderState.CREATED, OrderState.DOING):
                        self.provider.cancel(order_no)
                        out["cancelled"].append(order_no)
                except OrderNotFound:
                    pass
                except PayAfterError as e:
                    log.warning("cancel of %s in doubt failed: %s", order_no, e)
                    continue
                with self._lock:
                    live = self._sessions.get((s.device, s.sid))
                    if live is not None:
                        live.last_deny_at = None
        with self._lock:
            pending = list(self._pending.values())
        for r in pending:
            self.settle(r)
            out["retried"] += 1
        return out
