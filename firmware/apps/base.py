# What every payment app shares: the signed tariff, the signed offline policy and allowlist,
# asking the cloud to authorise a payer (auth_req -> `auth` / `paid` commands), deciding offline
# within the policy, re-authorising offline sessions on reconnect, and write-ahead session
# records. Apps (gate, vending, rental) are explicit state machines on top (Machine below).
import asyncio
import time

import store
from commands import CommandError
from apps import fees

T_AUTH_REQ, T_OPEN, T_UPDATE, T_CLOSE = 10, 6, 7, 8
MAX_ALLOW = 200     # allowlist entries kept on the device (RAM and flash bound)
AUTH_TIMEOUT_S = 8  # then decide offline


class Decision:
    __slots__ = ("granted", "auth", "limit", "reason", "offline", "t0", "rsid", "payer")

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
    def __init__(self, agent, hw):
        self.agent = agent
        self.hw = hw
        self.tariff = _intkeys(store.read("tariff", None))
        self.policy = _intkeys(store.read("policy", None))
        self.allow = store.read("allow", None) or {"v": 0, "p": {}}
        # offline exposure and the sessions to re-authorise once the cloud is back
        self.off = store.read("offline", None) or {"n": 0, "amt": 0, "per": {}, "todo": []}
        self._waits = {}  # sid -> [Event, Decision or None]
        self.flags = []   # sids whose offline re-authorisation the cloud refused (also alarmed)
        on = agent.cmds.on
        on("set_tariff")(self._set_tariff)
        on("set_policy")(self._set_policy)
        on("set_allowlist")(self._set_allowlist)
        on("auth")(self._auth)
        on("paid")(self._paid)
        agent.mqtt.on_state(self._link)

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
                        timeout_s=AUTH_TIMEOUT_S, wait_paid=False):
        """Ask the cloud; fall back to the offline policy when it cannot answer in time."""
        if self.agent.mqtt.up:
            ev = asyncio.Event()
            self._waits[sid] = [ev, None]
            f = {10: sid, 11: payer, 14: purpose}
            if slot is not None:
                f[12] = slot
            if auth:
                f[15] = auth
            if amount is not None:
                f[16], f[17] = amount, cur
            if t0 is not None:
                f[18] = t0
            try:
                await asyncio.wait_for(self._ask(f, ev), timeout_s)
            except asyncio.TimeoutError:
                pass
            d = self._waits.pop(sid)[1]
            if d is not None:
                return d
        if wait_paid:
            return Decision(False, reason="offline")
        return self.offline_decision(payer, amount, t0)

    async def _ask(self, f, ev):
        await self.agent.send(T_AUTH_REQ, f)
        await ev.wait()

    async def wait_paid(self, sid, timeout_s):
        """Wait for an out-of-band payment (`paid`, or a late `auth` grant) for `sid`."""
        ev = asyncio.Event()
        self._waits[sid] = [ev, None]
        try:
            await asyncio.wait_for(ev.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass
        return self._waits.pop(sid)[1]

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

    def _link(self, up):
        if up and self.off["todo"]:
            asyncio.create_task(self._reauth_all())

    async def _reauth_all(self):
        await asyncio.sleep(1)  # let hello/status go first
        for sid, payer, t0, amount in list(self.off["todo"]):
            f = {10: sid, 11: payer, 14: "reauth"}
            if t0 is not None:
                f[18] = t0
            if amount:
                f[16], f[17] = amount, (self.policy or {}).get(2, "XXX")
            try:
                await self.agent.send(T_AUTH_REQ, f)
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
                    asyncio.create_task(self.agent.send(5, {10: "reauth_refused", 11: {"sid": sid}, 12: True}))
                if not o["todo"]:
                    o["n"], o["amt"], o["per"] = 0, 0, {}  # the cloud has taken over the exposure
                store.write("offline", o)
                return True
        return False

    # ---- records (write-ahead) --------------------------------------------------------------
    def record(self, m, typ, fields):
        """Journal a session record before acting (write-ahead); raises JournalFull (fail closed).

        The record's seq is noted in the machine first, so after a power cut `m.committed()` tells
        whether it reached flash: redo nothing that was committed, trust nothing that was not.
        """
        up = self.agent.uplink
        if up is None:
            raise OSError("no journal")
        seq = self.agent.seq.next()
        m.data["pend"], m.data["pend_t"] = seq, typ
        m.save()
        try:
            up.record(typ, fields, seq)
        except MemoryError:  # a fragmented heap (seen just after a reboot): collect, try once more
            import gc
            gc.collect()
            up.record(typ, fields, seq)
        return seq

    def now(self):
        return self.agent.clock.now() or int(time.time())

    def say(self, text, seconds=0):
        self.hw.display.show(text, seconds)


class Machine:
    """An explicit state machine: TABLE maps (state, event) -> method name; the method runs the
    transition and returns the next state. State and its data are persisted at every transition,
    so after a power cut the unit resumes where the last committed transition left it."""

    def __init__(self, app, name, table, initial):
        self.app = app
        self.name = name
        self.table = table
        saved = store.read("m_" + name, None)
        self.state, self.data = (saved[0], saved[1]) if saved else (initial, {})

    def save(self):
        store.write("m_" + self.name, [self.state, self.data])

    def committed(self):
        """After a reset: was the record noted by the last transition committed? None if none."""
        seq = self.data.get("pend")
        if seq is None:
            return None
        return self.app.agent.journal.last_seq >= seq

    async def fire(self, event, *args):
        m = self.table.get((self.state, event))
        if m is None:
            return False  # not meaningful in this state: ignored, never an actuation
        nxt = getattr(self.app, m)(self, *args)
        if hasattr(nxt, "send"):
            nxt = await nxt
        if nxt is not None:
            self.state = nxt
        self.data.pop("pend", None)  # the transition is complete: its record is no longer in doubt
        self.data.pop("pend_t", None)
        self.save()
        print("FSM", self.name, event, "->", self.state)
        return True


def setup_app(agent, cls):
    """Build the board's peripherals and start the app `cls` on them (called by apps.<kind>.setup)."""
    import board
    import hal
    hw = hal.build(board.load(agent.board), sim=agent.cfg.get("sim"))
    if hw.has("display"):
        agent.display = hw.get("display")  # the built-in `display` command shows on the board's own
    app = cls(agent, hw)
    agent.app = app
    app.start()
    return app
