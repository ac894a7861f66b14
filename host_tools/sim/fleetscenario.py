"""What the fleet's devices do (host_tools/sim/fleet.py): the customers of a gate, a vending
cabinet and a rental station, as the apps of firmware/apps/ meet them, on the protocol only.

- gate: cars arrive every `every` real seconds on average (exponential); a car's entry asks
  `auth_req entry` (slot 0, t0), a grant journals the sess_open, the car stays 10-120 simulated
  minutes, its exit prices the stay (host_tools/cloud/fees, the FEES.md rules the cloud checks
  with), asks `auth_req exit` with the amount and journals the sess_close.
- vending: a customer asks `vend`, a grant journals the sess_open, the door is open 1-3 s, 0-2
  items are taken and the sess_close carries the basket's lines and amount.
- rental: a renter asks `rent` for a free slot (t0), the sess_open names the item's tag, the
  item comes back to the same station 10-90 simulated minutes later; the close is the rental fee
  (or the purchase price past it).
Payers come from pools the cloud has bound to pay-after accounts (PAYERS per kind); about one in
thirty is unknown (a refusal: no session) and a few accounts are refused by the provider. New
customers stop at `until`; every session opened closes before `close_by`, so a run ends with
every journal closed and (once acked) empty.

Payment success (host_tools/sim/fleetreconcile.py): every customer who comes is counted once as
an `attempt` (a car at the gate with a plate not already inside, a cabinet customer, a renter at a
station with a free item); a device that is off the broker or not yet ready (clock, tariff) keeps
its customer waiting up to PATIENCE real seconds (a reconnect takes real seconds however fast the
simulated clock runs), then the customer leaves (`turned_away`, a failure). The cloud's refusals
(`denied`: an unknown payer, an account the provider refuses) are left out of the rate.

Scenarios: `traffic` (the mix above), `idle` (connected and heartbeating, no customers), `storm`
(traffic, and at half time every device drops its connection at once and reconnects).
"""
from __future__ import annotations

import asyncio
import time

from host_tools.cloud import fees
from host_tools.sim.fleetdevice import FleetDevice

SCENARIOS = ("traffic", "idle", "storm")
POOL = 200                 # bound payers per kind
PREFIX = {"gate": "PL", "vending": "qr-", "rental": "tag-"}
REFUSED = 3                # vending accounts the provider refuses (acct-qr-0000 ...)
PATIENCE = 20.0            # real seconds a customer waits for a device that is not ready


def payers(kind: str) -> list[str]:
    return [f"{PREFIX[kind]}{i:04d}" for i in range(POOL)]


def account(payer: str) -> str:
    return f"acct-{payer.lower()}"


def refused_accounts() -> list[str]:
    return [account(f"{PREFIX['vending']}{i:04d}") for i in range(REFUSED)]


