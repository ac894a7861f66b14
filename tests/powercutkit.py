"""Power cuts under a running session, on the VM against a whole site (tests/appkit.py): a person
who carries on when the board dies under them, the ledger and peripheral checks, and the sweep
that cuts at op 1, 1 + stride, ... of a boot until a whole session runs without reaching the cut.

Every byte the device keeps is on the simulated flash (the journal and store.py's files), so the
cut strikes journal appends and state writes alike (SimBoard.arm_power_cut counts from the boot).
EDGEPAY_APP_CUTS=all: every op (stride 1), clean and torn (5 bytes of the fatal write land).
"""
import os
import re
import time

from host_tools.cloud.payafter import OrderState

WIDE = os.environ.get("EDGEPAY_APP_CUTS", "") == "all"
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

    def scan(self, name, value):
        """Show a scanner something; if the board has just died, nobody reads it (the next wait
        reboots it and the session carries on as a person would)."""
        try:
            self.hw.scan(name, value)
        except (ConnectionError, TimeoutError):
            time.sleep(0.3)
            if self.b.running:
                raise

    def logged(self, pattern, whole=False):
        """A log line matching since this boot (or, whole: since the session began)."""
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


def run_cuts(site, b, device, session, check, stride=1, cap=400):
    """Cut at op 1, 1 + stride, 1 + 2 stride, ... (every op: stride 1) of one session each, until a
    session runs without reaching the cut; -> the last op that struck (~ the boot + session's count)."""
    n = 0
    for at in range(1, cap + 1, 1 if WIDE else stride):
        died = False
        for tear in TEARS:
            quiesce(site, b, device, p=Person(site, b))  # a cut the last run left armed may strike here
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
    raise AssertionError(f"the session still reached op {n}: raise cap")


# ---- gate: a car drives through a lane ---------------------------------------------------------
def through(p, lane, plate):
    """A car drives through `lane`: on the loop, shows its plate until the barrier opens, passes."""
    hw = p.hw
    hw.set_input(f"{lane}_loop", 1)
    while True:
        if not p.wait(p.logged(rf"FSM {lane} car -> plate|ACT {lane}_barrier open"), what=f"{lane} plate state"):
            continue  # died: the car is still on the loop (replayed), wait for the new boot
        if hw.output(f"{lane}_barrier") != "open":
            p.scan(f"{lane}_camera", plate)
        if p.wait(p.out(f"{lane}_barrier", "open"), what=f"{lane} barrier open"):
            break
    time.sleep(0.2)
    hw.set_input(f"{lane}_loop", 0)  # the car passed
    while not p.wait(p.out(f"{lane}_barrier", "closed"), what=f"{lane} barrier closed"):
        pass
