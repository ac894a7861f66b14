# Rental station (power banks, wheelchairs, lockers): one state machine per slot.
#   stocked --scan--> authorise (deposit-free on credit, or deposit) -> record open -> unlock
#   offered --taken--> lock; the rental is open (the item's tag identifies it anywhere)
#   offered --timeout--> relock, record close at zero ("not_taken")
#   empty --returned(tag)--> close with duration: fee = rate x started periods, capped; past the
#   cap the rental converts to a purchase. A return of an item rented at another station gets
#   its start from the cloud's answer to the return request.
import asyncio

from apps.rentfee import rental_fee
from apps.base import SessionApp, Machine, T_OPEN, T_CLOSE, setup_app
import store

TAKE_WAIT_S = 30


TABLE = {
    ("stocked", "rent"): "t_rent",
    ("offered", "taken"): "t_taken",
    ("offered", "timeout"): "t_not_taken",
    ("empty", "returned"): "t_returned",
    ("stocked", "taken"): "t_forced",
    ("offered", "cancel"): "t_cancel",
    ("stocked", "staff"): "t_staff",
    ("empty", "staff"): "t_staff",
    ("staff", "taken"): "t_noop",  # staff restocking or removing an item: no rental, no alarm
    ("staff", "returned"): "t_noop",
    ("staff", "timeout"): "t_staff_end",
}


def _entry(k):  # slot m's kth entry in the app's list S, as an attribute of the view
    return property(lambda m: m.app.S[4 * m.i + k], lambda m, v: _put(m, k, v))


def _put(m, k, v):
    m.app.S[4 * m.i + k] = v


def _data(m):
    d = m.app.S[4 * m.i + 1]
    if d is None:
        d = m.app.S[4 * m.i + 1] = {}
    return d


class Slot(Machine):
    """Slot i's machine as a view: its state, data and timer are four entries of the app's list S,
    and a Slot is made when something needs one (a machine object kept per slot was ~140 B of RAM
    each, 8 a station; the entries are 32 B a slot). Views of one slot all see the same machine."""
    table = TABLE
    name = property(lambda m: "slot%d" % m.i)  # made when needed, never kept
    state = _entry(0)
    data = property(_data, lambda m, v: _put(m, 1, v or None))  # None: no data, no dict
    _timer = _entry(2)
    _tstate = _entry(3)

    def __init__(self, app, i, load=False):
        self.app = app
        self.i = i
        if load:  # once per slot at boot: its saved state and data, or stocked
            super().__init__(app, None, None, "stocked")  # a station is installed stocked


