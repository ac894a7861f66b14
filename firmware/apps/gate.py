# Parking gate: one state machine per lane (entry, exit), one transition table each.
#   entry: car on loop -> plate -> authorised (cloud pay-after, or offline within policy):
#          record entry, open | not authorised: show QR, open on the cloud's signed `paid`
#   exit:  car on loop -> plate -> fee from the signed tariff -> authorise/capture -> record
#          close, open -> car passed -> close the barrier
# Safety: the barrier never closes while its loop is occupied; a second car passing on one
# opening is a tailgate alarm. Every record is journaled before the barrier opens.
import asyncio

from apps import fees
from apps.base import SessionApp, Machine, T_OPEN, T_CLOSE, setup_app
import store

PAY_WAIT_S = 120   # how long a car may wait at the QR code
HOLD_MS = 1500     # barrier stays open this long after the car has passed

ENTRY = {
    ("idle", "car"): "t_car",
    ("plate", "plate"): "t_entry_plate",
    ("plate", "gone"): "t_gone",
    ("qr", "gone"): "t_gone",
    ("qr", "paid"): "t_entry_paid",
    ("open", "gone"): "t_passed",
    ("passing", "car"): "t_tailgate",
    ("passing", "closed"): "t_closed",
}
EXIT = {
    ("idle", "car"): "t_car",
    ("plate", "plate"): "t_exit_plate",
    ("plate", "gone"): "t_gone",
    ("qr", "gone"): "t_gone",
    ("qr", "paid"): "t_exit_paid",
    ("open", "gone"): "t_passed",
    ("passing", "car"): "t_tailgate",
    ("passing", "closed"): "t_closed",
}


