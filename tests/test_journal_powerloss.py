"""Power-loss sweep of the money journal on littlefs over the simulated NOR flash (tests/vm/journal_sweep.py).

Random sweep: several simulated devices (own flash image each) run in parallel; each is a chain of VM
processes, each process doing a batch of cuts, so a good share of reboots happen on a fresh VM (the
next process recovers the cut the last one ended with). Every-op sweep: a fixed workload cut at each
of its program/erase operations in turn, clean and torn, some cut again during recovery.
EDGEPAY_POWERCUTS sets the random cuts (1000 by default; 10000 for a long run).
"""
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from host_tools.build import compile_firmware
from tests.vm import VM_SCRIPTS, micropython

CUTS = int(os.environ.get("EDGEPAY_POWERCUTS", "1000"))
PER_VM = 10  # cuts per VM process; every process boundary is a reboot on a fresh VM


@pytest.fixture(scope="module")
def bundle():
    return compile_firmware()


def sweep(bundle, cfg):
    env = dict(os.environ, MICROPYPATH=f"{bundle}:{VM_SCRIPTS}:.frozen")
    p = subprocess.run([micropython(), "-X", "heapsize=512K", str(VM_SCRIPTS / "journal_sweep.py")],
                       input=json.dumps(cfg), capture_output=True, text=True, timeout=600, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert p.returncode == 0 and lines, f"VM exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return json.loads(lines[-1])


def chain(bundle, d, seed, cuts, cap, blocks):
    """One simulated device: VM processes in turn on the same flash, until `cuts` cuts are done."""
    total = {"fails": [], "vms": 0}
    done = 0
    while done < cuts:
        k = min(PER_VM, cuts - done)
        r = sweep(bundle, {"dir": str(d), "cuts": k, "seed": seed * 100003 + done, "cap": cap,
                           "blocks": blocks})
        total["fails"] += r["fails"]
        total["vms"] += 1
        for key, v in r["stats"].items():
            total[key] = total.get(key, 0) + v
        done += k
    return total


def test_power_cuts_random(bundle, tmp_path):
    # device 0 keeps a roomy journal; 1 and 3 a small one, so they run full under cuts; 2 has a
    # flash too small for its capacity, so littlefs itself runs out of space (ENOSPC) under cuts
    shape = [(24000, 64), (5000, 64), (10 ** 6, 12), (5000, 64)]
    devices = [(tmp_path / f"dev{i}", i + 1, CUTS // 4 + (i < CUTS % 4), *shape[i]) for i in range(4)]
    for d, *_ in devices:
        d.mkdir()
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as ex:
        results = list(ex.map(lambda a: chain(bundle, *a), devices))
    fails = [f for r in results for f in r["fails"]]
    total = {k: sum(r.get(k, 0) for r in results) for k in ("cuts", "torn", "recovery_cuts", "fresh_vm",
                                                            "appends", "acks", "full", "vms")}
    print("power-loss sweep:", json.dumps(total))
    assert not fails, fails[:10]
    assert total["cuts"] >= CUTS
    assert total["torn"] > CUTS // 4 and total["recovery_cuts"] > CUTS // 40
    assert total["fresh_vm"] >= CUTS // PER_VM - 4   # a fresh VM recovered each process's last cut
    assert total["full"] > 0 and total["acks"] > CUTS


@pytest.mark.parametrize("warm", [0, 60, 200])
def test_power_cut_at_every_op(bundle, tmp_path, warm):
    # warm 0: the first segments and the first ack; 60 and 200: a backlog, segment turnover, full
    r = sweep(bundle, {"dir": str(tmp_path), "mode": "every", "first": 1, "last": 400, "seed": 7 + warm,
                       "steps": 40, "warm": warm, "cap": 5000})
    print("every-op sweep, warm %d:" % warm, json.dumps(r["stats"]))
    assert not r["fails"], r["fails"][:10]
    assert "beyond" in r["stats"], "the workload outlasted the sweep: raise 'last'"
    assert r["stats"]["cuts"] >= r["stats"]["beyond"] - 1 and r["stats"]["torn"] > 0
