# What every payment app shares: the signed tariff, the signed offline policy and allowlist,
# asking the cloud to authorise a payer (auth_req -> `auth` / `paid` commands), deciding offline
# within the policy, re-authorising offline sessions on reconnect, and write-ahead session
# records. Apps (gate, vending, rental) are explicit state machines on top (Machine below).
# An app sees the device only through its context (agent.Context): self.ctx.
import asyncio
import time
from micropython import const

import store
from commands import CommandError
from apps import fees

T_OPEN, T_CLOSE = 6, 8  # sess_open, sess_close (SPEC §4): the apps import these
_T_AUTH_REQ = const(10)
# sess_open / sess_close / auth_req field keys (SPEC §4)
_K_SID = const(10)
_K_PAYER = const(11)
_K_SLOT = const(12)
_K_T0 = const(13)
_K_OFFLINE = const(14)  # sess_*; auth_req: purpose
_K_PURPOSE = const(14)
_K_AUTH = const(15)
_K_AMOUNT = const(16)
_K_CUR = const(17)
_K_T1 = const(18)       # sess_close; auth_req: t0
_K_REQ_T0 = const(18)
_K_REQ_T1 = const(19)   # auth_req: when its amount was priced
_K_LINES = const(19)
_K_REASON = const(20)
_K_OFF_AMT = const(18)  # heartbeat: the offline budget used (SPEC §4)
_K_OFF_N = const(19)
MAX_ALLOW = 200     # allowlist entries kept on the device (RAM and flash bound)
AUTH_TIMEOUT_S = 8  # then decide offline
STAFF_HOLD_S = 10   # a staff `open` stays open this long for nobody (sim: / clock rate)


class Decision:
    def __init__(self, granted, auth=None, limit=None, reason=None, offline=False):
        self.granted = granted
        self.auth = auth
        self.limit = limit
        self.reason = reason
        self.offline = offline
        self.t0 = self.rsid = self.payer = None  # a return elsewhere: the rental's start, id, payer


def _intkeys(d):
    """Signed maps come back from the JSON store with text keys; their keys are ints."""
    return {int(k): v for k, v in d.items()} if d else d


def _int(v, lo=0):
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


