"""Each payment app on the VM running many sessions, driven through its simulated peripherals as
fast as the app allows, with the whole cloud side (broker, ingest, ledger, pay-after provider,
session service: host_tools/sim/world.py): the device's live heap (get_state `heap_used`,
gc.mem_alloc() after gc.collect()) sampled throughout, and the smallest data budget at which a
shorter run still passes.

On the VM the firmware's code sits in the heap (a board freezes it into flash), so the simulator
runs each board's own bundle (host_tools.bundle.board_bundle: a gate's modules, never the other
apps') and gives the VM the board's data budget plus that code's measured residency
(code_allowance); live_kb = VM live heap - that code residency is the data a board holds. The three apps run at once, each on its own board.

Sessions per app: EDGEPAY_APP_HEAP_N (default 1000; the gate's EDGEPAY_APP_HEAP_GATE_N defaults to
the same). The site runs on a fast simulated clock (EDGEPAY_APP_HEAP_RATE, default 30 x real time,
as `edgepay sim` does): the gate's barrier hold (1.5 s after each car, apps/gate.py HOLD_MS) is a
physical time and follows it (50 ms at x30), exactly as a real board (rate 1) keeps its 1.5 s.
Prints {"gate_live_kb", "vending_live_kb", "rental_live_kb", "max_drift_kb", "min_heapsize_kb", ...}.
Progress goes to stderr every PROGRESS_S seconds (a full run takes minutes); an app that fails at a
smaller budget in the downward search is expected (that is how the floor is found) and says so
in one line; only a failure at the main budget prints the board's log.
"""
import json
import os
import queue
import sys
import threading
import time

from _kit import workdir
from host_tools.build import UPDATE_ONLY, code_allowance, compile_firmware
from host_tools.bundle import board_bundle
from host_tools.sim.provision import board_definition
from host_tools.sim.world import World

