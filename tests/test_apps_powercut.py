"""Power cut at every step of a payment session, for the gate (entry then exit), the vending
cabinet and the rental station, on the VM against the real broker, ingest, ledger, provider and
session service.

For each scenario the board's power goes at its Nth flash program/erase (the journal's flash:
SimBoard.arm_power_cut counts from the boot), for N = 1, 2, ... until a whole session runs
without reaching N (that N - 1 is the session's op count). Each cut gets a fresh session (a new
plate / payer) on the same board, which is idle and fully acknowledged before it: the board is
booted with the cut armed, the person starts the session and carries on as a person would when the
board dies (it is rebooted clean: the car is still on the loop and shows its plate again, the door
and the item are where they physically are, the RFID reader reports what it sees). Then:
  - never a double charge: at most one sess_close per sid in the ledger, no order charged twice;
  - never a free exit: a car that left has a committed close record;
  - never a barrier closing on a car (the peripherals' history: no open -> closed while the
    lane's loop is 1);
  - the ledger is what the device committed (everything acknowledged: jdepth 0; no rejects; one
    unbroken chain).
EDGEPAY_APP_CUTS=all widens the op range and adds torn writes (default: every op of one session,
clean cuts, at most CAP ops).
"""
import os
import time

from host_tools.cloud.payafter import OrderState
from host_tools.cloud import fees
from tests.appkit import RENTAL

WIDE = os.environ.get("EDGEPAY_APP_CUTS", "") == "all"
CAP = 200 if WIDE else 24
TEARS = (None, 5) if WIDE else (None,)


class Person:
    """Drives a session; when the board dies under it, reboots it clean and says so."""

    def __init__(self, site, b):
        self.site, self.b, self.hw = site, b, b.hw
        self.deaths = 0
        self.mark = len(b.lines)  # log lines of the current boot start here

    def boot(self):
        """Boot with the cut armed: the cut may come during the boot itself (journal recovery)."""
        try:
            self.site.boot(self.b)
        except (TimeoutError, AssertionError):
            time.sleep(0.2)
            if self.b.running:
                raise
            self.wait(lambda: False)  # it died: count it, boot clean
        self.mark = self.began = len(self.b.lines)

    def wait(self, pred, timeout=20.0, what="condition"):
        """True once pred() holds; False if the board died first (it is rebooted, clean)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.b.running and pred():
                return True
            if not self.b.running:
                self.b.wait(5)
                assert self.b.exit_reason() == "killed", (self.b.exit_reason(), self.b.log()[-3000:])
                self.deaths += 1
                self.mark = len(self.b.lines)
                self.site.boot(self.b)
                return False
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not within {timeout}s; log:\n" + "\n".join(self.b.lines[-40:]))
            time.sleep(0.05)

    def logged(self, pattern, whole=False):
        """A log line matching since this boot (or, whole: since the session began)."""
        import re
        rx = re.compile(pattern)
        return lambda: any(rx.search(ln) for ln in self.b.lines[self.began if whole else self.mark:])

    def out(self, name, value):
        return lambda: self.hw.output(name) == value


def quiesce(site, b, device, timeout=20.0, p=None):
    """Every record the device committed is acknowledged (so it is in the ledger). With a Person,
    a cut that comes after the session (at the ack of its last record) reboots the board."""
    deadline = time.monotonic() + timeout
    while True:
        if p is not None:
            p.wait(lambda: True)
        r = site.cmd(device, "get_state", timeout=3)
        if r.ok and r.data.get("jdepth") == 0:
            return
        assert time.monotonic() < deadline, ("records never acknowledged", r.state, r.data)
        time.sleep(0.3)


def check_ledger(site, device):
    assert not site.ledger.rejects(device)
    recs = site.records(device)
    for prev, cur in zip(recs, recs[1:]):
        assert cur.prev == prev.hash and cur.seq > prev.seq
    closes = {}
    for r in recs:
        if r.type == 8:
            closes[r.sid] = closes.get(r.sid, 0) + 1
    assert all(n == 1 for n in closes.values()), closes  # never two settlements of one session
    for o in site.provider.orders():
        done = [t for t in site.provider.history(o.order_no) if t.to is OrderState.DONE]
        assert len(done) <= 1, (o.order_no, done)  # never charged twice
    return recs


def barrier_never_closed_on_a_car(hw, lane):
    loop, barrier = 0, None
    for m in hw.history():
        if m.get("t") == "in" and m.get("n") == f"{lane}_loop":
            loop = m["v"]
        elif m.get("t") == "out" and m.get("n") == f"{lane}_barrier":
            assert not (barrier == "open" and m["v"] == "closed" and loop), f"{lane} barrier closed on a car"
            barrier = m["v"]
        elif m.get("t") == "hello":
            v = (m.get("out") or {}).get(f"{lane}_barrier")
            assert not (barrier == "open" and v == "closed" and loop), f"{lane} barrier closed on a car (boot)"
            barrier = v


def run_cuts(site, b, device, session, check):
    """Cut at op 1, 2, ... of one session each; -> the session's op count."""
    n = 0
    for at in range(1, CAP + 1):
        died = False
        for tear in TEARS:
            quiesce(site, b, device)
            b.kill()
            b.arm_power_cut(at, tear)
            p = Person(site, b)
            p.boot()
            key = session(p, f"{at}{'t' if tear else ''}")
            quiesce(site, b, device, p=p)
            check(key)
            died = died or p.deaths > 0
        if not died:
            return n
        n = at
    return n


