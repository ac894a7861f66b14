# Vending cabinet (unmanned container): one state machine for its door.
#   scan -> pre-authorise (pay-after order in progress) -> record open -> unlock -> door opened ->
#   door closed -> lock -> items taken = inventory before minus after (RFID tags "SKU#serial")
#   priced from the signed price list -> record close (the settlement; the cloud captures it).
# Alarms: door left open, door opened without a session. A door never opened relocks and
# settles at zero.
import asyncio

from apps import fees
from apps.basket import vending as basket_fee
from apps.base import SessionApp, Machine, T_OPEN, T_CLOSE, setup_app

OPEN_WAIT_S = 30      # unlocked door not opened: relock
LEFT_OPEN_S = 120     # door open this long: alarm

TABLE = {
    ("idle", "scan"): "t_scan",
    ("idle", "door_open"): "t_forced",
    ("unlocked", "door_open"): "t_opened",
    ("unlocked", "timeout"): "t_not_opened",
    ("open", "door_closed"): "t_closed",
    ("open", "timeout"): "t_left_open",
    ("forced", "door_closed"): "t_forced_closed",
    ("unlocked", "cancel"): "t_cancel",
    ("open", "cancel"): "t_cancel",
    ("idle", "staff"): "t_staff",
    ("staff", "door_open"): "t_noop",  # staff at the shelves: no alarm, no session
    ("staff", "door_closed"): "t_staff_end",
    ("staff", "timeout"): "t_staff_end",
}


class VendingApp(SessionApp):
    NKEY = "vend_n"

    def __init__(self, ctx, hw):
        super().__init__(ctx, hw)
        self.m = Machine(self, "door", TABLE, "idle")
        self._wait_inv = False  # a settlement waits for the reader's first inventory since boot

    def machines(self):
        return (self.m,)

    def start(self):
        m = self.m
        c, typ = m.committed(), m.data.get("pend_t")
        if c and typ == T_OPEN and m.state == "idle":
            m.state = "unlocked"  # the session reached flash, its transition's save did not: it stands
        if m.state in ("unlocked", "open"):
            if (typ == T_OPEN and c is False) or (typ == T_CLOSE and c):
                # no session was ever on flash, or its settlement already is: never charge twice
                m.state, m.data = "idle", {}
                m.save()
                self.hw.get("door_lock").lock()
                if c:
                    print("FSM door resume -> idle")  # settled: the close was on flash
            else:
                asyncio.create_task(self._resume(m))
        elif m.state == "staff":
            self._spawn("timeout")  # relock, once the door is closed
        self.hw.on("qr", lambda v: self._spawn("scan", v))
        self.hw.on("rfid", self._inv)
        self.hw.on("door", lambda v: self._spawn("door_open" if v else "door_closed"))

    async def _resume(self, m):
        # Decide once the inputs are read after the reset, not from the power-up default. Unlocked
        # at the cut: the door may have been opened and shut while the power was off (the lock is
        # shut now), so settle it as an opened door, by the inventory: what was taken is charged.
        await asyncio.sleep_ms(1000)
        if m.state == "unlocked":
            await m.fire("door_open")
        if m.state == "open":
            if not self.hw.value("door"):
                await m.fire("door_closed")
            else:
                m.later(LEFT_OPEN_S * 1000, "open")

    def _inv(self, v):
        if self._wait_inv:
            self._wait_inv = False
            self._spawn("door_closed")

    def _spawn(self, event, *a):
        asyncio.create_task(self.m.fire(event, *a))

    def inventory(self):
        """Tags in the cabinet ("SKU#serial"), as the cabinet's RFID reader last reported them."""
        v = self.hw.value("rfid")
        return v.split(",") if v else []

    async def t_scan(self, m, payer):
        # no prices; or no inventory read since the reset, when "before" would be empty and every
        # item taken free (t_closed waits for the reader the same way)
        if not self.tariff or self.hw.value("rfid") is None:
            self.say("Out of service")
            return None
        sid = self.new_sid()
        t0 = self.now()
        d = await self.authorize(sid, payer, "vend")
        if not d.granted:
            self.say("Sorry: " + (d.reason or "not authorised"))
            return None
        f = {10: sid, 11: payer, 13: t0}
        if d.auth:
            f[15] = d.auth
        if d.offline:
            f[14] = True
        m.data = {"sid": sid, "payer": payer, "t0": t0, "auth": d.auth, "off": d.offline,
                  "limit": d.limit, "before": self.inventory()}
        try:
            self.record(m, T_OPEN, f)
        except Exception as e:
            self.refuse(e)
            return "idle"
        if d.offline:
            self.offline_opened(sid, payer, t0)
        self.hw.get("door_lock").unlock()
        self.say("Open the door")
        m.later(OPEN_WAIT_S * 1000, "unlocked")  # named: the machine has not moved yet
        return "unlocked"

    def t_opened(self, m):
        m.later(LEFT_OPEN_S * 1000, "open")
        return "open"

    def t_not_opened(self, m):
        self.hw.get("door_lock").lock()
        return self._settle(m, [], "not_opened")

    def t_closed(self, m):
        self.hw.get("door_lock").lock()
        if self.hw.value("rfid") is None:
            # No inventory read since the reset: "nothing left" would charge for everything.
            # Settle once the reader reports (it does on its own; the door stays locked).
            self._wait_inv = True
            return None
        if m.data.get("cx"):
            return self._settle(m, [], "cancelled")  # cancelled while the door was open
        after = self.inventory()
        taken = {}
        for tag in m.data["before"]:
            if tag not in after:
                sku = tag.split("#")[0]
                taken[sku] = taken.get(sku, 0) + 1
        return self._settle(m, [[k, v] for k, v in taken.items()], "normal")

    def _settle(self, m, taken, reason):
        d = m.data
        try:
            amount, lines = basket_fee(self.tariff, taken)
        except fees.FeeError:
            amount, lines, reason = 0, [[k, v, 0] for k, v in taken], "unpriced"  # the cloud prices it
        self.close(m, d["sid"], d["payer"], None, d["t0"], amount, reason, d["auth"], d["off"], None, lines)
        self.say("Thank you: %d" % amount)
        m.data = {}
        return "idle"

    def target(self, t):
        return self.m if t == 0 else None

    def t_staff(self, m, rsid, t, hold_ms):
        if not self.staff(m, rsid, t):
            return None
        self.hw.get("door_lock").unlock()
        self.say("Staff: open")
        m.later(hold_ms, "staff")
        return "staff"

    def t_staff_end(self, m):
        if self.hw.value("door"):
            return None  # still open: locks once it is closed
        self.hw.get("door_lock").lock()
        m.data = {}
        return "idle"

    async def cancel(self, sid):
        m = self.m
        return m.data.get("sid") == sid and await m.fire("cancel")

    def t_cancel(self, m):
        if m.state == "open":  # someone is at the shelves: settle at zero once the door closes
            m.data["cx"] = 1
            return None
        self.hw.get("door_lock").lock()
        return self._settle(m, [], "cancelled")

    def t_left_open(self, m):
        self.ctx.alarm("door_left_open", {"sid": m.data.get("sid")})
        return None

    def t_forced(self, m):
        self.ctx.alarm("door_forced")
        return "forced"

    def t_forced_closed(self, m):
        self.ctx.alarm("door_forced", None, False)
        return "idle"


def setup(ctx):
    return setup_app(ctx, VendingApp)