N = int(os.environ.get("EDGEPAY_APP_HEAP_N", "1000"))
GATE_N = int(os.environ.get("EDGEPAY_APP_HEAP_GATE_N", str(N)))
RATE = int(os.environ.get("EDGEPAY_APP_HEAP_RATE", "30"))
HEAP_KB = int(os.environ.get("EDGEPAY_APP_HEAP_KB", "96"))
SHORT_N = int(os.environ.get("EDGEPAY_APP_HEAP_SHORT_N", "40"))
W = 10.0
INSIDE = int(os.environ.get("EDGEPAY_APP_HEAP_INSIDE", "200"))
LEVELS = [int(x) for x in os.environ.get("EDGEPAY_APP_HEAP_LEVELS", "64,48,32").split(",")]
SAMPLES = 25


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def _sampler(w, dev, n, samples):
    every = max(1, n // SAMPLES)

    def sample(i):
        if i % every == 0 or i == n - 1:
            st = w.get_state(dev, timeout=10)
            if st is None:
                raise RuntimeError(f"{dev}: get_state failed at session {i}")
            samples.append(st["heap_used"])
            JDEPTH[dev] = max(JDEPTH.get(dev, 0), st.get("jdepth") or 0)
    return sample


def drive_gate(w, dev, n, samples):
    hw = w.devices[dev].hw
    sample = _sampler(w, dev, n, samples)
    plates = [f"H{i:05d}" for i in range(n)]
    for p in plates:
        w.bind(p, "acct-" + p)
    # at most INSIDE cars in at once: a car park's size, well inside what the sim's 256 KiB state
    # fs parks (~550: firmware/apps/gate.py FREE_MIN); entries otherwise outrun exits without bound
    q: queue.Queue = queue.Queue(maxsize=INSIDE)
    err: list = []
    quiet = threading.Lock()  # held while the entry lane has a car: samples see both lanes idle

    def lane(name, p):
        hw.set_input(f"{name}_loop", 1)
        hw.scan(f"{name}_camera", p)
        hw.wait_output(f"{name}_barrier", "open", W)
        hw.set_input(f"{name}_loop", 0)
        hw.wait_output(f"{name}_barrier", "closed", W)

    def entries():
        try:
            for p in plates:
                with quiet:
                    lane("entry", p)
                q.put(p)
        except Exception as e:  # noqa: BLE001
            err.append(e)
        q.put(None)

    t = threading.Thread(target=entries, daemon=True)
    t.start()
    for i in range(n):
        p = q.get()
        if p is None:
            break
        lane("exit", p)
        with quiet:
            sample(i)
    t.join()
    if err:
        raise err[0]


def drive_vending(w, dev, n, samples):
    hw = w.devices[dev].hw
    sample = _sampler(w, dev, n, samples)
    for i in range(n):
        who = f"v{i:05d}"
        w.bind(who, "acct-" + who)
        hw.scan("rfid", f"cola#{i},chips#{i},water#{i}")
        mark = len(hw.history("display"))
        hw.scan("qr", who)
        hw.wait_output("door_lock", "unlocked", W)
        hw.set_input("door", 1)
        hw.scan("rfid", f"chips#{i},water#{i}")  # a cola taken
        hw.set_input("door", 0)
        _wait_text(hw, "Thank you", mark)
        sample(i)


def drive_rental(w, dev, n, samples):
    hw = w.devices[dev].hw
    sample = _sampler(w, dev, n, samples)
    for s in range(8):
        hw.set_input(f"slots.{s}", 1)
    time.sleep(0.3)
    for i in range(n):
        who = f"r{i:05d}"
        w.bind(who, "acct-" + who)
        mark = len(hw.history("display"))
        hw.scan("qr", who)
        text = _wait_text(hw, "Take slot", mark)
        slot = int(text.split()[-1]) - 1
        hw.set_input(f"slots.{slot}", 0)
        hw.wait_output(f"locks.{slot}", "locked", W)
        mark = len(hw.history("display"))
        hw.scan("rfid", f"{dev}-item{slot}")
        hw.set_input(f"slots.{slot}", 1)
        _wait_text(hw, "Returned", mark)
        sample(i)


def _wait_text(hw, prefix, after):
    deadline = time.monotonic() + W
    while time.monotonic() < deadline:
        for m in hw.history("display")[after:]:
            v = m.get("v")
            if m.get("t") == "out" and isinstance(v, str):
                if v.startswith(prefix):
                    return v
                if v.startswith(("Sorry", "Out of service")):
                    raise RuntimeError(f"display: {v}")
        time.sleep(0.005)
    raise TimeoutError(f"display never showed {prefix!r}: {hw.display()!r}")


PARTIAL: dict = {}  # (kind, heap_kb) -> (samples before it failed, why)
JDEPTH: dict = {}  # the deepest journal seen per device (records not yet acknowledged)
DRIVERS = {"gate": drive_gate, "vending": drive_vending, "rental": drive_rental}


PROGRESS_S = float(os.environ.get("EDGEPAY_BENCH_PROGRESS_S", "10"))


def note(text):
    print(f"app_heap: {text}", file=sys.stderr, flush=True)


def run(heap_kb, ns, search=False):
    """All three apps at once at data budget heap_kb; {kind: samples or None (failed)}. `search`:
    a run of the downward search, where a failure is the expected end, not an error."""
    out = {}
    devs = {"gate": "gate-1", "vending": "vend-1", "rental": "rent-1"}
    live: dict = {k: [] for k in devs}  # each app's samples so far, for the progress line
    note(f"{heap_kb}K budget: {', '.join(f'{k} {ns[k]}' for k in devs)} sessions" +
         (" (search run)" if search else ""))
    stop = threading.Event()

    def progress():
        t0 = time.monotonic()
        while not stop.wait(PROGRESS_S):
            note(f"{heap_kb}K, {time.monotonic() - t0:.0f} s: " +
                 ", ".join(f"{k} {len(live[k])}/{ns[k]}" for k in devs))
    threading.Thread(target=progress, daemon=True).start()
    try:
        return _run(heap_kb, ns, search, devs, live, out)
    finally:
        stop.set()


def _run(heap_kb, ns, search, devs, live, out):
    with World(workdir(), rate=RATE, proxy=False, heapsize=f"{heap_kb}K") as w:
        try:
            w.add_devices([(d, k) for k, d in devs.items()])
        except Exception as e:  # noqa: BLE001 - a board that cannot even boot and connect at this budget
            why = (str(e).splitlines() or [type(e).__name__])[0]  # not the board's log: its last lines
            note(f"boot at {heap_kb}K failed{' (expected: the search stops here)' if search else ''}: {why}"[:300])
            for k in devs:
                PARTIAL[(k, heap_kb)] = ([], "boot: " + repr(e)[:100])
            return {k: None for k in devs}

        def go(kind):
            samples = live[kind]
            try:
                DRIVERS[kind](w, devs[kind], ns[kind], samples)
                mine = [e for e in w.errors if e.startswith(devs[kind] + ":")]
                if not w.devices[devs[kind]].board.running or mine:
                    raise RuntimeError(f"board down or errors: {mine[:2]}")
                out[kind] = samples
            except Exception as e:  # noqa: BLE001 - a MemoryError on the device shows as timeouts
                if search:  # the floor found: one line, no log
                    note(f"{kind} does not run at {heap_kb}K (expected: the search stops here) "
                         f"after {len(samples)} samples ({type(e).__name__})")
                else:
                    note(f"{kind} at {heap_kb}K failed after {len(samples)} samples: {e}")
                    print("  " + "\n  ".join(w.devices[devs[kind]].board.log().splitlines()[-25:]), file=sys.stderr)
                out[kind] = None
                PARTIAL[(kind, heap_kb)] = (samples, repr(e)[:120])
        ts = [threading.Thread(target=go, args=(k,)) for k in devs]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    return out


def main():
    t0 = time.time()
    bundle = compile_firmware()  # what each board's VM runs and holds as code: its own bundle
    # the code resident while no update runs: the updater's modules load only with an update (bench/ota.py)
    bundles = {k: board_bundle(bundle, board_definition(f"sim-{k}")) for k in DRIVERS}
    codes = {k: code_allowance(b, UPDATE_ONLY) for k, b in bundles.items()}
    # A sim board's VM is given room for all its code, the updater's too (code_allowance), so that
    # an update fits; with no update running that room is slack a board does not have. The runs
    # here take it off their budget: the VM then holds budget + the code resident without one.
    slack = -(-max(code_allowance(b) - codes[k] for k, b in bundles.items()) // 1024)
    ns = {"gate": GATE_N, "vending": N, "rental": N}
    res = run(HEAP_KB - slack, ns)
    figures = {"heap_kb": HEAP_KB, "n": ns, "clock_rate": RATE, "code_kb": {k: round(c / 1024, 2) for k, c in codes.items()}}
    drifts = []
    for kind, samples in res.items():
        code = codes[kind]
        if not samples:
            part, why = PARTIAL.get((kind, HEAP_KB - slack), ([], ""))
            figures[f"{kind}_live_kb"] = None
            figures[f"{kind}_failed"] = why
            if part:  # what it held until it failed
                figures[f"{kind}_live_before_failure_kb"] = round((max(part) - code) / 1024, 2)
                figures[f"{kind}_samples_before_failure"] = len(part)
            continue
        warm = samples[len(samples) // 5:]
        # drift: the level of the last quarter of the warm samples against the first (medians). A
        # sample is one instant: whichever sessions are in flight then add up to ~1.5 KB, so one
        # sample against another (kept as drift_endpoints_kb) is noise, a leak is a level that rises.
        q = max(1, len(warm) // 4)
        drift = _median(warm[-q:]) - _median(warm[:q])
        figures[f"{kind}_live_kb"] = round((max(samples) - code) / 1024, 2)
        figures[f"{kind}_vm_live_kb"] = round(max(samples) / 1024, 2)
        figures[f"{kind}_drift_kb"] = round(drift / 1024, 2)
        figures[f"{kind}_drift_endpoints_kb"] = round((warm[-1] - warm[0]) / 1024, 2)
        figures[f"{kind}_samples_kb"] = [round((x - code) / 1024, 1) for x in samples]
        drifts.append(drift)
    figures["max_drift_kb"] = round(max(drifts, key=abs) / 1024, 2) if drifts else None
    # the smallest data budget at which every app still passes a shorter run, searched downward
    lo = {k: (HEAP_KB if res[k] else None) for k in res}
    alive = {k for k in res if res[k]}
    for kb in LEVELS:
        if not alive or kb >= HEAP_KB:
            continue
        r = run(kb - slack, {k: SHORT_N for k in DRIVERS}, search=True)
        for k in list(alive):
            if r.get(k):
                lo[k] = kb
            else:
                alive.discard(k)
    figures["min_heapsize_by_app_kb"] = lo
    figures["min_heapsize_kb"] = max(v for v in lo.values() if v) if all(lo.values()) else None
    figures["min_vm_heapsize_kb"] = (figures["min_heapsize_kb"] + -(-max(codes.values()) // 1024)
                                     if figures["min_heapsize_kb"] else None)
    figures["update_code_kb"] = slack  # the updater's code, off each run's budget (above)
    figures["short_n"] = SHORT_N
    figures["max_jdepth"] = dict(JDEPTH)
    figures["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
