"""The settle path of the session service (host_tools/cloud/sessions.py, whose module doc has every
rule): committed sess_close records charge their orders, mismatches are flagged, failed charges are
retried (`sweep`), and a restarted service catches up from the ledger (`recover`).

`Settlement` is a mixin of `SessionService`.
"""
from __future__ import annotations

import logging
from typing import Iterable

from host_tools.cloud.chains import SEP, device_of
from host_tools.cloud.ledger import Ledger, Record
from host_tools.cloud.payafter import Order, OrderNotFound, OrderState, PayAfterError, PayerRefused
from host_tools.cloud.registry import RegistryError
from host_tools.cloud.session_core import ServiceCore
from host_tools.cloud.session_model import CloseRecord, SessionState
from host_tools.protocol import SESS_CLOSE, SESS_OPEN

log = logging.getLogger("edgepay.sessions")
# closes that owe nothing: a staff open, a staff cancel, a rental item never taken
NO_CHARGE = ("remote_open", "cancelled", "not_taken")
UNTIMED = "untimed"  # a close whose device had no trusted time: duration unknown, amount 0


class Settlement(ServiceCore):
    # ---- settle: committed records -----------------------------------------------------------
    def on_commit(self, records: Iterable[Record]) -> None:
        """IngestWorker's `on_commit`: settle every committed sess_close (in the pool); a rental's
        sess_open with its item tag (21) is remembered, so a return elsewhere finds the rental."""
        for r in records:
            if SEP in r.device:  # a fresh board's chain: the ledger's word on which board holds the id
                self._board_seen(r.device)
            if r.type == SESS_OPEN and r.item:
                try:
                    kind = self.registry.get(device_of(r.device)).kind
                except RegistryError:
                    continue
                self._remember_item(r.device, r.sid, kind, r.payer, r.t0, r.item)
            if r.type == SESS_CLOSE:
                self._pool.submit(self._settle_safe, CloseRecord.of(r))

    def _remember_item(self, device: str, sid: str, kind: str, payer: str | None, t0: int | None,
                       item: str) -> None:
        with self._slock(device, sid):
            s = self._state(device, sid, kind)
            with self._lock:
                s.payer = s.payer or payer
                s.t0 = t0  # the committed start, not the request's
                if not s.closed:
                    self.store.set_item(item, device, sid)
                self._save(s)

    def _settle_safe(self, r: CloseRecord) -> None:
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
                s = self._known(sess.device, sess.sid)
                if s is not None and s.closed and s.status != "pending":
                    continue
            self.settle(CloseRecord.of(sess))
            n += 1
        return n

    def settle(self, r: CloseRecord) -> str:
        """Settle one closed session (CloseRecord.of a ledger sess_close Record or a closed ledger
        Session; the store keeps the same for a retry); returns the settle status."""
        try:
            kind = self.registry.get(device_of(r.device)).kind
        except RegistryError:
            kind = "gate"
        key = (r.device, r.sid)
        with self._slock(r.device, r.sid):
            with self._lock:   # registered before anything can show "pending"; dropped once final
                self.store.set_pending(r.device, r.sid, r)
                self._pending[key] = r
            status = self._settle(r, kind)
            if status != "pending":
                with self._lock:
                    self.store.set_pending(r.device, r.sid, None)
                    self._pending.pop(key, None)
        if status != "pending" and self.on_settled is not None:
            self._tell_settled(r.device, r.sid)
        return status

    def _tell_settled(self, device: str, sid: str) -> None:
        """on_settled once per session, whichever instance or retry settled it: the first to record
        it in the store (svc_claims, keyed apart from the requests' by seq -1) tells."""
        if not self.store.first(f"settled/{device}/{sid}", self.clock()):
            return
        st = self.settle_status(device, sid)
        try:
            assert self.on_settled is not None
            self.on_settled({"device": device, "sid": sid, **st})
        except Exception:  # noqa: BLE001 - settled is settled: a lost notice is logged, never retried here
            log.exception("on_settled for %s/%s failed", device, sid)

    def _settle(self, r: CloseRecord, kind: str) -> str:
        with self._lock:  # a rental closed at another station settles on the rental's session
            dev, sid = self.store.link(r.device, r.sid) or (r.device, r.sid)
            self.store.drop_items(dev, sid)
            s = self._state(dev, sid, kind)
        try:
            return self._settle_on(s, r, kind)
        finally:
            self._save(s)

    def _settle_on(self, s: SessionState, r: CloseRecord, kind: str) -> str:
        s.payer = s.payer or r.payer
        if r.t0 is not None:
            s.t0 = r.t0
        s.device_amount = r.amount
        tariff = self.tariff(r.device)
        t1 = r.t1
        if r.reason == UNTIMED:  # no trusted time at the exit (SPEC §5): the cloud prices the stay,
            # to the time it has the record (an upper bound: the car left before it arrived)
            t1 = max(int(self.clock()), r.t0 or 0)
            self._flag(UNTIMED, s, f"ended without trusted time: priced from t0 {r.t0} to {t1}, when the "
                       "cloud had the record", device_amount=r.amount)
        if r.reason in NO_CHARGE:  # owes nothing whatever its duration (SPEC: staff commands)
            cloud, lines, why = 0, [], ""
        else:
            cloud, lines, why = self._fee(kind, tariff, r.t0, t1, lost=(r.reason == "lost"), lines=r.lines)
        s.cloud_amount = cloud
        if tariff and r.currency and r.currency != tariff[2]:
            self._flag("fee_mismatch", s, f"record currency {r.currency} is not the tariff's {tariff[2]}",
                       device_amount=r.amount, cloud_amount=cloud)
        elif cloud is not None and r.amount is not None and cloud != r.amount and r.reason != UNTIMED:
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
            done = self._complete(s, order, amount, lines, t1, r.amount, cloud, r.device)
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

    def _settle_without_order(self, s: SessionState, order_no: str, amount: int, lines: list, r: CloseRecord,
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
        done = self._complete(s, order, amount, lines, r.t1, r.amount, cloud, r.device)
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
                    live = self._known(s.device, s.sid)
                    if live is not None:
                        live.last_deny_at = None
                        self._save(live)
        with self._lock:
            pending = list(self._pending.values())
        for r in pending:
            self.settle(r)
            out["retried"] += 1
        self.store.prune_answers(now - self.answer_ttl_s)
        return out

    # ---- after a restart ---------------------------------------------------------------------
    def recover(self, ledger: Ledger) -> dict:
        """Catch up with the ledger after a (re)start: records it committed while no service was
        listening (or before a crash let on_commit run) are taken now. Open rentals' item tags come
        from their sess_open (the ledger keeps `item`), closed sessions not settled yet are settled,
        settlements left pending are retried. Idempotent: {"items", "settled", "retried"}."""
        items = 0
        opened = {(s.device, s.sid) for s in ledger.sessions() if s.state == "open"}
        for r in ledger.records():
            if r.type == SESS_OPEN and r.item and (r.device, r.sid) in opened:
                try:
                    kind = self.registry.get(device_of(r.device)).kind
                except RegistryError:
                    continue
                self._remember_item(r.device, r.sid, kind, r.payer, r.t0, r.item)
                items += 1
        settled = self.settle_ledger(ledger)
        with self._lock:
            pending = [r for k, r in self._pending.items()]
        for r in pending:
            self.settle(r)
        return {"items": items, "settled": settled, "retried": len(pending)}
