"""The auth flows of the session service (host_tools/cloud/sessions.py, whose module doc has every
rule): a verified auth_req in, a decision on top of the provider's idempotent order, the signed
`auth` (or `paid`) out; the QR path of gates.

`AuthFlows` is a mixin of `SessionService`: it uses the service's state helpers (_state, _save,
_flag, _fee, _limit, account, tariff) and its store.
"""
from __future__ import annotations

import hashlib
import logging

from host_tools.cloud.chains import device_of
from host_tools.cloud.payafter import (MODE_DEPOSIT, IllegalTransition, LimitExceeded, Order,
                                       OrderConflict, OrderNotFound, OrderState, PayAfterError,
                                       PayerRefused, ProviderUnavailable)
from host_tools.cloud.registry import RegistryError
from host_tools.cloud.session_core import ServiceCore
from host_tools.cloud.session_model import (CLOSING, OPENING, PURPOSES, R_CLOSED, R_CONFLICT,
                                            R_NO_ORDER, R_NO_TARIFF, R_PURPOSE, R_QR, R_REFUSED,
                                            R_UNAVAILABLE, R_UNKNOWN, SessionState)
from host_tools.protocol import ProtocolError, parse_topic

log = logging.getLogger("edgepay.sessions")


class AuthFlows(ServiceCore):
    # ---- auth_req in -------------------------------------------------------------------------
    def _on_req(self, topic: str, payload: bytes, done=None) -> None:
        """paho's thread: verify, then hand to the pool (provider calls and publishing block).
        done (durable instances): acknowledges the request to the broker, called once it is
        answered or judged, so a request whose instance dies mid-answer is delivered again."""
        self.stats["received"] += 1
        try:
            try:
                device, suffix = parse_topic(topic)
                if suffix != "up/req":
                    raise ProtocolError("bad_topic", topic)
                dev = self.registry.get(device)
                msg, dev = self.registry.open_uplink_message(dev, topic, payload)  # by its kid (SPEC §11)
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
            if not dev.active:  # revoked or decommissioned: authentic, but nothing it asks is granted
                self.refused[f"device_{dev.status}"] += 1
                log.warning("request from %s device %s refused", dev.status, device)
                return
            self._pool.submit(self._handle_safe, device, dev.kind, msg, done, dev.key_version)
            done = None  # the pool's job acknowledges it
        finally:
            if done is not None:
                done()

    def _handle_safe(self, device: str, kind: str, msg: dict, done=None, key_version: int | None = None) -> None:
        """key_version (a request as received: its device id and key version): keyed by its chain
        first (sessions.py _chain); None: `device` is already the chain (a claim taken over)."""
        try:
            if key_version is not None:
                device = self._chain(device, key_version, msg["seq"])
            self.handle(device, kind, msg)
        except Exception:  # noqa: BLE001 - a worker must survive; the device retries
            self.stats["errors"] += 1
            log.exception("auth_req from %s failed", device)
        finally:
            if done is not None:
                done()

    def handle(self, device: str, kind: str, msg: dict) -> tuple[str, dict]:
        """Decide and answer one verified auth_req; returns (command name, args) sent (("", {}):
        nothing sent, because it expired or another instance answers it)."""
        sid = msg["sid"]
        if self._expired(msg):  # the customer has gone: a late grant must not open an order
            self.stats["expired"] += 1
            log.warning("auth_req seq %s of %s (%s) expired: not answered", msg["seq"], device, msg["purpose"])
            return "", {}
        with self._slock(device, sid):
            key = (device, msg["seq"])
            if self.instance is not None:
                holder = self.store.claim(device, msg["seq"], self.instance, self.clock())
                if holder != self.instance:
                    self.stats["answered_elsewhere"] += 1   # every instance gets it; one claim answers
                    self._watch(device, kind, msg, holder)  # ...unless the holder dies first
                    return "", {}
            digest = hashlib.sha256(repr(tuple(sorted(msg.items()))).encode()).digest()
            with self._lock:
                hit = self._answered.get(key) or self.store.answer(device, msg["seq"])
            if hit is not None:
                if hit[0] != digest:                       # one seq, two contents: never answered
                    self.refused["seq_reuse"] += 1
                    log.error("auth_req seq %s of %s reused with other content: ignored", msg["seq"], device)
                    return hit[1]
                self.stats["duplicates"] += 1              # a QoS1 duplicate: the same answer
                self._send(device, *hit[1])
                return hit[1]
            s = self._state(device, sid, kind)
            try:
                answer = self._decide(s, kind, msg)
                s.answers += 1
            finally:
                self._save(s)                              # whatever the provider did is recorded
            with self._lock:
                self.store.save_answer(device, msg["seq"], digest, answer, self.clock())
                self._answered[key] = (digest, answer)
                while len(self._answered) > self._answer_cache:
                    self._answered.popitem(last=False)
            self._send(device, *answer)
            return answer

    def _expired(self, msg: dict) -> bool:
        """Older than auth_expiry_s by its own signed instant: iat, else the t1 an amount was priced
        at, else the t0 an entry or a rental starts at. A reauth (an offline session, old by nature)
        and a request with none of them never expire."""
        if self.auth_expiry_s is None or msg["purpose"] == "reauth":
            return False
        t = msg.get("iat") or msg.get("t1") or (msg.get("t0") if msg["purpose"] in ("entry", "rent") else None)
        return t is not None and self.clock() - t > self.auth_expiry_s

    def _decide(self, s: SessionState, kind: str, msg: dict) -> tuple[str, dict]:
        purpose = msg["purpose"]
        if purpose not in PURPOSES.get(kind, ()):
            return self._deny(s, R_PURPOSE)
        if purpose in OPENING:
            return self._open(s, msg)
        if purpose == "return" and s.order_no is None and s.status == "new":
            return self._return(s, msg)  # a session it never rented: an item from elsewhere
        if purpose in CLOSING:
            return self._close(s, msg)
        return self._reauth(s, msg)

    def _send(self, device: str, name: str, args: dict) -> None:
        device = device_of(device)  # a chain DEVICE~R is answered as the device (topic, key, aud)
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
        # the instant the device priced the stay (t1, SPEC §4 auth_req), else when it asked (iat):
        # a request sealed a second after its pricing must not be charged the next fee step
        t1 = msg.get("t1", msg.get("iat", now))
        if "iat" in msg and t1 > msg["iat"]:
            self._flag("clock_skew", s, f"request t1 {t1} is after its iat {msg['iat']}; iat used")
            t1 = msg["iat"]
        if abs(t1 - now) > self.max_skew_s:
            self._flag("clock_skew", s, f"request time {t1} is {t1 - now:+d} s from the cloud's clock; cloud time used")
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
            ref = self.store.item(msg["payer"])
            rs = self._known(*ref) if ref else None
        if rs is None or rs.closed or rs.t0 is None:
            s.payer = msg["payer"]
            return self._deny(s, "unknown item")
        with self._lock:
            self.store.set_link(s.device, rs.sid, (rs.device, rs.sid))
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
                  dev_amount: int | None, cloud: int | None,
                  end_device: str | None = None) -> Order | None:
        """complete (start first if still CREATED); None when it must be retried later."""
        if amount > order.limit:
            self._flag("over_limit", s, f"fee {amount} above the order limit {order.limit}: limit charged",
                       device_amount=dev_amount, cloud_amount=cloud, charged=order.limit)
            amount = order.limit
            lines = [[lines[0][0] if lines else "fee", 1, amount]]
        try:
            if order.state is OrderState.CREATED:
                order = self.provider.start(order.order_no)
            done = self.provider.complete(order.order_no, amount, order.cur, lines, end_device or s.device, t1)
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
        """The user scanned the QR code of a session without pay-after (a gate's unknown plate),
        then `paid` {1: sid, 2: order_no} is sent. Idempotent (`paid` is sent again).

        At the entry (no exit asked yet) the QR pre-authorises: an order for the QR's account is
        created and started (DOING, the device's limit), like a bound plate's entry; the exit then
        charges the fee to it. At the exit (denied "scan QR to pay") the QR pays the fee that exit
        computed: the order is created, started and completed at once."""
        if account is not None and not (isinstance(account, str) and account):
            raise ValueError("account: a non-empty string")
        with self._slock(device, sid):
            s = self._known(device, sid)
            if s is None:
                raise KeyError(f"no session {device}/{sid}")
            account = account or f"qr:{device}:{sid}"
            try:
                if s.qr_amount is None and not s.closed:
                    order = self._qr_preauthorise(s, account)
                else:
                    order = self._qr_pay(s, account, int(self.clock()) if now is None else now)
            finally:
                self._save(s)
            self._send(device, "paid", {1: sid, 2: order.order_no})
            return order

    def _qr_preauthorise(self, s: SessionState, account: str) -> Order:
        if self.tariff(s.device) is None:
            raise ValueError(f"no tariff for {s.device}: cannot open an order")
        s.account = account
        order = self._open_order(s, account)       # create + start, both idempotent
        if order.state is OrderState.DONE:         # called again after the exit charged it
            s.charged = order.amount
            return order
        if order.state is not OrderState.DOING:
            raise IllegalTransition(f"QR order is {order.state.value}", order.order_no)
        s.status, s.granted = "authorized", True
        return order

    def _qr_pay(self, s: SessionState, account: str, now: int) -> Order:
        tariff = self.tariff(s.device)
        amount = s.qr_amount
        lines: list = []
        if amount is None:
            amount, lines, why = self._fee(s.kind, tariff, s.t0, now)
            if amount is None:
                raise ValueError(f"cannot price {s.device}/{s.sid}: {why}")
            s.cloud_amount = amount
        lines = lines or [["park" if s.kind == "gate" else "fee", 1, amount]]
        cur = s.cur or (tariff[2] if tariff else None)
        if cur is None:
            raise ValueError(f"no currency for {s.device}/{s.sid}")
        order_no = f"{s.device}:{s.sid}"
        try:                                       # an order may exist (a retry after a crash)
            order = self.provider.get(order_no)
        except OrderNotFound:
            order = self.provider.create(order_no, account, s.device, s.sid, amount, cur, self.order_expires_s)
        s.order_no, s.account, s.cur = order_no, order.payer, cur
        if order.state is OrderState.CREATED:
            order = self.provider.start(order_no)
        if order.state is OrderState.DOING:
            done = self._complete(s, order, amount, lines, now, s.device_amount, s.cloud_amount)
            if done is None:
                raise ProviderUnavailable("the QR payment did not complete: retry", order_no)
            order = done
        if order.state is not OrderState.DONE:
            raise IllegalTransition(f"QR order is {order.state.value}", order_no)
        s.charged, s.status = order.amount, "paid"
        return order
