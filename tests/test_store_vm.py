"""firmware/store.py on the VM (tests/vm/store_cases.py): small values rewritten in place, big
ones by rename, on the host filesystem and on littlefs over the simulated NOR flash; a power cut at
every program/erase of an in-place rewrite leaves the old value or the new one, never a torn one."""
import json
import os
import subprocess

from host_tools.build import compile_firmware
from tests.vm import VM_SCRIPTS, micropython


def test_store_in_place_and_by_rename_survives_every_power_cut(tmp_path):
    env = dict(os.environ, MICROPYPATH=f"{compile_firmware()}:{VM_SCRIPTS}:.frozen")
    p = subprocess.run([micropython(), "-X", "heapsize=512K", str(VM_SCRIPTS / "store_cases.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=300, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert p.returncode == 0 and lines, f"VM exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    r = json.loads(lines[-1])
    assert r["fails"] == []
    assert r["cuts"] > 0 and r["old"] > 0 and r["new"] > 0, r  # cuts landed before and after the commit
