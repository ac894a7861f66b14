"""Scenario scripts for a simulated site (host_tools/sim/world.py): deterministic plans from a seed,
played by one actor thread per lane / cabinet / station on the world's simulated clock.

    plan = hour_plan(seed=7, devices=[("gate-1", "gate"), ("vend-1", "vending"), ("rent-1", "rental")])
    Runner(world, plan).run()          # blocks until the plan is played; world.events logs it
    world.reconcile(runner.expected())

"An hour at a site" (`hour_plan`, span 3600 s of simulated time, stragglers until span + 300):
- gate: cars arrive every 3-5 minutes; about two in three are pay-after plates (bound to an
  account, and on the offline allowlist) staying 17-50 minutes; the others are unknown plates that
  scan the QR at the entry (`SessionService.pay_by_qr`: it pre-authorises an order that the exit
  charges) and stay 8-40 minutes (some within the free minutes, most paying one period). Cars that arrive during the outage are regulars (they enter
  offline, within the signed policy, and are re-authorised when the uplink is back).
- vending: a customer every 4-7 minutes scans a QR, opens the door, takes 0-2 items (the RFID
  reader reports the cabinet's tags), closes it; the cabinet is restocked when it runs low. One
  customer's pay-after credit is refused (never unlocks); one customer comes during the outage.
- rental: a renter every 5-8 minutes takes an item and returns it to the same slot 10-55 minutes
  later (one started period, 2.00); one rents during the outage. Returns at another station are
  not played: the session service does not answer a `return` for a rental it did not open at the
  same station (the app supports it, the cloud does not yet).
- faults: a network outage of the site's uplink (FaultyProxy.partition) for 8 minutes at 40% of
  the span, and a power cut (SimBoard.kill + restart) of the first gate at 65% (cars are parked
  across it), or of the first device when there is no gate.
- a firmware update (with the faults, by default): one signed release per board class (version
  0.2.0, seq 2, built from firmware/ as it is) deployed to every device, one campaign per class
  through the rollout engine (World.updates), when the first gate's first car after a quarter of
  the span arrives, and well before the outage. That car's driver stops under the open barrier
  until the gate reports its install `deferred` (busy: a car mid-passage), then drives on; the
  gate installs once it has passed. A device rebooting into its trial is down a second or two:
  the world keeps the actors' new actions off it meanwhile (host_tools/sim/updates.py), so they
  run a little late, as around the power cut.

Amounts are deterministic: every fee the plan causes is known in advance (`Runner.expected()`);
exits and returns never happen within a simulated minute of a fee boundary (a minute of parking
either way is one period more or less), so clock skew between the actors, the devices and the
cloud cannot change an amount.
"""
from __future__ import annotations

import random
import re
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from host_tools.cloud import fees
from host_tools.sim.world import PARKING, RENTAL, VENDING, World

SPAN = 3600
TAIL = 300
MARGIN = 60          # simulated seconds kept clear of a fee boundary
WAIT = 12.0          # real seconds a device gets to react
PRICES = {sku: p for sku, p in VENDING[8]}
STOCK = ["cola#1", "cola#2", "chips#1", "chips#2", "water#1", "water#2", "nuts#1", "nuts#2"]


@dataclass(order=True)
class Job:
    at: float                                   # simulated seconds from the start of the plan
    actor: str = field(compare=False)           # "gate-1/entry", "vend-1", "site", ...
    action: str = field(compare=False)
    args: dict = field(default_factory=dict, compare=False)


@dataclass
class Plan:
    seed: int
    span: int
    jobs: list[Job]
    binds: dict[str, str]                       # payer -> account
    allow: dict[str, dict[str, int]]            # device -> offline allowlist {payer: cap}
    refused: list[str]                          # accounts the provider refuses
    outage: tuple[float, float] | None          # (at, seconds)
    power_cut: tuple[float, str] | None         # (at, device)
    update: tuple[float, str | None] | None = None   # (at, the gate whose car defers the install)

    @property
    def end(self) -> float:
        return max((j.at for j in self.jobs), default=0.0)


def _spaced(rng: random.Random, first: float, last: float, lo: float, hi: float) -> list[float]:
    out, t = [], first + rng.uniform(0, lo)
    while t <= last:
        out.append(round(t))
        t += rng.uniform(lo, hi)
    return out