class GateApp(SessionApp):
    def __init__(self, agent, hw):
        super().__init__(agent, hw)
        self.parked = store.read("parked", None) or {}  # plate -> [sid, payer, t0, auth, offline]
        self.lanes = {}
        for lane, table in (("entry", ENTRY), ("exit", EXIT)):
            if hw.has(lane + "_loop"):
                self.lanes[lane] = Machine(self, lane, table, "idle")
        self.n = store.read("gate_n", 0)

    def start(self):
        for lane, m in self.lanes.items():
            self._resume(lane, m)
            self.hw.on(lane + "_loop", lambda v, ln=lane: self._spawn(ln, "car" if v else "gone"))
            self.hw.on(lane + "_camera", lambda plate, ln=lane: self._spawn(ln, "plate", plate))

    def _spawn(self, lane, event, *args):
        asyncio.create_task(self.lanes[lane].fire(event, *args))

    def _barrier(self, m):
        return self.hw.get(m.name + "_barrier")

    def _occupied(self, m):
        return self.hw.value(m.name + "_loop")

    # ---- power-cut recovery -----------------------------------------------------------------
    def _resume(self, lane, m):
        st = m.state
        if st in ("open", "passing"):
            # Never drop a barrier on a car after a reset: keep it open, and close it only once
            # the loop (read afresh after the hold time) is clear. A car that passed while the
            # unit was down leaves "open" with its loop clear: it must not stay open for the next.
            self._barrier(m).open()
            asyncio.create_task(self._clear_later(m))
        elif st in ("plate", "qr"):
            c = m.committed()
            if c:  # the record reached flash before the cut: finish what it promised
                m.state = "open"
                m.data.pop("pend", None)
                m.save()
                self._barrier(m).open()
            else:  # nothing was committed: start over with this car (never a free exit)
                m.state, m.data = "idle", {}
                m.save()
                if self._occupied(m):
                    self._spawn(lane, "car")

    # ---- transitions ------------------------------------------------------------------------
    def t_car(self, m):
        m.data = {}
        self.say("Welcome" if m.name == "entry" else "Goodbye")
        return "plate"

    def t_gone(self, m):
        m.data = {}
        self.say("")
        return "idle"

    def _sid(self):
        self.n += 1
        store.write("gate_n", self.n)
        return "%s-%d-%d" % (self.agent.device[-8:], self.agent.boots, self.n)

    async def t_entry_plate(self, m, plate):
        if plate in self.parked:
            self.say("Already inside")
            return None
        sid = self._sid()
        t0 = self.now()
        m.data.update(sid=sid, plate=plate, t0=t0)
        d = await self.authorize(sid, plate, "entry", slot=0)
        if not d.granted:
            m.data["reason"] = d.reason
            self.say(self._why(d) + "Scan QR to pay: " + sid)
            asyncio.create_task(self._await_paid(m, sid))
            return "qr"
        return self._enter(m, plate, plate, t0, d.auth, d.offline)

    @staticmethod
    def _why(d):
        # an offline refusal says why (not on the list, over a cap...): paying by QR needs the cloud
        return "Sorry: %s. " % d.reason if d.reason and d.reason.startswith("offline") else ""

    async def _await_paid(self, m, sid):
        d = await self.wait_paid(sid, PAY_WAIT_S)
        if d is not None and d.granted and m.state == "qr" and m.data.get("sid") == sid:
            await m.fire("paid", d.auth)

    def t_entry_paid(self, m, auth):
        return self._enter(m, m.data["plate"], m.data["plate"], m.data["t0"], auth, False)

    def _enter(self, m, plate, payer, t0, auth, offline):
        f = {10: m.data["sid"], 11: payer, 12: 0, 13: t0}
        if auth:
            f[15] = auth
        if offline:
            f[14] = True
        try:
            self.record(m, T_OPEN, f)  # write-ahead: the entry is on flash before the barrier moves
        except Exception as e:
            return self._refuse(m, e)
        if offline:
            self.offline_opened(m.data["sid"], payer, t0)
        self.parked[plate] = [m.data["sid"], payer, t0, auth, offline]
        store.write("parked", self.parked)
        self._barrier(m).open()
        self.say("Welcome " + plate)
        return "open"

    async def t_exit_plate(self, m, plate):
        if not self.tariff:
            self.say("Out of service: no tariff")
            return None
        p = self.parked.get(plate)
        now = self.now()
        if p is None:  # no entry on record: the lost-ticket price, never a free exit
            sid, payer, t0, auth, lost = self._sid(), plate, now, None, True
        else:
            sid, payer, t0, auth, lost = p[0], p[1], p[2], p[3], False
        amount = fees.parking(self.tariff, t0, max(now, t0), lost)
        cur = self.tariff[2]
        m.data.update(sid=sid, plate=plate, payer=payer, t0=t0, t1=max(now, t0), amount=amount, auth=auth,
                      lost=lost)
        d = await self.authorize(sid, payer, "exit", 0, amount, cur, t0, auth)
        if not d.granted:
            self.say(self._why(d) + "Pay %d %s: scan QR %s" % (amount, cur, sid))
            asyncio.create_task(self._await_paid(m, sid))
            return "qr"
        return self._leave(m, d.auth or auth, d.offline)

    def t_exit_paid(self, m, auth):
        return self._leave(m, auth, False)

    def _leave(self, m, auth, offline):
        d = m.data
        f = {10: d["sid"], 11: d["payer"], 12: 0, 13: d["t0"], 16: d["amount"], 17: self.tariff[2],
             18: d["t1"], 20: "lost" if d["lost"] else "normal"}
        if auth:
            f[15] = auth
        if offline:
            f[14] = True
        try:
            self.record(m, T_CLOSE, f)  # the charge is on flash before the barrier opens
        except Exception as e:
            return self._refuse(m, e)
        if offline:
            self.offline_charged(d["sid"], d["payer"], d["amount"])
        self.parked.pop(d["plate"], None)
        store.write("parked", self.parked)
        self._barrier(m).open()
        self.say("Paid %d. Goodbye" % d["amount"])
        return "open"

    def _refuse(self, m, e):
        # Journal full (or broken): fail closed, say why, raise an alarm; the barrier stays shut.
        import gc
        print("record refused:", repr(e), gc.mem_free())
        self.say("Out of service")
        asyncio.create_task(self.agent.send(5, {10: "journal_full", 11: {"why": repr(e)[:40]}, 12: True}))
        return "idle"

    def t_passed(self, m):
        m.data["t_pass"] = 1
        asyncio.create_task(self._close_later(m))
        return "passing"

    async def _close_later(self, m):
        await asyncio.sleep_ms(HOLD_MS)
        if m.state == "passing":
            await m.fire("closed")

    async def _clear_later(self, m):
        await asyncio.sleep_ms(HOLD_MS)
        if m.state == "open" and not self._occupied(m):
            await m.fire("gone")
        elif m.state == "passing":
            await m.fire("closed")  # t_closed checks the loop

    def t_tailgate(self, m):
        # A second car on the loop while the barrier is still up on one payment.
        asyncio.create_task(self.agent.send(5, {10: "tailgate", 11: {"lane": m.name}, 12: True}))
        self.say("One car per payment")
        return "open"  # keep it open: it closes only once the loop is clear

    def t_closed(self, m):
        if self._occupied(m):
            return "open"  # never close on a car
        self._barrier(m).close()
        m.data = {}
        return "idle"


def setup(agent):
    return setup_app(agent, GateApp)
