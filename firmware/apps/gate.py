# Parking gate: one state machine per lane (entry, exit), one transition table each.
#   entry: car on loop -> plate -> authorised (cloud pay-after, or offline within policy):
#          record entry, open | not authorised: show QR, open on the cloud's signed `paid`
#   exit:  car on loop -> plate -> fee from the signed tariff -> authorise/capture -> record
#          close, open -> car passed -> close the barrier
# Safety: the barrier never closes while its loop is occupied; a second car passing on one
# opening is a tailgate alarm. Every record is journaled before the barrier opens.
import asyncio
import os
from binascii import hexlify

from apps.parkfee import parking
from apps.base import SessionApp, Machine, T_OPEN, setup_app
import store

PAY_WAIT_S = 120   # how long a car may wait at the QR code
HOLD_MS = 1500     # barrier stays open this long after the car has passed (sim: / clock rate)
PARK = "pk"        # one small file per car inside, [sid, payer, t0, auth, offline]: RAM stays
                   # flat however full the car park is (a dict of them was ~200 B a car)
FREE_MIN = 8       # blocks of the state fs no car may take (a parked car costs littlefs ~400 B):
                   # command state, counters and copy-on-write always find room, so a full car
                   # park refuses the next entry and nothing else (256 KiB sim fs: ~550 cars)

ENTRY = {
    ("idle", "car"): "t_car",
    ("plate", "plate"): "t_entry_plate",
    ("plate", "gone"): "t_gone",
    ("qr", "gone"): "t_gone",
    ("qr", "paid"): "t_entry_paid",
    ("open", "gone"): "t_passed",
    ("passing", "car"): "t_tailgate",
    ("passing", "closed"): "t_closed",
    ("idle", "staff"): "t_staff",
    ("qr", "staff"): "t_staff",
    ("open", "closed"): "t_closed",  # a staff open nobody drove through
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
    ("idle", "staff"): "t_staff",
    ("qr", "staff"): "t_staff",
    ("open", "closed"): "t_closed",
}