class SessionApp:
    NKEY = "n"  # the store name of the app's session counter (sids)

    def __init__(self, ctx, hw):
        self.ctx = ctx
        self.hw = hw
        self.sids = store.Counter(self.NKEY)  # reserved in blocks: not a flash write per session
        self.tariff = _intkeys(store.read("tariff", None))
        self.policy = _intkeys(store.read("policy", None))
        self.allow = store.read("allow", None) or {"v": 0, "p": {}}
        # offline exposure and the sessions to re-authorise once the cloud is back
        self.off = store.read("offline", None) or {"n": 0, "amt": 0, "per": {}, "todo": []}
        self._waits = {}  # sid -> [Event, Decision or None]
        self.flags = []   # sids whose offline re-authorisation the cloud refused (also alarmed)
        on = ctx.on_command
        on("set_tariff")(self._set_tariff)
        on("set_policy")(self._set_policy)
        on("set_allowlist")(self._set_allowlist)
        on("auth")(self._auth)
        on("paid")(self._paid)
        on("open")(self._open)
        on("cancel_session")(self._cancel)
        ctx.on_link(self._link)

    REST = ("idle",)  # the machine states in which nothing is in progress

    def busy(self):
        """A session mid-way (an authorisation awaited, a barrier, door or slot in motion or
        open): an update waits (SPEC §10). A parked car or a rental out is at rest."""
        if self._waits:
            return True
        for m in self.machines():
            if m.state not in self.REST:
                return True
        return False

    def new_sid(self):
        return "%s-%d-%d" % (self.ctx.device[-8:], self.ctx.boots, self.sids.next())

    def refuse(self, e):
        """A record could not be journaled (journal full or broken): fail closed, say so, alarm."""
        print("record refused:", repr(e))
        self.say("Out of service")
        self.ctx.alarm("journal_full", {"why": repr(e)[:40]})

    def t_noop(self, m, *a):
        return None

    def forget(self, key):
        pass  # apps with a session table (parked cars, rentals out) drop `key` from it

    # ---- staff commands (SPEC §4): `open`, `cancel_session` -----------------------------------
    async def _open(self, a):
        t, sid, hold = a.get(1), a.get(2), a.get(3, STAFF_HOLD_S)  # sid: the cloud's, in its own log
        if not _int(t) or not _int(hold) or not (sid is None or isinstance(sid, str)):
            raise CommandError("bad_args", "open")
        m = self.target(t)  # the app's machine for barrier / door / slot t, or None
        if m is None:
            raise CommandError("bad_args", "target")
        if (m.state, "staff") not in m.table:
            raise CommandError("busy", m.state)  # a customer's session has it: cancel that first
        rsid = self.new_sid()
        await m.fire("staff", rsid, t, hold * 1000 // self.ctx.rate)
        if m.data.get("staff") != rsid:
            raise CommandError("failed", "journal")  # not on record, so not opened
        return {"sid": rsid}

    def staff(self, m, rsid, t):
        """Journal a staff open (a zero-amount close, payer "staff", reason remote_open) before
        anything moves; False (refused, said why) if it cannot be."""
        old, m.data = m.data, {"staff": rsid}  # noted with the record: a resume knows it was staff
        try:
            self.close(m, rsid, "staff", t, self.now(), 0, "remote_open")
        except Exception as e:
            m.data = old
            self.refuse(e)
            return False
        return True

    async def _cancel(self, a):
        sid = a.get(1)
        if not isinstance(sid, str):
            raise CommandError("bad_args", "cancel")
        if not await self.cancel(sid):  # the app: True once closed at no charge (journaled)
            raise CommandError("refused", "no such session")
        return {"sid": sid}

    def close(self, m, sid, payer, slot, t0, amount, reason, auth=None, off=False, t1=None, lines=None):
        """Journal a session's close (sess_close, the settlement the cloud captures) before acting,
        then count an offline one against the policy. Raises if it cannot be journaled."""
        f = {_K_SID: sid, _K_PAYER: payer, _K_T0: t0, _K_AMOUNT: amount, _K_CUR: (self.tariff or {}).get(2, "XXX"),
             _K_T1: t1 or max(self.now(), t0), _K_REASON: reason}
        if slot is not None:
            f[_K_SLOT] = slot
        if lines is not None:
            f[_K_LINES] = lines
        if auth:
            f[_K_AUTH] = auth
        if off:
            f[_K_OFFLINE] = True
        self.record(m, T_CLOSE, f)
        if off:
            self.offline_charged(sid, payer, amount)

    def cancel_kept(self, key, sid, payer, slot, t0, auth, off):
        """Cancel a session kept in the app's table (a parked car, a rental out): record, then
        forget(key); a cut in between is finished at boot."""
        cx = Machine(self, "cx", None, "idle")
        cx.data = {"key": key}
        self.close(cx, sid, payer, slot, t0, 0, "cancelled", auth, off)
        self.say("Cancelled: no charge")
        self.forget(key)
        cx.data = {}
        cx.save()

    # ---- signed configuration ---------------------------------------------------------------
    def _set_tariff(self, a):
        try:
            fees.validate(a)
        except fees.FeeError as e:
            raise CommandError("bad_args", e.code)
        if self.tariff and a[1] < self.tariff[1]:
            raise CommandError("bad_args", "older version")
        self.tariff = a
        store.write("tariff", a)
        return {"version": a[1]}

    def _set_policy(self, a):
        for k in (1, 3, 4, 5, 6):
            if not _int(a.get(k)):
                raise CommandError("bad_args", "policy %d" % k)
        cur = a.get(2)
        if not isinstance(cur, str) or len(cur) != 3 or not cur.isupper():
            raise CommandError("bad_args", "policy cur")
        self.policy = a
        store.write("policy", a)
        return {"version": a[1]}

    def _set_allowlist(self, a):
        ver, mode = a.get(1), a.get(2)
        if not _int(ver, 1) or mode not in (0, 1):
            raise CommandError("bad_args", "allowlist")
        p = {} if mode == 0 else dict(self.allow["p"])
        if mode == 1 and a.get(3) != self.allow["v"]:
            raise CommandError("bad_args", "base %d" % self.allow["v"])  # the cloud then sends a full list
        for e in a.get(5, ()):
            p.pop(e, None)
        for e in a.get(4, ()):
            if not (isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and _int(e[1])):
                raise CommandError("bad_args", "entry")
            p[e[0]] = e[1]
        if len(p) > MAX_ALLOW:
            raise CommandError("refused", "allowlist too long")
        self.allow = {"v": ver, "p": p}
        store.write("allow", self.allow)
        return {"version": ver, "n": len(p)}

    # ---- authorisation ----------------------------------------------------------------------
    def _auth(self, a):
        sid = a.get(1)
        if not isinstance(sid, str) or not isinstance(a.get(2), bool):
            raise CommandError("bad_args", "auth")
        d = Decision(a[2], a.get(3), a.get(4), a.get(5))
        d.t0, d.rsid, d.payer = a.get(7), a.get(8), a.get(9)
        w = self._waits.get(sid)
        if w is not None:
            w[1] = d
            w[0].set()
            return None
        if self._reauth_answer(sid, d):
            return None
        return {"ignored": sid}  # late or unknown: the request timed out and was decided offline

    def _paid(self, a):
        sid, ref = a.get(1), a.get(2)
        if not isinstance(sid, str) or not isinstance(ref, str):
            raise CommandError("bad_args", "paid")
        w = self._waits.get(sid)
        if w is None:
            return {"ignored": sid}
        w[1] = Decision(True, ref)
        w[0].set()

    async def authorize(self, sid, payer, purpose, slot=None, amount=None, cur=None, t0=None, auth=None,
                        t1=None, timeout_s=AUTH_TIMEOUT_S):
        """Ask the cloud; fall back to the offline policy when it cannot answer in time. An amount
        goes with its currency and t1, the instant it was priced: the cloud prices that instant, not
        the request's arrival a second later (a stay that crosses a fee step in between)."""
        if self.ctx.online():
            ev = asyncio.Event()
            self._waits[sid] = [ev, None]
            f = {_K_SID: sid, _K_PAYER: payer, _K_PURPOSE: purpose}
            t = self.ctx.now()
            if t:  # when it was asked (SPEC: iat), so a request queued while the cloud is down can expire
                f[6] = t
            if slot is not None:
                f[_K_SLOT] = slot
            if auth:
                f[_K_AUTH] = auth
            if amount is not None:
                f[_K_AMOUNT], f[_K_CUR], f[_K_REQ_T1] = amount, cur, t1
            if t0 is not None:
                f[_K_REQ_T0] = t0
            try:
                await asyncio.wait_for(self._ask(f, ev), timeout_s)
            except asyncio.TimeoutError:
                pass
            d = self._waits.pop(sid)[1]
            if d is not None:
                return d
        return self.offline_decision(payer, amount, t0)

    async def _ask(self, f, ev):
        await self.ctx.send(_T_AUTH_REQ, f)
        await ev.wait()

    def offline_decision(self, payer, amount=None, t0=None):
        p = self.policy
        if p is None:
            return Decision(False, reason="offline: no policy")
        if payer not in self.allow["p"]:
            return Decision(False, reason="offline: not allowed")
        o = self.off
        if t0 is None and o["n"] >= p[5]:  # a new offline session (an exit/return ends one)
            return Decision(False, reason="offline: too many")
        if t0 is not None and self.now() - t0 > p[6]:
            return Decision(False, reason="offline: too long")  # max offline session duration
        room = min(p[3] - o["per"].get(payer, 0), p[4] - o["amt"], self.allow["p"][payer])
        if room <= 0 or (amount is not None and amount > room):
            return Decision(False, reason="offline: over cap")
        return Decision(True, None, room, None, True)

    def offline_opened(self, sid, payer, t0):
        """Count an offline session against the policy and queue it for re-authorisation."""
        o = self.off
        o["n"] += 1
        o["todo"].append([sid, payer, t0, 0])
        store.write("offline", o)

    def offline_charged(self, sid, payer, amount):
        o = self.off
        o["amt"] += amount
        o["per"][payer] = o["per"].get(payer, 0) + amount
        for t in o["todo"]:
            if t[0] == sid:
                t[3] = amount
                break
        else:  # opened online, closed offline: its charge is offline exposure too, to re-authorise
            o["todo"].append([sid, payer, None, amount])
        store.write("offline", o)

    def beat(self, hb):
        """The heartbeat's offline budget used: charged offline and sessions opened offline, not
        yet re-authorised (absent = 0)."""
        o = self.off
        if o["amt"]:
            hb[_K_OFF_AMT] = o["amt"]
        if o["n"]:
            hb[_K_OFF_N] = o["n"]

    def _link(self, up):
        if up and self.off["todo"]:
            asyncio.create_task(self._reauth_all())

    async def _reauth_all(self):
        await asyncio.sleep(1)  # let hello/status go first
        for sid, payer, t0, amount in list(self.off["todo"]):
            f = {_K_SID: sid, _K_PAYER: payer, _K_PURPOSE: "reauth"}
            if t0 is not None:
                f[_K_REQ_T0] = t0
            if amount:
                f[_K_AMOUNT], f[_K_CUR] = amount, (self.policy or {}).get(2, "XXX")
            try:
                await self.ctx.send(_T_AUTH_REQ, f)
            except Exception:
                return

    def _reauth_answer(self, sid, d):
        o = self.off
        for t in o["todo"]:
            if t[0] == sid:
                o["todo"].remove(t)
                if not d.granted:
                    # Never silently dropped: flagged, alarmed, and the cloud flags it too.
                    self.flags.append(sid)
                    self.ctx.alarm("reauth_refused", {"sid": sid})
                if not o["todo"]:
                    o["n"], o["amt"], o["per"] = 0, 0, {}  # the cloud has taken over the exposure
                store.write("offline", o)
                return True
        return False

    # ---- records (write-ahead) --------------------------------------------------------------
    def record(self, m, typ, fields):
        """Journal a session record before acting (write-ahead); raises JournalFull or CodecError
        (a malformed record), journaling nothing: fail closed.

        The record's seq is noted in the machine first, so after a power cut `m.committed()` tells
        whether it reached flash: redo nothing that was committed, trust nothing that was not.
        """
        c = self.ctx
        if not c.money:
            raise OSError("no journal")
        seq = c.next_seq()
        m.data["pend"], m.data["pend_t"] = seq, typ
        m.save()
        try:
            c.record(typ, fields, seq)
        except MemoryError:  # a fragmented heap (seen just after a reboot): collect, try once more
            import gc
            gc.collect()
            c.record(typ, fields, seq)
        return seq

    def now(self):
        return self.ctx.now() or int(time.time())

    def say(self, text, seconds=0):
        self.hw.display.show(text, seconds)


class Machine:
    """An explicit state machine: TABLE maps (state, event) -> method name; the method runs the
    transition and returns the next state. State and its data are persisted at every transition,
    so after a power cut the unit resumes where the last committed transition left it."""
    _timer = _tstate = table = None  # _timer, _tstate: set on an instance only while it has a timer

    def __init__(self, app, name, table, initial):
        # name, table: None when a subclass has them as class attributes or a property (RAM x machines)
        self.app = app
        if name:
            self.name = name
        if table:
            self.table = table
        saved = store.read("m_" + self.name, None)
        self.state, self.data = (saved[0], saved[1]) if saved else (initial, {})

    def later(self, ms, state, event="timeout"):
        """Fire `event` after `ms` if the machine is then in `state`. One timer per machine: a new
        one, or leaving `state`, cancels it (a sleeping task holds its frame for the whole wait:
        a 120 s door timer per session was ~0.5 KB live per session at a fast pace)."""
        self.cancel()
        self._tstate = state
        self._timer = asyncio.create_task(self._after(ms, state, event))

    async def _after(self, ms, state, event):
        await asyncio.sleep_ms(ms)
        self._timer = None
        if self.state == state:
            await self.fire(event)

    def cancel(self):
        t = self._timer
        if t is not None:
            self._timer = None
            t.cancel()

    def save(self):
        store.write("m_" + self.name, [self.state, self.data])

    def committed(self):
        """After a reset: was the record noted by the last transition committed? None if none."""
        seq = self.data.get("pend")
        if seq is None:
            return None
        return self.app.ctx.committed(seq)

    async def fire(self, event, *args):
        m = self.table.get((self.state, event))
        if m is None:
            return False  # not meaningful in this state: ignored, never an actuation
        nxt = getattr(self.app, m)(self, *args)
        if hasattr(nxt, "send"):
            nxt = await nxt
        if nxt is not None:
            self.state = nxt
        if self._timer is not None and self.state != self._tstate:
            self.cancel()
        self.data.pop("pend", None)  # the transition is complete: its record is no longer in doubt
        self.data.pop("pend_t", None)
        self.save()
        print("FSM", self.name, event, "->", self.state)
        return True


def setup_app(ctx, cls):
    """Start the app `cls` on the board's peripherals (called by apps.<kind>.setup)."""
    app = cls(ctx, ctx.hw)
    # a `cancel_session` of a session kept in the app's table notes its record's seq first
    # (cancel_kept): a power cut between that record and forgetting the session is finished here
    saved = store.read("m_cx", None)
    if saved and saved[1]:
        cx = Machine(app, "cx", None, "idle")
        if cx.committed():
            app.forget(cx.data["key"])
        cx.data = {}
        cx.save()
    app.start()
    ctx.on_busy(app.busy)
    ctx.on_beat(app.beat)
    return app