class App:
    """The customers of one device until `until` (monotonic); sessions closed by `close_by`."""

    def __init__(self, dev: FleetDevice, until: float, close_by: float, every: float):
        self.d = dev
        self.until, self.close_by, self.every = until, close_by, every
        self.n = 0
        self.open: set[str] = set()
        self.tasks: set[asyncio.Task] = set()

    def sid(self) -> str:
        self.n += 1
        return f"{self.d.kind[0]}{self.d.boots}-{self.n}"

    def payer(self) -> str:
        rng = self.d.rng
        if rng.random() < 1 / 30:
            return f"{PREFIX[self.d.kind]}x{rng.randrange(10**6)}"  # nobody bound: refused
        return rng.choice(payers(self.d.kind))

    def ready(self) -> bool:
        return self.d.mq.up and self.d.trusted() and self.d.tariff is not None

    def stay(self, lo_min: float, hi_min: float) -> float:
        """Real seconds of a stay of lo-hi simulated minutes, ending before close_by."""
        want = self.d.rng.uniform(lo_min, hi_min) * 60 / self.d.rate
        left = self.close_by - time.monotonic() - 1.0
        if want <= left:
            return want
        return self.d.rng.uniform(0.5, max(0.5, left))  # spread the late ones: no burst at close_by

    async def arrive(self) -> bool:
        """A customer is here (one attempt, however often the device then retries): True once the
        device can serve them, False if they left after PATIENCE seconds (turned away)."""
        self.note("attempts")
        if not self.ready():
            self.note("waited")  # the device was off the broker or not ready when they came
        waited = 0.0
        while not self.ready() and waited < PATIENCE and self.d.running:
            await asyncio.sleep(0.2)
            waited += 0.2
        if self.ready():
            return True
        self.note("turned_away")
        return False

    def later(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def run(self) -> None:
        rng = self.d.rng
        await self.pause(rng.uniform(0, self.every))
        while time.monotonic() < self.until and self.d.running:
            try:
                await self.customer()  # it counts its attempt and waits for the device (arrive)
            except Exception:  # noqa: BLE001 - one customer's failure must not stop the device
                self.d.stats.c["customer_error"] += 1
            await self.pause(rng.expovariate(1 / self.every))
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    async def pause(self, seconds: float) -> None:
        """The wait for the next customer, cut at `until`: nobody comes after it, and a device of a
        big fleet (every = N/25 s, an exponential gap of minutes) must not keep the drain waiting."""
        await asyncio.sleep(max(0.0, min(seconds, self.until - time.monotonic())))

    def note(self, what: str) -> None:
        self.d.stats.c[what] += 1

    async def customer(self) -> None:
        raise NotImplementedError

    def cur(self) -> str:
        return self.d.tariff[2]  # type: ignore[index]


class Gate(App):
    async def customer(self) -> None:
        d = self.d
        plate = self.payer()
        if plate in self.open:
            return
        if not await self.arrive():
            return
        sid, t0 = self.sid(), d.now()
        if t0 is None:
            self.note("turned_away")
            return
        ans = await d.authorize(sid, plate, "entry", slot=0, t0=t0)
        if not ans or not ans.get(2):
            self.note("denied" if ans else "unanswered")
            return
        auth = ans.get(3)
        d.record("sess_open", {"sid": sid, "payer": plate, "slot": 0, "t0": t0, **({"auth": auth} if auth else {})})
        self.note("sessions_opened")
        self.open.add(plate)
        self.later(self.leave(sid, plate, t0, auth, self.stay(10, 120)))

    async def leave(self, sid: str, plate: str, t0: int, auth: str | None, after: float) -> None:
        d = self.d
        await asyncio.sleep(after)
        while d.now() is None:  # a reboot: wait for the clock (the firmware would close untimed)
            await asyncio.sleep(0.5)
        tariff = d.tariff or {}
        # Each try is priced at its own time and says so (iat = t1: the cloud prices an exit at the
        # request's iat). If an earlier try was charged and only its answer was lost, the grant's
        # limit is what was charged: the close is that try's (t1, amount), so all sides agree.
        tries: list[tuple[int, int]] = []
        ans = None
        for _ in range(3):
            t1 = max(d.now() or t0, t0)
            amount = fees.parking(tariff, t0, t1)
            tries.append((t1, amount))
            ans = await d.authorize(sid, plate, "exit", tries=1, slot=0, amount=amount, cur=tariff[2], t0=t0,
                                    auth=auth, iat=t1)
            if ans is not None:
                break
        if not ans or not ans.get(2):
            self.note("exit_unconfirmed")  # the car leaves anyway; the cloud settles the close
        t1, amount = tries[-1]
        if ans and ans.get(2) and ans.get(4) != amount:
            t1, amount = next((t for t in reversed(tries) if t[1] == ans.get(4)), tries[-1])
        d.record("sess_close", {"sid": sid, "payer": plate, "slot": 0, "t0": t0, "amount": amount, "cur": tariff[2],
                                "t1": t1, "reason": "normal", **({"auth": auth} if auth else {})})
        self.note("sessions_closed")
        self.open.discard(plate)


class Vending(App):
    async def customer(self) -> None:
        d = self.d
        payer = self.payer()
        if not await self.arrive():
            return
        sid, t0 = self.sid(), d.now()
        if t0 is None:
            self.note("turned_away")
            return
        ans = await d.authorize(sid, payer, "vend")
        if not ans or not ans.get(2):
            self.note("denied" if ans else "unanswered")
            return
        auth = ans.get(3)
        extra = {"auth": auth} if auth else {}
        d.record("sess_open", {"sid": sid, "payer": payer, "t0": t0, **extra})
        self.note("sessions_opened")
        await asyncio.sleep(d.rng.uniform(1, 3))
        skus = [s for s, _ in (d.tariff or {}).get(8, [])]
        taken: dict[str, int] = {}
        for _ in range(d.rng.choice([0, 1, 1, 2, 2])):
            s = d.rng.choice(skus)
            taken[s] = taken.get(s, 0) + 1
        amount, lines = fees.vending(d.tariff, [[k, v] for k, v in taken.items()])
        d.record("sess_close", {"sid": sid, "payer": payer, "t0": t0, "amount": amount, "cur": self.cur(),
                                "t1": max(d.now() or t0, t0), "lines": [list(x) for x in lines], "reason": "normal",
                                **extra})
        self.note("sessions_closed")


class Rental(App):
    SLOTS = 8

    async def customer(self) -> None:
        d = self.d
        free = [i for i in range(self.SLOTS) if str(i) not in self.open]
        if not free:
            return
        slot = d.rng.choice(free)
        payer = self.payer()
        if not await self.arrive():
            return
        sid, t0 = self.sid(), d.now()
        if t0 is None:
            self.note("turned_away")
            return
        ans = await d.authorize(sid, payer, "rent", slot=slot, t0=t0)
        if not ans or not ans.get(2):
            self.note("denied" if ans else "unanswered")
            return
        auth = ans.get(3)
        tag = f"{d.id}-item{slot}"
        d.record("sess_open", {"sid": sid, "payer": payer, "slot": slot, "t0": t0, "item": tag,
                               **({"auth": auth} if auth else {})})
        self.note("sessions_opened")
        self.open.add(str(slot))
        self.later(self.back(sid, payer, slot, t0, auth, self.stay(10, 90)))

    async def back(self, sid: str, payer: str, slot: int, t0: int, auth: str | None, after: float) -> None:
        d = self.d
        await asyncio.sleep(after)
        while d.now() is None:
            await asyncio.sleep(0.5)
        t1 = max(d.now() or t0, t0)
        amount, converted = fees.rental(d.tariff, t0, t1)
        d.record("sess_close", {"sid": sid, "payer": payer, "slot": slot, "t0": t0, "amount": amount,
                                "cur": self.cur(), "t1": t1, "reason": "purchase" if converted else "returned",
                                **({"auth": auth} if auth else {})})
        self.note("sessions_closed")
        self.open.discard(str(slot))


APPS = {"gate": Gate, "vending": Vending, "rental": Rental}


def app_for(dev: FleetDevice, until: float, close_by: float, every: float) -> App:
    return APPS[dev.kind](dev, until, close_by, every)