UPDATE = ("0.2.0", 2)   # the hour's release: version, seq (factory firmware is 0.1.0, seq 0)


def hour_plan(seed: int = 0, devices: list[tuple[str, str]] | None = None, span: int = SPAN,
              faults: bool = True, update: bool | None = None) -> Plan:
    """The plan of `span` simulated seconds (an hour by default) at a site with `devices`; with
    `update` (default: as `faults`) a firmware update of every device."""
    devices = devices or [("gate-1", "gate"), ("vend-1", "vending"), ("rent-1", "rental")]
    jobs: list[Job] = []
    binds: dict[str, str] = {}
    allow: dict[str, dict[str, int]] = {}
    refused: list[str] = []
    outage = (round(span * 0.40), max(240, round(span * 0.133))) if faults and span >= 900 else None
    o_lo, o_hi = (outage[0] - 90, outage[0] + outage[1] + 120) if outage else (0, -1)

    def in_outage(t: float) -> bool:
        return o_lo <= t <= o_hi

    for name, kind in devices:
        rng = random.Random(f"{seed}:{name}")
        tag = name.replace("-", "")[-6:].upper()
        allow[name] = {}
        if kind == "gate":
            arrivals = _spaced(rng, 60, span * 0.75, 180, 300)
            if outage and not any(outage[0] + 30 <= a <= outage[0] + outage[1] - 60 for a in arrivals):
                arrivals = sorted(a for a in arrivals if abs(a - (outage[0] + 90)) > 150) + [outage[0] + 90]
                arrivals.sort()
            for i, at in enumerate(arrivals):
                plate = f"{tag}{i:02d}{rng.choice('ABCDEFGHJK')}"
                qr = i % 3 == 1 and not in_outage(at)  # every third car is an unknown plate
                for _ in range(20):
                    stay = rng.uniform(480, 2400) if qr else rng.uniform(1020, 3000)
                    out = at + stay
                    if out <= span + TAIL - 30 and not (qr and in_outage(out)):
                        break
                else:
                    qr, out = False, min(span + TAIL - 30, at + 1020)
                if not qr:
                    binds[plate] = f"acct-{plate.lower()}"
                    allow[name][plate] = 5000
                jobs.append(Job(at, f"{name}/entry", "car_in", {"plate": plate, "qr": qr}))
                jobs.append(Job(round(out), f"{name}/exit", "car_out", {"plate": plate}))
        elif kind == "vending":
            times = _spaced(rng, 120, span, 240, 420)
            refuse_i = len(times) // 3 if len(times) > 2 else -1
            for i, at in enumerate(times):
                who = f"{name[-6:]}-u{i:02d}"
                binds[who] = f"acct-{who}"
                if i == refuse_i and not in_outage(at):
                    refused.append(binds[who])
                else:
                    allow[name][who] = 3000
                take = rng.choice([0, 1, 1, 2, 2])
                jobs.append(Job(at, name, "vend", {"payer": who, "take": take, "pick": rng.random()}))
        elif kind == "rental":
            for i, at in enumerate(_spaced(rng, 200, span * 0.8, 300, 480)):
                who = f"{name[-6:]}-r{i:02d}"
                binds[who] = f"acct-{who}"
                allow[name][who] = 5000
                back = at + rng.uniform(600, 3300)
                if in_outage(back):
                    back = o_hi + rng.uniform(30, 200)
                back = min(back, span + TAIL - 30)
                jobs.append(Job(at, name, "rent", {"payer": who, "back": round(back)}))
    cut = None
    if faults and span >= 900:
        target = next((n for n, k in devices if k == "gate"), devices[0][0])
        cut = (round(span * 0.65), target)
        jobs.append(Job(cut[0], "site", "power_cut", {"device": target}))
    if outage:
        jobs.append(Job(outage[0], "site", "outage", {"seconds": outage[1]}))
    upd = None
    if (faults if update is None else update) and span >= 900:
        # at the first gate's first car from a quarter of the span on, if it comes well before the
        # outage (the update and its reboots take a few real seconds): that car defers the install
        gate = next((n for n, k in devices if k == "gate"), None)
        at, late = round(span * 0.25), (outage[0] - 300) if outage else span * 0.6
        car = next((j for j in sorted(jobs) if gate and j.actor == f"{gate}/entry" and at <= j.at <= late), None)
        if car is not None:
            car.args["linger"] = True
            at = round(car.at)
        upd = (at, gate if car is not None else None)
        jobs.append(Job(at, "site", "update", {"version": UPDATE[0], "seq": UPDATE[1], "linger": upd[1]}))
    jobs.sort()
    return Plan(seed, span, jobs, binds, allow, refused, outage, cut, upd)


