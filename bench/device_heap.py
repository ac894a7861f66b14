"""The agent on the VM handling 1,000 commands and its heartbeats: live heap (gc.mem_alloc()
after gc.collect(), reported by the device in get_state) sampled throughout, and the smallest
heap at which the same run still passes.

On the VM the firmware's code sits in the heap (a board freezes it into flash), so the simulator
gives the VM the board's data budget plus the bundle's measured code residency. live_kb is the
data a board would hold (VM live heap minus code residency); vm_live_kb is the VM's whole live
heap; min_heapsize_kb is the smallest data budget that still passes, min_vm_heapsize_kb the
-X heapsize that meant.
Prints {"live_kb", "drift_kb", "min_heapsize_kb", ...}."""
import json
import os
import sys
import time

from _kit import broker, cloud, workdir
from host_tools.build import code_allowance, compile_firmware
from host_tools.cloud.registry import Registry
from host_tools.sim.provision import provision_sim

N = int(os.environ.get("EDGEPAY_HEAP_N", "1000"))
NAMES = ("display", "get_state", "set_config", "frobnicate")


def run(heap_kb: int, n: int, sample_every: int = 50):
    """Run n commands on a board with -X heapsize=heap_kb K; return live samples (bytes) or None."""
    b = broker()
    reg = Registry()
    dev = f"heap-{heap_kb}"
    board = provision_sim(b, reg, workdir(), dev, settings={"hb_s": 5}, heapsize=f"{heap_kb}K").start()
    c = cloud(b, reg)
    samples = []
    try:
        board.wait_for("online", 20)
        c.sync_time(dev)
        board.wait_for("time set", 5)
        for i in range(n):
            name = NAMES[i % len(NAMES)]
            args = {1: "msg %d" % i} if name == "display" else ({"hb_s": 5 + i % 3} if name == "set_config" else None)
            r = c.send(dev, name, args, timeout=10)
            if r.state.value not in ("SUCCEEDED", "REJECTED"):
                return None
            if i % sample_every == 0:
                s = c.send(dev, "get_state", timeout=10)
                samples.append(s.data["heap_used"])
        if not board.running:
            return None
        return samples
    except Exception as e:  # a MemoryError on the device shows up as a dead board or timeouts
        print(f"heapsize {heap_kb}K failed: {e!r}", file=sys.stderr)
        return None
    finally:
        c.close()
        board.kill()
        b.close()


def main():
    code = code_allowance(compile_firmware())
    samples = run(64, N)
    assert samples, "the agent failed at 64K"
    warm = samples[len(samples) // 5:]  # after start-up settles
    live = max(samples)
    drift = warm[-1] - warm[0]
    # smallest heap at which a shorter run (200 commands) still passes, searched downward
    lo_ok = 64
    for kb in (48, 40, 32, 28, 24, 20, 16):
        if run(kb, 200, 100) is None:
            break
        lo_ok = kb
    print(json.dumps({"n": N, "live_kb": round((live - code) / 1024, 2), "drift_kb": round(drift / 1024, 2),
                      "min_heapsize_kb": lo_ok, "code_kb": round(code / 1024, 2),
                      "vm_live_kb": round(live / 1024, 2), "min_vm_heapsize_kb": lo_ok + -(-code // 1024),
                      "samples": len(samples)}))


if __name__ == "__main__":
    t0 = time.time()
    main()
