"""The session service: authorises pay-after sessions for devices and settles them.

    svc = SessionService(registry, provider, BrokerSettings("127.0.0.1", broker.cloud_port, "cloud", "pw")).start()
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
- The QR path of a gate (`pay_by_qr`, then `paid` {1: sid, 2: order_no}): at the ENTRY (no exit
  asked yet) the QR pre-authorises: an order for the QR's account is created and started (DOING,
  limit as for pay-after), exactly as a bound plate's entry; the car's exit then charges the fee
  to it like any pay-after exit (so a stay past the free minutes is charged once, at the exit).
  At the EXIT (an exit was denied "scan QR to pay") the QR pays the fee the exit computed: the
  order is created, started and completed at once.
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
- Re-provisioned devices (SPEC §6 "Chains and re-provisioning", host_tools/cloud/chains.py): a
  revoked device re-provisioned at key version R onto a fresh board (seq from 1 again, its sids
  again the old board's) has its requests and sessions keyed by the chain `DEVICE~R`, as its
  records are in the ledger: answers and claims by (chain, seq), sessions and flags by (chain,
  sid), its orders `DEVICE~R:sid`; the old board's stay under DEVICE untouched. Which board holds
  the id since R is judged once per (device, R) at its first request (chains.board_chain, on the
  ledger the service was given, else the store's database) and kept in the store; a recovered
  board (its seq goes on) stays under the id. Answers, commands, tariffs and limits are the
  device's (topic, key, aud). A device whose key version is 1 was never re-provisioned: no lookup.
- Durable state (`store`, host_tools/cloud/session_store.py: tables in the ledger's database):
  bindings, tariffs sent, limits, every session's state (its order number included), answered
  requests, settlements to retry, rented items and returns elsewhere, flags. Each is written before
  the answer goes out, so a service stopped anywhere and started again on the same database goes
  on: an open session closes on its order, charged once (the provider is idempotent by order
  number). `recover(ledger)` after a start settles what the ledger closed meanwhile. Without a
  store the state is in a private in-memory SQLite database (lost with the process). Without
  `instance`, one live service per database: instances do not share their caches.
- Durable instances (`instance=`): every instance gets every request on its own persistent
  session; a claim in the store picks the answerer; a request is acknowledged to the broker only
  once answered (a kill mid-answer gets it again at the return); the others watch a claim for
  `claim_lease_s` and take it over if its holder stored no answer (session_watch.py).

Files: the flows are split by what they do: session_auth.py (auth_req in, answers out, the QR
path), session_settle.py (sess_close settlement, sweep, recovery), session_store.py (the durable
state), session_model.py (states, flags, reasons); this module is the service and its queries.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any, Callable, cast

from host_tools.cloud.chains import SEP, Epochs, board_chain, device_of, epoch_of
from host_tools.cloud.commands import Command, CommandClient
from host_tools.cloud.ledger import Ledger
from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.payafter import Order, OrderState, PayAfterError, PayAfterProvider
from host_tools.cloud.registry import Registry
from host_tools.cloud.session_auth import AuthFlows
from host_tools.cloud.session_model import (CLOSING, OPENING, PURPOSES, R_CLOSED, R_CONFLICT,
                                            R_NO_ORDER, R_NO_TARIFF, R_PURPOSE, R_QR, R_REFUSED,
                                            R_UNAVAILABLE, R_UNKNOWN, REQ_FILTER, CloseRecord, Flag,
                                            SessionState, TariffState, lines_taken)
from host_tools.cloud.session_settle import Settlement
from host_tools.cloud.session_store import SessionStore
from host_tools.cloud.session_watch import ClaimWatch

__all__ = ["SessionService", "SessionStore", "Flag", "SessionState", "TariffState", "CloseRecord",
           "REQ_FILTER", "PURPOSES", "OPENING", "CLOSING", "R_QR", "R_UNKNOWN", "R_REFUSED",
           "R_UNAVAILABLE", "R_NO_TARIFF", "R_PURPOSE", "R_CLOSED", "R_CONFLICT", "R_NO_ORDER"]

log = logging.getLogger("edgepay.sessions")


class SessionService(AuthFlows, Settlement):
    """Authorises pay-after sessions (auth_req -> signed `auth`) and settles closed ones (see the
    module doc for every rule). State is in `store` (durable when it is on a ledger database)."""

    def __init__(self, registry: Registry, provider: PayAfterProvider, broker: BrokerSettings, *,
                 group: str | None = None, workers: int = 8, clock: Callable[[], float] = time.time,
                 bindings: dict[str, str] | None = None, order_expires_s: int = 300,
                 default_limit: int = 10_000, vend_max_items: int = 5, cmd_ttl: int = 60,
                 doubt_s: float = 120.0, answer_cache: int = 10_000, max_skew_s: int = 300,
                 store: SessionStore | None = None, answer_ttl_s: float = 7 * 86400,
                 instance: str | None = None, auth_expiry_s: float | None = None, session_s: int = 86400,
                 on_settled: Callable[[dict], None] | None = None, claim_lease_s: float = 30.0,
                 ledger: Ledger | None = None):
        self.registry = registry
        self.instance = instance
        self.auth_expiry_s = auth_expiry_s
        self.on_settled = on_settled
        if instance is not None:
            # Durable: a persistent session per instance (its name is its client id), subscribed to
            # every request, not a $share group: Mosquitto deals a group's messages round robin to
            # its members' sessions, offline ones included, so a group would leave the share of an
            # instance that stays down unanswered. Here the broker queues every request for every
            # instance while it is away, and a claim in the store picks the one that answers.
            if group is not None:
                raise ValueError("a durable instance gets every request: give instance or group, not both")
            broker = dataclasses.replace(broker, client_id=f"edgepay-sessions-{instance}", session_s=session_s)
        self.provider = provider
        self.clock = clock
        self.order_expires_s = order_expires_s
        self.default_limit = default_limit
        self.vend_max_items = vend_max_items
        self.cmd_ttl = cmd_ttl
        self.doubt_s = doubt_s
        self.max_skew_s = max_skew_s
        self.answer_ttl_s = answer_ttl_s
        self._own_store = store is None
        self.store = store if store is not None else SessionStore.memory()
        # where a re-provisioned device's chains are read (chains.board_chain): the store's
        # database is the ledger's when the store is on it (edgepay serve)
        self.ledger: Ledger = ledger if ledger is not None else cast(Ledger, self.store.db)  # open_ledger's
        self._epochs = Epochs(registry)   # R of each re-provisioned device (chains.py)
        self._boards: dict[tuple[str, int], str] = {}          # (device, R) -> its board's chain
        self._lock = threading.RLock()
        self._slocks: dict[tuple[str, str], threading.Lock] = {}
        # caches of the store (the store is written first); sessions load on first use
        self._bindings: dict[str, str] = self.store.bindings()
        self._tariffs: dict[str, TariffState] = {d: TariffState(a, None, t) for d, (a, t) in self.store.tariffs().items()}
        self._limits: dict[str, int] = self.store.limits()
        self._sessions: dict[tuple[str, str], SessionState] = {}
        self._answered: collections.OrderedDict[tuple[str, int], tuple[bytes, tuple[str, dict]]] = \
            collections.OrderedDict()
        self._answer_cache = answer_cache
        self._pending: dict[tuple[str, str], CloseRecord] = {(r.device, r.sid): r for r in self.store.pending()}
        self._flags: list[Flag] = self.store.flags()
        self._flag_keys: set[tuple[str, str, str]] = {(f.device, f.sid, f.kind) for f in self._flags}
        for ident, account in (bindings or {}).items():
            self.bind(ident, account)
        self.sent: list[tuple[str, str, dict]] = []          # (device, command name, args), in order
        self.stats: collections.Counter = collections.Counter()
        self.refused: collections.Counter = collections.Counter()  # auth_req refused by code
        self.cmd = CommandClient(registry, broker, clock=clock)  # devices keep the site's time
        self.subscription = broker.work_share(group, REQ_FILTER)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sessions")
        # A durable instance acknowledges a request only once it is dealt with (a kill mid-answer
        # leaves it with the broker for the next connect) and watches the claims of the others.
        self._claims = ClaimWatch(claim_lease_s, self._lease_over) if instance is not None else None
        self.cmd.mqtt.subscribe(self.subscription, self._on_req, qos=1, deferred=instance is not None)

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> "SessionService":
        self.cmd.connect(timeout)
        return self

    def stop(self) -> None:
        if self._claims is not None:
            self._claims.close()
        self._pool.shutdown(wait=True)
        self.cmd.close()
        if self._own_store:
            self.store.close()

    def __enter__(self) -> "SessionService":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- configuration -----------------------------------------------------------------------
    def bind(self, ident: str, account: str) -> None:
        """Bind a plate / QR / tag to a pay-after account."""
        if not (isinstance(ident, str) and ident and isinstance(account, str) and account):
            raise ValueError("bind(ident, account): two non-empty strings")
        with self._lock:
            self.store.set_binding(ident, account)
            self._bindings[ident] = account

    def account(self, ident: str | None) -> str | None:
        if ident and self.instance is not None:  # instances share the store: another may have bound it
            return self.store.binding(ident)
        with self._lock:
            return self._bindings.get(ident) if ident else None

    def set_limit(self, device: str, limit: int | None) -> None:
        with self._lock:
            if limit is not None and (type(limit) is not int or limit < 0):
                raise ValueError("a limit is int minor units")
            self.store.set_limit(device, limit)
            if limit is None:
                self._limits.pop(device, None)
            else:
                self._limits[device] = limit

    def set_tariff(self, device: str, args: dict, *, wait: bool = False, timeout: float = 10.0) -> Command:
        """Validate and send a tariff (`set_tariff`); the service charges by the tariff it last sent
        each device (whatever the device answered: a refusal is visible on the returned command)."""
        from host_tools.cloud import fees
        fees.validate(args)
        # stored before it is sent: a device never holds a tariff the cloud would not charge by
        now = self.clock()
        with self._lock:
            self.store.save_tariff(device, dict(args), now)
        if wait:
            cmd = self.cmd.send(device, "set_tariff", dict(args), timeout=timeout, ttl=self.cmd_ttl)
        else:
            cmd = self.cmd.submit(device, "set_tariff", dict(args), ttl=self.cmd_ttl, publish_timeout=timeout)
        with self._lock:
            self._tariffs[device] = TariffState(dict(args), cmd, now)
            self.sent.append((device, "set_tariff", dict(args)))
        return cmd

    def tariff(self, device: str) -> dict | None:
        if SEP in device:  # a chain DEVICE~R: the device's tariff
            device = device_of(device)
        if self.instance is not None:  # the tariff another instance (or the API) sent is in the store
            row = self.store.tariff(device)
            return row[0] if row else None
        with self._lock:
            t = self._tariffs.get(device)
            return dict(t.args) if t else None

    # ---- queries -----------------------------------------------------------------------------
    def orders(self) -> list[Order]:
        """Every provider order this service opened (the provider's current view)."""
        nos = sorted({s.order_no for s in self.sessions() if s.order_no})
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
            s = self._known(device, sid)
            return None if s is None else SessionState(**asdict(s))

    def sessions(self) -> list[SessionState]:
        with self._lock:
            out = {(s.device, s.sid): s for s in self.store.sessions()}
            out.update((k, SessionState(**asdict(s))) for k, s in self._sessions.items())
            return [out[k] for k in sorted(out)]

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

    # ---- internals: the chain of a request ----------------------------------------------------
    def _chain(self, device: str, key_version: int, seq: int) -> str:
        """The chain a verified request of `device` (its current key version, the request's seq)
        is keyed by (the module doc; chains.board_chain). Key version 1: never re-provisioned,
        the device id with no lookup; otherwise R is read once per key version (the registry's
        key history), the board once per (device, R) (memory, the store, else judged now; a
        durable instance reads the store each time, one indexed read, re-provisioned devices only)."""
        if key_version == 1:
            return device
        epoch = self._epochs.get(device, key_version)
        if epoch is None:
            return device
        with self._lock:  # durable instances read the store: another's ledger feed may correct it
            chain = self._boards.get((device, epoch)) if self.instance is None else None
        if chain is None:
            chain = self.store.board(device, epoch)
            if chain is None:
                judged = board_chain(self.ledger, device, epoch, seq, self.store.last_answered)
                chain = self.store.set_board(device, epoch, judged, self.clock())
                log.warning("device %s re-provisioned at key version %d: its board's requests and sessions "
                            "are %s (first request seq %d)", device, epoch, chain, seq)
            with self._lock:
                self._boards[(device, epoch)] = chain
        return chain

    def _board_seen(self, chain: str) -> None:
        """A record committed in the chain DEVICE~R: the ledger saw the fresh board's genesis, which
        is exact where the service's judgement by seq is not (a fresh board whose counter passed
        the old board's mark before its first request). The board of (DEVICE, R) is DEVICE~R from
        now on; if it had been judged otherwise, that is corrected and logged (the sessions its
        requests opened meanwhile are under the other chain: an operator looks)."""
        device, epoch = device_of(chain), epoch_of(chain)
        if epoch is None:
            return
        with self._lock:
            if self._boards.get((device, epoch)) == chain:
                return
        was = self.store.board(device, epoch)
        if was is None:
            was = self.store.set_board(device, epoch, chain, self.clock())
        if was != chain:
            self.store.correct_board(device, epoch, chain, self.clock())
            log.error("device %s re-provisioned at key version %d: its board was judged %s by its requests, "
                      "the ledger has its records in %s: requests are keyed by %s from now on",
                      device, epoch, was, chain, chain)
        with self._lock:
            self._boards[(device, epoch)] = chain

    # ---- internals: state --------------------------------------------------------------------
    def _slock(self, device: str, sid: str) -> threading.Lock:
        with self._lock:
            return self._slocks.setdefault((device, sid), threading.Lock())

    def _watch(self, device: str, kind: str, msg: dict, holder: str) -> None:
        if self._claims is not None:
            self._claims.add(device, kind, msg, holder)

    def _lease_over(self, device: str, kind: str, msg: dict, holder: str, rounds: int) -> None:
        """The lease of `holder`'s claim on this request ran out (session_watch.py): nothing to do
        if it was answered or has expired; otherwise take the claim over (one instance wins) and
        answer, or watch the instance that won in turn."""
        seq = msg["seq"]
        if self.store.answer(device, seq) is not None or self._expired(msg):
            return
        if self.store.take_over(device, seq, holder, self.instance or "", self.clock()):
            self.stats["taken_over"] += 1
            log.warning("instance %s claimed auth_req seq %s of %s and did not answer it within %.0f s: "
                        "%s answers it", holder, seq, device, self._claims.lease_s if self._claims else 0,
                        self.instance)
            try:
                self._pool.submit(self._handle_safe, device, kind, msg)
            except RuntimeError:  # stopping: hand the claim back to the holder, whose copy waits
                self.store.take_over(device, seq, self.instance or "", holder, self.clock())
            return
        now = self.store.holder(device, seq)
        if now is not None and now not in (holder, self.instance) and rounds < 3 and self._claims is not None:
            self._claims.add(device, kind, msg, now, rounds + 1)   # another took it over: watch it in turn

    def _known(self, device: str, sid: str) -> SessionState | None:
        """The live state of a session: cached, else loaded from the store (a restart), else None."""
        with self._lock:
            s = self._sessions.get((device, sid))
            if s is None:
                s = self.store.load_session(device, sid)
                if s is not None:
                    self._sessions[(device, sid)] = s
            return s

    def _state(self, device: str, sid: str, kind: str) -> SessionState:
        with self._lock:
            s = self._known(device, sid)
            if s is None:
                s = self._sessions[(device, sid)] = SessionState(device, sid, kind)
            return s

    def _save(self, s: SessionState) -> None:
        """Write a session's state through to the store (before any answer about it goes out)."""
        with self._lock:
            self.store.save_session(s)

    def device_revoked(self, device: str) -> list[SessionState]:
        """Flag every open session of a revoked device (`device_revoked`) for an operator: its
        records still settle as they arrive (quarantined ones do not); the open ones need a look."""
        with self._lock:
            known = [s for s in self.store.sessions() if device_of(s.device) == device and not s.closed]
        for s in known:
            self._flag("device_revoked", s, "the device was revoked with this session open")
        return known

    def _flag(self, kind: str, s: SessionState, detail: str, **kw: Any) -> None:
        with self._lock:
            key = (s.device, s.sid, kind)
            if key in self._flag_keys:
                return
            self._flag_keys.add(key)
            f = Flag(kind, s.device, s.sid, detail, order_no=kw.pop("order_no", s.order_no),
                     cur=kw.pop("cur", s.cur), at=self.clock(), **kw)
            self.store.add_flag(f)
            self._flags.append(f)
        lvl = logging.ERROR if kind in ("reauth_refused", "offline_refused", "order_conflict") else logging.WARNING
        log.log(lvl, "session flag %s device=%s sid=%s: %s (device %s, cloud %s, charged %s)",
                kind, s.device, s.sid, detail, f.device_amount, f.cloud_amount, f.charged)

    def _limit(self, device: str, kind: str, tariff: dict) -> int:
        if SEP in device:
            device = device_of(device)
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
                amount, out = fees.vending(tariff, lines_taken(lines))
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