# ---- playing a plan -------------------------------------------------------------------------------
ENDS = ("car_out",)   # jobs that end a session in progress (a rental's return is _return_at's)


class Runner:
    """Plays a Plan on a World: one thread per actor, each job at its simulated time (a busy actor
    runs late jobs as soon as it can; amounts follow what actually happened)."""

    def __init__(self, world: World, plan: Plan, stop: threading.Event | None = None):
        self.w = world
        self.plan = plan
        self.stop = stop or threading.Event()
        self.t0 = 0.0
        self._lock = threading.Lock()
        self.parked: dict[str, dict] = {}           # plate -> {t0, qr, device}
        self.stock: dict[str, list[str]] = {}       # vending device -> tags in the cabinet
        self.slots: dict[str, dict[int, str]] = {}  # rental device -> slot -> item tag (present)
        self.out: dict[str, list] = {}              # renter -> [device, slot, tag, t0]
        self.want: dict[tuple[str, str], int] = {}  # (device, payer) -> expected amount
        self.none: set[tuple[str, str]] = set()     # (device, payer) that must have no session
        self.counts: dict[str, int] = {}
        self._readers: dict[str, threading.Lock] = {}
        self.done = threading.Event()
        self._later: list[threading.Thread] = []    # returns scheduled by rentals: run() waits for them
        self._under: dict[str, threading.Event] = {}  # gate -> its lingering car is under the barrier
        self.campaigns: dict[str, list[str]] = {}   # the update's campaign id -> its devices
        self._releases: dict[str, Any] = {}         # board -> the update's Release (built at the start)
        self._build: threading.Thread | None = None

    # -- set-up and the loop
    def prepare(self) -> None:
        w, p = self.w, self.plan
        for payer, acct in p.binds.items():
            w.bind(payer, acct)
        for acct in p.refused:
            w.provider.refuse(acct)
        for dev, entries in p.allow.items():
            if entries and dev in w.devices:
                w.allowlist(dev, entries)
        for name, d in w.devices.items():
            if d.kind == "vending":
                self.stock[name] = list(STOCK)
                d.hw.scan("rfid", ",".join(STOCK))
                # the cabinet's reader reports what it holds whenever the board comes back up
                w.on_boot(name, lambda n=name, hw=d.hw: hw.scan("rfid", ",".join(self.stock[n])))
            elif d.kind == "rental":
                self.slots[name] = {i: f"{name}-item{i}" for i in range(8)}
                for i in range(8):
                    d.hw.set_input(f"slots.{i}", 1)
        time.sleep(0.3)

    def run(self) -> None:
        self.prepare()
        upd = next((j for j in self.plan.jobs if j.action == "update"), None)
        if upd is not None:  # built while the hour begins: the step deploys at once when it comes
            self._build = threading.Thread(target=self._build_releases, args=(upd.args["version"], upd.args["seq"]),
                                           name="update-build", daemon=True)
            self._build.start()
        self.t0 = self.w.clock.elapsed()
        actors: dict[str, list[Job]] = {}
        for j in self.plan.jobs:
            actors.setdefault(j.actor, []).append(j)
        ts = [threading.Thread(target=self._actor, args=(a, jobs), name=f"actor-{a}", daemon=True)
              for a, jobs in actors.items()]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        while True:  # a return may fall after the station's last job: the plan is over only after it
            with self._lock:
                later = [t for t in self._later if t.is_alive()]
            if not later:
                break
            for t in later:
                t.join()
        self.done.set()

    def _actor(self, actor: str, jobs: list[Job]) -> None:
        for j in jobs:
            # `stop` is closing time: nothing new starts, and whoever is inside leaves now (a car
            # still parked or an item still out would be a session the run left open on purpose)
            if not self.w.clock.wait_until(self.w.clock.start + self.t0 + j.at, self.stop) and j.action not in ENDS:
                continue
            try:
                getattr(self, "do_" + j.action)(actor.split("/")[0], **j.args)
            except Exception as e:  # noqa: BLE001 - logged, counted, the others go on
                self.w.event(actor.split("/")[0], "error", f"{j.action} {j.args}: {e!r}"[:200])
                if self.w.echo:
                    traceback.print_exc()

    def _reader(self, dev: str) -> threading.Lock:
        with self._lock:
            return self._readers.setdefault(dev, threading.Lock())

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def _dev(self, name: str):
        return self.w.devices[name]

    def _now(self) -> float:
        return self.w.clock()

    def _safe_wait(self, fee: Callable[[int], int], t0: float) -> int:
        """Wait until a fee computed now cannot change within MARGIN simulated seconds; the fee."""
        for _ in range(200):
            now = self._now()
            a, b, c = (fee(int(now - t0 + d)) for d in (-MARGIN, 0, MARGIN))
            if a == b == c:
                return b
            self.w.clock.sleep(MARGIN / 2)
        raise RuntimeError("no quiet moment between fee boundaries")

    # -- the site
    def do_outage(self, _site: str, seconds: float) -> None:
        self.w.partition(seconds)

    def do_power_cut(self, _site: str, device: str) -> None:
        if device in self.w.devices:
            self.w.power_cut(device)

    def _under_barrier(self, dev: str) -> threading.Event:
        with self._lock:
            return self._under.setdefault(dev, threading.Event())

    def do_update(self, _site: str, version: str, seq: int, linger: str | None) -> None:
        """One release per board class, each deployed to its devices in a campaign; with
        `linger`, once that gate's car is under its barrier (so its install comes due mid-passage)."""
        u = self.w.updates
        assert u is not None
        by = self._by_board()
        if self._build is not None:
            self._build.join()
        releases = {b: self._releases.get(b) or u.build(b, version, seq) for b in by}
        if linger in self.w.devices and not self._under_barrier(linger).wait(WAIT):
            self.w.event("site", "error", f"update: no car under {linger}'s barrier in {WAIT:g} s")
        for board, names in by.items():
            cid = u.deploy(releases[board], names)
            with self._lock:
                self.campaigns[cid] = names

    # -- the gate
    def _by_board(self) -> dict[str, list[str]]:
        by: dict[str, list[str]] = {}
        for name, d in self.w.devices.items():
            by.setdefault(f"sim-{d.kind}", []).append(name)
        return by

    def _build_releases(self, version: str, seq: int) -> None:
        u = self.w.updates
        assert u is not None
        try:
            for board in self._by_board():
                self._releases[board] = u.build(board, version, seq)
        except Exception as e:  # noqa: BLE001 - do_update builds what is missing, and says why it fails
            self.w.event("site", "error", f"release build: {e!r}"[:200])

    def do_car_in(self, dev: str, plate: str, qr: bool, linger: bool = False) -> None:
        d = self._dev(dev)
        hw = d.hw
        with d.gate.shared():
            mark = len(hw.history("display"))
            hw.set_input("entry_loop", 1)
            time.sleep(0.05)
            t0 = self._now()
            hw.scan("entry_camera", plate)
            if qr:
                text = _wait_display(hw, r"Scan QR to pay: (\S+)", mark, WAIT)
                sid = re.search(r"Scan QR to pay: (\S+)", text).group(1)  # type: ignore[union-attr]
                self.w.svc.pay_by_qr(dev, sid, account=f"walkin-{plate.lower()}")
            try:
                hw.wait_output("entry_barrier", "open", WAIT)
            except TimeoutError:
                hw.set_input("entry_loop", 0)  # the driver gives up and backs away
                raise
            offline = not d.online or d.link != "up"
            if linger:
                self._linger(dev, plate)
            hw.set_input("entry_loop", 0)
            hw.wait_output("entry_barrier", "closed", WAIT)
        with self._lock:
            self.parked[plate] = {"t0": t0, "qr": qr, "device": dev}
        self._count("cars_in")
        how = "paid entry by QR" if qr else ("pay-after, offline" if offline else "pay-after")
        self.w.event(dev, "car in", f"{plate} ({how})")

    def _linger(self, dev: str, plate: str) -> None:
        """The driver stops under the open barrier: until the gate reports its update deferred
        (it never installs with a car mid-passage), or the update ended otherwise."""
        u = self.w.updates
        assert u is not None
        self.w.event(dev, "car stops", f"{plate} stops under the entry barrier")
        self._under_barrier(dev).set()
        if not u.wait(dev, lambda e: e.get("st") in ("deferred", "confirmed", "failed", "rolled_back"), 4 * WAIT):
            self.w.event(dev, "error", f"{plate}: the gate's update was not deferred in {4 * WAIT:g} s")
        self.w.clock.sleep(20)  # long enough for the gate to be seen waiting
        self.w.event(dev, "car moves on", f"{plate} drives through")

    def do_car_out(self, dev: str, plate: str) -> None:
        p = self.parked.get(plate)
        if p is None:
            self.w.event(dev, "error", f"{plate} never got in: no exit")
            return
        d = self._dev(dev)
        hw = d.hw
        with d.gate.shared():
            amount = self._safe_wait(lambda s: fees.parking(PARKING, 0, max(s, 0)), p["t0"])
            stay = self._now() - p["t0"]
            hw.set_input("exit_loop", 1)
            time.sleep(0.05)
            hw.scan("exit_camera", plate)
            try:
                hw.wait_output("exit_barrier", "open", WAIT)
            except TimeoutError:
                hw.set_input("exit_loop", 0)
                raise
            hw.set_input("exit_loop", 0)
            hw.wait_output("exit_barrier", "closed", WAIT)
        with self._lock:
            self.parked.pop(plate, None)
            self.want[(dev, plate)] = amount
        self._count("cars_out")
        self.w.event(dev, "car out", f"{plate} after {stay / 60:.0f} min: {amount / 100:.2f} CNY")

    # -- the vending cabinet
    def do_vend(self, dev: str, payer: str, take: int, pick: float) -> None:
        d = self._dev(dev)
        hw = d.hw
        refused = f"acct-{payer}" in self.plan.refused
        with d.gate.shared():
            stock = self.stock[dev]
            if len(stock) - take < 2:  # the operator restocks a cabinet running low
                stock[:] = list(STOCK)
                hw.scan("rfid", ",".join(stock))
                time.sleep(0.1)
                self.w.event(dev, "restock", f"{len(stock)} items")
            mark = len(hw.history("display"))
            hw.scan("qr", payer)
            text = _wait_display(hw, r"^(Open the door|Sorry)", mark, WAIT)
            if text.startswith("Sorry"):
                with self._lock:
                    self.none.add((dev, payer))
                self._count("vend_refused")
                self.w.event(dev, "refused", f"{payer}: {text}")
                if not refused and "offline" not in text:
                    raise RuntimeError(f"{payer} refused: {text}")
                return
            hw.wait_output("door_lock", "unlocked", WAIT)
            offline = d.link != "up"
            hw.set_input("door", 1)
            time.sleep(0.1)
            rng = random.Random(pick)
            taken = rng.sample(stock, take) if take else []
            for t in taken:
                stock.remove(t)
            if taken:
                hw.scan("rfid", ",".join(stock))
                time.sleep(0.1)
            hw.set_input("door", 0)
            hw.wait_output("door_lock", "locked", WAIT)
            _wait_display(hw, r"^Thank you", mark, WAIT)
        amount = sum(PRICES[t.split("#")[0]] for t in taken)
        with self._lock:
            self.want[(dev, payer)] = amount
        self._count("vends")
        items = ", ".join(t.split("#")[0] for t in taken) or "nothing"
        self.w.event(dev, "sale", f"{payer}{' (offline)' if offline else ''} took {items}: {amount / 100:.2f} CNY")

    # -- the rental station
    def do_rent(self, dev: str, payer: str, back: float) -> None:
        d = self._dev(dev)
        hw = d.hw
        with d.gate.shared(), self._reader(dev):
            mark = len(hw.history("display"))
            t0 = self._now()
            hw.scan("qr", payer)
            text = _wait_display(hw, r"^(Take slot \d+|Sorry|Nothing)", mark, WAIT)
            if not text.startswith("Take"):
                with self._lock:
                    self.none.add((dev, payer))
                raise RuntimeError(f"{payer} could not rent: {text}")
            slot = int(text.split()[-1]) - 1
            hw.wait_output(f"locks.{slot}", "unlocked", WAIT)
            offline = d.link != "up"
            hw.set_input(f"slots.{slot}", 0)
            hw.wait_output(f"locks.{slot}", "locked", WAIT)
            with self._lock:
                tag = self.slots[dev].pop(slot)
                self.out[payer] = [dev, slot, tag, t0]
        self._count("rentals")
        self.w.event(dev, "rented", f"{payer} took slot {slot + 1}{' (offline)' if offline else ''}")
        # the return is this actor's job too, at its time (the station's actor runs it later)
        t = threading.Thread(target=self._return_at, args=(dev, payer, back), daemon=True)
        with self._lock:
            self._later.append(t)
        t.start()

    def _return_at(self, dev: str, payer: str, back: float) -> None:
        self.w.clock.wait_until(self.w.clock.start + self.t0 + back, self.stop)  # or closing time: now
        try:
            self.do_return(dev, payer)
        except Exception as e:  # noqa: BLE001
            self.w.event(dev, "error", f"return {payer}: {e!r}"[:200])

    def do_return(self, dev: str, payer: str) -> None:
        d = self._dev(dev)
        hw = d.hw
        _, slot, tag, t0 = self.out[payer]
        with d.gate.shared(), self._reader(dev):  # one item at a time through the station's reader
            amount = self._safe_wait(lambda s: fees.rental(RENTAL, 0, max(s, 0))[0], t0)
            mins = (self._now() - t0) / 60
            mark = len(hw.history("display"))
            hw.scan("rfid", tag)
            time.sleep(0.1)
            hw.set_input(f"slots.{slot}", 1)
            _wait_display(hw, r"^Returned", mark, WAIT)
            with self._lock:
                self.slots[dev][slot] = tag
                self.out.pop(payer, None)
                self.want[(dev, payer)] = amount
        self._count("returns")
        self.w.event(dev, "returned", f"{payer}: slot {slot + 1} after {mins:.0f} min: {amount / 100:.2f} CNY")

    # -- results
    def expected(self) -> dict[tuple[str, str], int]:
        """(device, sid) -> the amount the plan caused, for World.reconcile."""
        out = {}
        for s in self.w.ledger.sessions():
            amt = self.want.get((s.device, s.payer or ""))
            if amt is not None:
                out[(s.device, s.sid)] = amt
        return out

    def problems(self) -> list[str]:
        out = []
        sessions = {(s.device, s.payer) for s in self.w.ledger.sessions()}
        for k in self.want:
            if k not in sessions:
                out.append(f"{k[0]}: no ledger session for {k[1]}")
        for k in self.none:
            if k in sessions:
                out.append(f"{k[0]}: a session for refused {k[1]}")
        if self.parked:
            out.append(f"cars still parked: {sorted(self.parked)}")
        if self.out:
            out.append(f"rentals still out: {sorted(self.out)}")
        out += self.update_problems()
        return out

    def update_problems(self) -> list[str]:
        """The plan's update: every campaign done, every device confirmed the release and runs it,
        and the lingering car's gate deferred its install (busy)."""
        if self.plan.update is None:
            return []
        u = self.w.updates
        if u is None:
            return ["the update: the world has no updates"]
        out = []
        if not self.campaigns:
            out.append("the update never started")
        version = UPDATE[0]
        for cid, names in self.campaigns.items():
            for dev, (state, why) in u.outcome(cid).items():
                if state != "succeeded":
                    out.append(f"{dev}: update campaign {cid} {state}{': ' + why if why else ''}")
            for dev in names:
                if "confirmed" not in u.states(dev):
                    out.append(f"{dev}: update to {version} never confirmed (saw {u.states(dev)})")
        gate = self.plan.update[1]
        if gate is not None and gate in self.w.devices:
            e = next((x for x in u.events.get(gate, []) if x.get("st") == "deferred"), None)
            if e is None or e.get("why") != "busy":
                out.append(f"{gate}: the update was not deferred by the car mid-passage ({e})")
        return out


def _wait_display(hw, pattern: str, after: int, timeout: float) -> str:
    """The first display text matching `pattern` shown after the `after`-th display message."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        for m in hw.history("display")[after:]:
            if m.get("t") == "out" and isinstance(m.get("v"), str) and rx.search(m["v"]):
                return m["v"]
        if time.monotonic() > deadline:
            raise TimeoutError(f"display never showed {pattern!r}; it shows {hw.display()!r}")
        time.sleep(0.02)


def play(world: World, plan: Plan, stop: threading.Event | None = None) -> Runner:
    r = Runner(world, plan, stop)
    r.run()
    return r


__all__ = ["Job", "Plan", "Runner", "hour_plan", "play", "SPAN", "TAIL", "UPDATE"]