class RentalApp(SessionApp):
    NKEY = "rent_n"
    REST = ("stocked", "empty")

    def __init__(self, ctx, hw):
        super().__init__(ctx, hw)
        self.nslots = n = len(hw.get("slots"))
        self.stock = store.read("stock", None) or {}  # slot -> the item's tag, learnt when it was put in
        self.out = store.read("rentals", None) or {}  # item tag -> [sid, payer, t0, auth, offline]
        self.S = [None] * (4 * n)  # per slot: state, data, timer, the timer's state
        for i in range(n):
            Slot(self, i, True)

    def machines(self):
        for i in range(self.nslots):
            yield Slot(self, i)

    def _present(self, i):
        return self.hw.get("slots")[i].value

    def _lock(self, i, on=0):  # slot i's lock: locked, or (on=1) unlocked
        self.hw.get("locks")[i].set(on)

    def _tag(self, i):
        return self.stock.get(str(i)) or "%s-item%d" % (self.ctx.device, i)

    def start(self):
        for m in self.machines():
            self._resume(m)
        self.hw.on("slots", self._slot)
        self.hw.on("qr", self._scan)
        self.hw.on("rfid", self._read)

    def _read(self, tag):
        # an item read in a slot that is waiting for it (its return was seen before its tag)
        for m in self.machines():
            if m.state == "empty" and self._present(m.i):
                asyncio.create_task(m.fire("returned", tag))

    def _resume(self, m):
        c, typ = m.committed(), m.data.get("pend_t")
        i = m.i
        if c and "staff" not in m.data:
            # the record reached flash, its transition's save did not: the record stands, finish it
            if typ == T_OPEN and m.state == "stocked":
                m.state = "offered"  # offered below (or taken, if it is gone)
            elif typ == T_CLOSE and m.state in ("offered", "empty"):  # not taken, cancelled, returned
                if self.out.pop(m.data.get("tag"), None):
                    store.write("rentals", self.out)  # never closed twice on its next read
                self._lock(i)
                m.state, m.data = "stocked", {}
                print("FSM", m.name, "resume -> stocked")
        if m.state == "offered" and typ == T_OPEN and c is False:
            m.state = "stocked"  # the rental was never on flash: relock, nothing owed
            self._lock(i)
        elif m.state == "offered":
            asyncio.create_task(self._reoffer(m))
        elif m.state == "staff":
            m.later(1000, "staff")  # relock once the inputs are read after the reset
        elif m.state == "empty" and typ == T_CLOSE and c is False and self._present(i):
            asyncio.create_task(m.fire("returned", self.hw.value("rfid")))
        m.data.pop("pend", None)
        m.data.pop("pend_t", None)
        m.save()

    async def _reoffer(self, m):
        # The rental is on record. Decide from the slot sensor once the inputs have been read
        # after the reset (not from the power-up default): gone -> taken, else offer it again.
        await asyncio.sleep_ms(1000)
        if m.state != "offered":
            return
        if not self._present(m.i):
            await m.fire("taken")
        else:
            self._lock(m.i, 1)
            m.later(TAKE_WAIT_S * 1000, "offered")

    def _slot(self, i, present):  # back in (the reader at the slots saw its tag as it went in), or gone
        m = Slot(self, i)
        asyncio.create_task(m.fire("returned", self.hw.value("rfid")) if present else m.fire("taken"))

    def _scan(self, payer):
        for m in self.machines():
            if m.state == "stocked":
                asyncio.create_task(m.fire("rent", payer))
                return
        self.say("Nothing to rent here")

    async def t_rent(self, m, payer):
        if not self.tariff:
            self.say("Out of service: no tariff")
            return None
        if self.ctx.now() is None:  # a rental that cannot be timed is never started (SPEC §5)
            self.say("Sorry: no rental now")
            return None
        i = m.i
        sid, t0 = self.new_sid(), self.now()
        d = await self.authorize(sid, payer, "rent", slot=i, t0=t0)
        if not d.granted:
            self.say("Sorry: " + (d.reason or "not authorised"))
            return None
        tag = self._tag(i)
        f = {10: sid, 11: payer, 12: i, 13: t0, 21: tag}  # 21 item: how a return elsewhere finds it
        if d.auth:
            f[15] = d.auth
        if d.offline:
            f[14] = True
        m.data.update(sid=sid, payer=payer, t0=t0, auth=d.auth, off=d.offline, tag=tag)
        try:
            self.record(m, T_OPEN, f)
        except Exception as e:
            self.refuse(e)
            return None
        if d.offline:
            self.offline_opened(sid, payer, t0)
        self._lock(i, 1)
        self.say("Take slot %d" % (i + 1))
        m.later(TAKE_WAIT_S * 1000, "offered")
        return "offered"

    def t_taken(self, m):
        d = m.data
        self._lock(m.i)
        self.out[d["tag"]] = [d["sid"], d["payer"], d["t0"], d["auth"], d["off"]]
        store.write("rentals", self.out)
        m.data = {}
        return "empty"

    def t_not_taken(self, m, why="not_taken"):  # relocked, closed at zero
        d = m.data
        self._lock(m.i)
        self.close(m, d["sid"], d["payer"], m.i, d["t0"], 0, why, d["auth"], d["off"])
        m.data = {}
        return "stocked"

    def t_forced(self, m):
        self.ctx.alarm("slot_forced", {"slot": m.i})
        return "empty"

    async def t_returned(self, m, tag):
        i = m.i
        if not tag:  # the reader has not read the item (yet, e.g. just after a reset): wait for it
            return None
        r = self.out.get(tag)
        if r is None:  # rented elsewhere (or unknown): the cloud knows when it started
            sid = self.new_sid()
            d = await self.authorize(sid, tag, "return", slot=i)
            if not d.granted or d.t0 is None:
                asyncio.create_task(self.ctx.send(4, {10: "unknown_return", 11: {"tag": tag, "slot": i}}))
                return "stocked"  # keep the item; the cloud settles it from the event
            r = [d.rsid or sid, d.payer or tag, d.t0, d.auth, False]
        now = self.ctx.now()
        if now is None:  # no trusted time: taken back unmeasured (t1 = t0, 0); the cloud prices it
            t1, amount, why = r[2], 0, "untimed"
        else:
            t1 = max(now, r[2])
            amount, converted = rental_fee(self.tariff, r[2], t1)
            why = "purchase" if converted else "returned"
        m.data["tag"] = tag
        self.stock[str(i)] = tag
        store.write("stock", self.stock)
        self.close(m, r[0], r[1], i, r[2], amount, why, r[3], r[4], t1)
        self.out.pop(tag, None)
        store.write("rentals", self.out)
        self._lock(i)
        self.say("Returned: %d" % amount)
        m.data = {}
        return "stocked"

    def target(self, t):
        return Slot(self, t) if t < self.nslots else None

    def t_staff(self, m, rsid, t, hold_ms):
        if not self.staff(m, rsid, t):
            return None
        self._lock(t, 1)
        self.say("Staff: slot %d" % (t + 1))
        m.later(hold_ms, "staff")
        return "staff"

    def t_staff_end(self, m):
        i = m.i
        self._lock(i)
        m.data = {}
        return "stocked" if self._present(i) else "empty"

    async def cancel(self, sid):
        for m in self.machines():
            if m.data.get("sid") == sid:
                return await m.fire("cancel")
        for tag, r in self.out.items():
            if r[0] == sid:  # out on rental: closed at no charge; the item stays where it is
                self.cancel_kept(tag, sid, r[1], None, r[2], r[3], r[4])
                return True
        return False

    def forget(self, tag):
        self.out.pop(tag, None)
        store.write("rentals", self.out)

    def t_cancel(self, m):
        self.say("Cancelled: no charge")
        return self.t_not_taken(m, "cancelled")


def setup(ctx):
    return setup_app(ctx, RentalApp)
