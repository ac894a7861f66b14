"""The firmware as a board gets it: every firmware/ module compiles with mpy-cross, the compiled
codec (cbor, hmac256, cose, msg .mpy) imports on the MicroPython VM, and the codec stays within its
allocation budget (bench/codec_vm.py)."""
import json
import subprocess
from pathlib import Path

import pytest

from tests.vm import FIRMWARE, ROOT, run_vm


def firmware_files():
    return sorted(FIRMWARE.rglob("*.py"))


def mpy_cross():
    return str(Path(run_vm.__globals__["micropython"]()).parent / "mpy-cross")


@pytest.mark.parametrize("src", firmware_files(), ids=lambda p: str(p.relative_to(FIRMWARE)))
def test_mpy_cross_compiles(src, tmp_path):
    out = tmp_path / (src.stem + ".mpy")
    proc = subprocess.run([mpy_cross(), "-o", str(out), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0


def test_compiled_mpy_imports_on_vm(tmp_path):
    for name in ("cbor", "hmac256", "cose", "msg"):
        subprocess.run([mpy_cross(), "-o", str(tmp_path / (name + ".mpy")),
                        str(FIRMWARE / (name + ".py"))], check=True)
    proc = run_vm("import_mpy.py", str(tmp_path))
    assert proc.stdout.strip().splitlines()[-1] == "ok cbor.mpy hmac256.mpy cose.mpy msg.mpy"


def test_allocation_budget():
    # bench/codec_vm.py runs as-is on the VM; its last line carries the allocation figures
    proc = run_vm(ROOT / "bench" / "codec_vm.py", timeout=300)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["build_alloc_bytes"] <= 1500, res
    assert res["verify_alloc_bytes"] <= 4000, res