class GateApp(SessionApp):
    NKEY = "gate_n"

    def __init__(self, ctx, hw):
        super().__init__(ctx, hw)
        try:
            os.mkdir(store.ROOT + PARK)
        except OSError:
            pass  # exists
        self.lanes = {}
        for lane, table in (("entry", ENTRY), ("exit", EXIT)):
            if hw.has(lane + "_loop"):
                self.lanes[lane] = Machine(self, lane, table, "idle")
        # The hold is a physical time (the car clears the arm), so it runs on the site's clock: on a
        # simulated site played at n x real time (sim-only clock_rate) it is n times shorter. A real
        # board's rate is 1: 1.5 s.
        self.hold_ms = HOLD_MS // ctx.rate

    def machines(self):
        return self.lanes.values()

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

    @staticmethod
    def _pk(plate):
        return PARK + "/" + hexlify(plate.encode()).decode()  # any plate text is a safe name

    def _park(self, plate, p):
        store.write(self._pk(plate), p)

    def _unpark(self, plate):
        try:
            os.remove(store.ROOT + self._pk(plate))
        except OSError:
            pass

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
                d = m.data
                if m.name == "entry" and "staff" not in d:  # the car is in: never a lost ticket
                    self._park(d["plate"], [d["sid"], d["plate"], d["t0"], d.get("auth"), d.get("off", False)])
                elif "staff" not in d:  # paid: the car is out
                    self._unpark(d["plate"])
                else:  # a staff open: closes once nobody is on the loop
                    asyncio.create_task(self._clear_later(m))
                m.state = "open"
                m.data.pop("pend", None)
                m.save()
                self._barrier(m).open()
            else:  # nothing was committed: start over with this car (never a free exit)
                if m.name == "entry" and "plate" in m.data and "staff" not in m.data:
                    self._unpark(m.data["plate"])  # parked ahead of a record that never landed
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
        if "sid" in m.data:
            self.unwait(m.data["sid"])  # left the QR code: its payment wait ends now
        m.data = {}
        self.say("")
        return "idle"

    async def t_entry_plate(self, m, plate):
        if store.read(self._pk(plate)) is not None:
            self.say("Already inside")
            return None
        if self.ctx.now() is None:  # a stay that cannot be timed is never started (SPEC §5)
            self.say("Sorry: no entry now")
            return None
        sid = self.new_sid()
        t0 = self.now()
        m.data.update(sid=sid, plate=plate, t0=t0)
        d = await self.authorize(sid, plate, "entry", slot=0, t0=t0)  # one t0 on both sides
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

    async def wait_paid(self, sid, timeout_s):
        """Wait for an out-of-band payment (`paid`, or a late `auth` grant) for `sid`."""
        ev = asyncio.Event()
        self._waits[sid] = [ev, None]
        try:
            await asyncio.wait_for(ev.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass
        return self._waits.pop(sid)[1]

    def unwait(self, sid):
        """The session ended (the car left the QR code): end its payment wait now, not in minutes."""
        w = self._waits.get(sid)
        if w is not None:
            w[0].set()

    async def _await_paid(self, m, sid):
        d = await self.wait_paid(sid, PAY_WAIT_S)
        if d is not None and d.granted and m.state == "qr" and m.data.get("sid") == sid:
            await m.fire("paid", d.auth)

    def t_entry_paid(self, m, auth):
        return self._enter(m, m.data["plate"], m.data["plate"], m.data["t0"], auth, False)

    def _enter(self, m, plate, payer, t0, auth, offline):
        m.data.update(auth=auth, off=offline)  # what a resume needs to park the car
        # Parked before the record: an entry on flash always has its car parked (else its exit
        # would pay the lost-ticket price), and a full state fs refuses the car before any record.
        try:  # a state fs that cannot say how full it is counts as full: fail closed
            if os.statvfs(store.ROOT or "/")[3] < FREE_MIN:
                raise OSError(28)
            self._park(plate, [m.data["sid"], payer, t0, auth, offline])
        except OSError:
            self.say("Car park full")
            self.ctx.alarm("park_full", {"plate": plate})
            return "idle"
        f = {10: m.data["sid"], 11: payer, 12: 0, 13: t0}
        if auth:
            f[15] = auth
        if offline:
            f[14] = True
        try:
            self.record(m, T_OPEN, f)  # write-ahead: the entry is on flash before the barrier moves
        except Exception as e:
            self._unpark(plate)
            self.refuse(e)
            return "idle"
        if offline:
            self.offline_opened(m.data["sid"], payer, t0)
        self._barrier(m).open()
        self.say("Welcome " + plate)
        return "open"

    async def t_exit_plate(self, m, plate):
        if not self.tariff:
            self.say("Out of service: no tariff")
            return None
        p = store.read(self._pk(plate))
        now = self.ctx.now()
        if p is None:  # no entry on record: the lost-ticket price, never a free exit
            now = now or self.now()  # the lost price is flat: the time is only informative
            sid, payer, t0, auth, lost = self.new_sid(), plate, now, None, True
        else:
            sid, payer, t0, auth, lost = p[0], p[1], p[2], p[3], False
        # No trusted time (a reboot, no network yet): the car still leaves; the record says the
        # stay is unmeasured (reason untimed, t1 = t0, nothing charged here) and the cloud prices it.
        untimed = now is None
        t1 = t0 if untimed else max(now, t0)
        amount = 0 if untimed else parking(self.tariff, t0, t1, lost)
        cur = self.tariff[2]
        m.data.update(sid=sid, plate=plate, payer=payer, t0=t0, t1=t1, amount=amount, auth=auth,
                      why="untimed" if untimed else "lost" if lost else "normal")
        d = await self.authorize(sid, payer, "exit", 0, amount, cur, t0, auth, t1)
        if not d.granted:
            self.say(self._why(d) + "Pay %d %s: scan QR %s" % (amount, cur, sid))
            asyncio.create_task(self._await_paid(m, sid))
            return "qr"
        return self._leave(m, d.auth or auth, d.offline)

    def t_exit_paid(self, m, auth):
        return self._leave(m, auth, False)

    def _leave(self, m, auth, offline):
        d = m.data
        try:  # the charge is on flash before the barrier opens
            self.close(m, d["sid"], d["payer"], 0, d["t0"], d["amount"], d["why"], auth, offline, d["t1"])
        except Exception as e:
            self.refuse(e)
            return "idle"
        self._unpark(d["plate"])
        self._barrier(m).open()
        self.say("Goodbye: billed later" if d["why"] == "untimed" else "Paid %d. Goodbye" % d["amount"])
        return "open"

    def t_passed(self, m):
        m.data["t_pass"] = 1
        m.later(self.hold_ms, "passing", "closed")
        return "passing"

    async def _clear_later(self, m):
        await asyncio.sleep_ms(self.hold_ms)
        if m.state == "open" and not self._occupied(m):
            await m.fire("gone")
        elif m.state == "passing":
            await m.fire("closed")  # t_closed checks the loop

    def t_tailgate(self, m):
        # A second car on the loop while the barrier is still up on one payment.
        self.ctx.alarm("tailgate", {"lane": m.name})
        self.say("One car per payment")
        return "open"  # keep it open: it closes only once the loop is clear

    # ---- staff commands ---------------------------------------------------------------------
    def target(self, t):
        return self.lanes.get(("entry", "exit")[t]) if t < 2 else None

    def t_staff(self, m, rsid, t, hold_ms):
        old = m.data.get("sid")
        if not self.staff(m, rsid, t):
            return None
        if old:
            self.unwait(old)  # a car at the QR code: staff let it through
        self._barrier(m).open()
        self.say("Staff: open")
        m.later(hold_ms, "open", "closed")  # closes after a car passes, or after hold_ms for nobody
        return "open"

    async def cancel(self, sid):
        hit = False
        for m in self.lanes.values():
            if m.state == "qr" and m.data.get("sid") == sid:
                self.unwait(sid)  # no payment is awaited any more: the car leaves, or staff open
                hit = True
        for e in os.ilistdir(store.ROOT + PARK):
            if e[0].endswith(".tmp"):
                continue
            p = store.read(PARK + "/" + e[0])
            if p and p[0] == sid:  # p[1], the payer, is the plate
                self.cancel_kept(p[1], sid, p[1], 0, p[2], p[3], p[4])
                return True
        if hit:  # at a QR code, nothing on record yet (an entry, a lost ticket)
            self.say("Cancelled: no charge")
        return hit

    def forget(self, plate):
        self._unpark(plate)

    def t_closed(self, m):
        if self._occupied(m):
            return "open"  # never close on a car
        self._barrier(m).close()
        m.data = {}
        return "idle"


def setup(ctx):
    return setup_app(ctx, GateApp)