# ---- gate: one session = entry and exit --------------------------------------------------------
def through(p, lane, plate):
    """A car drives through `lane`: on the loop, shows its plate until the barrier opens, passes."""
    hw = p.hw
    hw.set_input(f"{lane}_loop", 1)
    while True:
        if not p.wait(p.logged(rf"FSM {lane} car -> plate|ACT {lane}_barrier open"), what=f"{lane} plate state"):
            continue  # died: the car is still on the loop (replayed), wait for the new boot
        if hw.output(f"{lane}_barrier") != "open":
            hw.scan(f"{lane}_camera", plate)
        if p.wait(p.out(f"{lane}_barrier", "open"), what=f"{lane} barrier open"):
            break
    time.sleep(0.2)
    hw.set_input(f"{lane}_loop", 0)  # the car passed
    while not p.wait(p.out(f"{lane}_barrier", "closed"), what=f"{lane} barrier closed"):
        pass


def test_gate_power_cut_at_every_op_of_entry_and_exit(site):
    dev = "gate-pc"
    b = site.board(dev, "gate")
    plates = {}

    def session(p, key):
        plate = f"PC{key}"
        site.svc.bind(plate, f"acct-{plate}")
        plates[key] = plate
        through(p, "entry", plate)
        through(p, "exit", plate)
        return key

    def check(key):
        plate = plates[key]
        recs = check_ledger(site, dev)
        mine = [r for r in recs if r.payer == plate]
        opens = [r for r in mine if r.type == 6]
        closes = [r for r in mine if r.type == 8]
        assert len(opens) == 1 and len(closes) == 1, (key, mine)  # the car left: its exit is on record
        assert closes[0].sid == opens[0].sid and closes[0].reason == "normal", (key, closes)
        barrier_never_closed_on_a_car(b.hw, "entry")
        barrier_never_closed_on_a_car(b.hw, "exit")

    ops = run_cuts(site, b, dev, session, check)
    print("gate session flash ops:", ops)
    assert ops >= 2


# ---- vending -------------------------------------------------------------------------------------
def test_vending_power_cut_at_every_op_of_a_session(site):
    dev = "vend-pc"
    b = site.board(dev, "vending")
    hw = b.hw
    payers = {}

    def session(p, key):
        payer = f"u{key}"
        site.svc.bind(payer, f"acct-{payer}")
        payers[key] = payer
        inv = [f"cola#{key}a", f"cola#{key}b", f"water#{key}"]
        hw.scan("rfid", ",".join(inv))
        time.sleep(0.2)
        while True:  # scan until the door unlocks
            hw.scan("qr", payer)
            if p.wait(p.out("door_lock", "unlocked"), what="unlocked"):
                break
            hw.scan("rfid", ",".join(inv))  # the reader reports after the reboot
            time.sleep(0.3)
        hw.set_input("door", 1)
        time.sleep(0.3)
        inv.remove(f"cola#{key}b")  # one cola
        hw.scan("rfid", ",".join(inv))
        time.sleep(0.3)
        hw.set_input("door", 0)
        while not p.wait(p.logged(r"FSM door door_closed -> idle", True), what="settled"):
            hw.scan("rfid", ",".join(inv))  # rebooted: the reader reports what is in the cabinet
        return key

    def check(key):
        payer = payers[key]
        recs = check_ledger(site, dev)
        closes = [r for r in recs if r.payer == payer and r.type == 8]
        paid = [r for r in closes if r.amount]
        assert len(paid) == 1 and paid[0].amount == 350, (key, closes)  # one cola, charged once
        assert all(r.reason == "not_opened" or r is paid[0] for r in closes), closes
        assert hw.output("door_lock") == "locked"

    ops = run_cuts(site, b, dev, session, check)
    print("vending session flash ops:", ops)
    assert ops >= 2


# ---- rental --------------------------------------------------------------------------------------
def test_rental_power_cut_at_every_op_of_a_session(site):
    dev = "rent-pc"
    b = site.board(dev, "rental")
    hw = b.hw
    for i in range(8):
        hw.set_input(f"slots.{i}", 1)
    time.sleep(0.3)
    payers = {}

    def session(p, key):
        payer = f"r{key}"
        site.svc.bind(payer, f"acct-{payer}")
        payers[key] = payer
        while True:
            hw.scan("qr", payer)
            if p.wait(p.out("locks.0", "unlocked"), what="unlocked"):
                break
            time.sleep(2.0)  # rebooted: give the station a moment (a rental on record is offered again)
            if hw.output("locks.0") == "unlocked":
                break
        hw.set_input("slots.0", 0)  # taken
        while not p.wait(p.logged(r"FSM slot0 taken -> empty", True), what="taken"):
            pass
        hw.scan("rfid", f"{dev}-item0")  # brought back
        time.sleep(0.2)
        hw.set_input("slots.0", 1)
        while not p.wait(p.logged(r"FSM slot0 returned -> stocked", True), what="returned"):
            hw.scan("rfid", f"{dev}-item0")  # the reader at the slot reads the item again
        return key

    def check(key):
        payer = payers[key]
        recs = check_ledger(site, dev)
        mine = [r for r in recs if r.payer == payer]
        opens = [r for r in mine if r.type == 6]
        closes = [r for r in mine if r.type == 8]
        assert len(opens) == 1 and len(closes) == 1 and closes[0].sid == opens[0].sid, (key, mine)
        c = closes[0]
        assert c.reason == "returned" and c.amount == fees.rental(RENTAL, c.t0, c.t1)[0], closes

    ops = run_cuts(site, b, dev, session, check)
    print("rental session flash ops:", ops)
    assert ops >= 2
