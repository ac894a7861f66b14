"""The agent on the VM handling 1,000 commands and its heartbeats: live heap (gc.mem_alloc()
after gc.collect(), reported by the device in get_state) sampled throughout, and the smallest
data budget at which a shorter run still passes.

On the VM the firmware's code sits in the heap (a board freezes it into flash), so the simulator
gives the VM the board's data budget plus the code's measured residency. That code must be the
code this VM holds, or the figures mean nothing (the full bundle's 144 KB against an agent that
loads 90 KB of it gave live_kb -43.88 and a budget search that could not fail). So the bench
first asks the VM which firmware modules the agent loads (boot, Agent(), no app: this board has
no peripherals), and runs the board on a bundle of exactly those: the allowance is their
residency, and a module missing from it would stop the board, not go uncounted.

live_kb: the data a board would hold (VM live heap minus that code); vm_live_kb: the VM's whole
live heap; min_heapsize_kb: the smallest data budget that passes, searched down until one fails;
min_vm_heapsize_kb: the -X heapsize that meant. The bench exits non-zero instead of printing a
figure that cannot be true: live_kb <= 0, a budget that passed below the live data it held or
below what boot alone holds, or a search that never found a failing budget.
Prints {"live_kb", "drift_kb", "min_heapsize_kb", ...}."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _kit import broker, cloud, workdir
from host_tools.build import FIRMWARE, code_allowance, compile_firmware
from host_tools.cloud.registry import Registry
from host_tools.sim.board import micropython
from host_tools.sim.provision import device_config, provision_sim

N = int(os.environ.get("EDGEPAY_HEAP_N", "1000"))
NAMES = ("display", "get_state", "set_config", "frobnicate")
BUDGET_KB = 64
LEVELS = (48, 40, 32, 28, 24, 20, 16, 12, 8)  # searched downward until one fails

_LOADED = """
import sys
import start  # main.py's body (its boot, below, done by hand: start.main() would run the agent)
import config, board
cfg = config.load()
board.boot(cfg)
import store
from hal import flash
store.ROOT = flash.mount_fs(cfg["board"])
import agent
agent.Agent(cfg)
print(" ".join(sorted(sys.modules)))
"""


def loaded_modules() -> list[str]:
    """Firmware modules the agent has loaded once booted (a config like the bench device's)."""
    d = workdir()
    cfg = device_config("probe-1", os.urandom(32), "127.0.0.1", 1, "pw", "gate", "sim-gate",
                        {"hb_s": 5})
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "probe.py").write_text(_LOADED)
    env = dict(os.environ, MICROPYPATH=f"{compile_firmware()}:.frozen")
    r = subprocess.run([micropython(), "-X", "heapsize=1M", "probe.py"], cwd=d, env=env,
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise SystemExit(f"device_heap: could not boot the agent to list its modules:\n{r.stdout}{r.stderr}")
    names = r.stdout.split()
    return [n for n in names if _source(n) is not None]


def _source(name: str) -> Path | None:
    p = FIRMWARE.joinpath(*name.split("."))
    for c in (p.with_suffix(".py"), p / "__init__.py"):
        if c.exists():
            return c
    return None


def exact_firmware(names: list[str]) -> Path:
    """A firmware tree holding main.py and exactly `names` (what this board runs)."""
    root = workdir() / "firmware"
    for n in [*names, "main"]:
        src = _source(n)
        assert src is not None, n
        dst = root / src.relative_to(FIRMWARE)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return root


def run(fw: Path, heap_kb: int, n: int, sample_every: int = 50):
    """Run n commands on a board with a data budget of heap_kb K; return live samples (bytes) or None."""
    b = broker()
    reg = Registry()
    dev = f"heap-{heap_kb}"
    board = provision_sim(b, reg, workdir(), dev, settings={"hb_s": 5}, heapsize=f"{heap_kb}K")
    board.firmware = fw
    board.start()
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
        print(f"heapsize {heap_kb}K failed: {e!r}"[:300], file=sys.stderr)
        return None
    finally:
        c.close()
        board.kill()
        b.close()


def impossible(live: int, boot: int, lo_ok_kb: int, failed_at_kb: int | None) -> str | None:
    """Why these figures cannot be true (bytes of live data at peak and once booted, the smallest
    data budget that passed, the first that failed), or None."""
    if live <= 0 or boot <= 0:
        return "live data <= 0: the code subtracted is not the code this VM holds"
    if lo_ok_kb * 1024 < max(live, boot):
        return (f"a {lo_ok_kb} KB budget passed below the live data it must hold ({max(live, boot) / 1024:.1f} KB):"
                " the VM was given more than the budget")
    if failed_at_kb is None:
        return f"no budget down to {LEVELS[-1]} KB failed: the search cannot place the minimum"
    return None


def main():
    t0 = time.time()
    names = loaded_modules()
    fw = exact_firmware(names)
    code = code_allowance(compile_firmware(fw))
    samples = run(fw, BUDGET_KB, N)
    if not samples:
        raise SystemExit(f"device_heap: the agent failed at {BUDGET_KB}K")
    warm = samples[len(samples) // 5:]  # after start-up settles
    live = max(samples) - code
    boot = samples[0] - code  # the first sample: booted, online, one command
    # smallest budget at which a shorter run (200 commands) still passes, searched downward
    lo_ok, failed_at = BUDGET_KB, None
    for kb in LEVELS:
        if run(fw, kb, 200, 100) is None:
            failed_at = kb
            break
        lo_ok = kb
    figures = {"n": N, "live_kb": round(live / 1024, 2), "drift_kb": round((warm[-1] - warm[0]) / 1024, 2),
               "boot_live_kb": round(boot / 1024, 2), "min_heapsize_kb": lo_ok, "failed_at_kb": failed_at,
               "code_kb": round(code / 1024, 2), "vm_live_kb": round(max(samples) / 1024, 2),
               "min_vm_heapsize_kb": lo_ok + -(-code // 1024), "modules": len(names),
               "samples": len(samples), "seconds": round(time.time() - t0, 1)}
    why = impossible(live, boot, lo_ok, failed_at)
    if why:
        print(json.dumps(figures), file=sys.stderr)
        raise SystemExit(f"device_heap: refusing to print an impossible figure: {why}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
