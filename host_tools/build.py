"""Compile firmware/ with mpy-cross into .mpy, as boards run it (frozen or as .mpy files).

Compiling from source on the device needs RAM a 64K heap does not have (the MQTT client alone
runs the compiler out of memory), so the simulator runs the compiled bundle too. Bundles are
cached by a hash of the sources and the compiler, and built atomically so parallel test workers
can share them.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
CACHE = ROOT / "build" / "mpy"


class BuildError(RuntimeError):
    pass


def mpy_cross() -> str:
    exe = Path(sys.executable).parent / "mpy-cross"
    if exe.exists():
        return str(exe)
    found = shutil.which("mpy-cross")
    if not found:
        raise BuildError("mpy-cross is not installed: run `make setup`")
    return found


def micropython() -> str:
    """The unix MicroPython VM (the simulator's boards, the heap probe here, the VM tests)."""
    exe = Path(sys.executable).parent / "micropython"
    if exe.exists():
        return str(exe)
    found = shutil.which("micropython")
    if not found:
        raise RuntimeError("the micropython VM is not installed: run `make setup`")
    return found


def sources(root: Path = FIRMWARE) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


# -O3: no line numbers in the bytecode (a traceback still names the file and function) and no
# asserts (the firmware has none): ~7 % of every module, what the update code costs (issue 12).
OPT = ("-O3",)


def compile_firmware(root: Path = FIRMWARE, cache: Path = CACHE, arch: str | None = None) -> Path:
    """Return a directory holding every firmware module as .mpy (same layout as firmware/)."""
    files = sources(root)
    h = hashlib.sha256()
    compiler = mpy_cross()
    h.update(subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.encode())
    h.update((arch or "").encode())
    h.update(" ".join(OPT).encode())
    for p in files:
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    out = cache / h.hexdigest()[:16]
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)

    def fill(tmp: Path) -> None:
        for p in files:
            rel = p.relative_to(root).with_suffix(".mpy")
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            cmd = [compiler, *OPT, "-o", str(tmp / rel), "-s", str(p.relative_to(root)), str(p)]
            if arch:
                cmd.insert(1, f"-march={arch}")
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise BuildError(f"mpy-cross failed on {p.relative_to(ROOT)}:\n{r.stderr.strip()}")
    return publish(out, fill)


def publish(out: Path, fill) -> Path:
    """Make directory `out` by filling a temporary one beside it and renaming it into place, so a
    reader never sees half of it; test workers racing to make the same one all get it whole."""
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    try:
        fill(tmp)
        try:
            os.rename(tmp, out)
        except OSError:  # another worker made the same one first
            if not out.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


_PROBE = """
import gc, sys
import asyncio  # frozen into the VM as into every board's firmware: not part of our allowance
gc.collect()
a = gc.mem_alloc()
for m in sys.argv[1:]:
    try:
        __import__(m)
    except ImportError as e:  # a module the bundle cannot load yet: left out, and said so
        print("skip", m, e)
gc.collect()
print(gc.mem_alloc() - a)
"""


def modules(bundle: Path) -> list[str]:
    """Importable module names of a compiled bundle (main excluded: importing it runs the agent)."""
    out = []
    for p in sorted(bundle.rglob("*.mpy")):
        rel = p.relative_to(bundle).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        if name != "main":
            out.append(name)
    return out


# Imported only while a firmware update is in hand (agent.py imports ota lazily, ota imports
# release, release ed25519 and sha512): resident during a download, not in a device's usual day.
UPDATE_ONLY = ("ota", "release", "ed25519", "sha512")


def code_allowance(bundle: Path, exclude: tuple[str, ...] = ()) -> int:
    """Heap bytes the bundle's code occupies once imported on the VM.

    A board runs this code frozen into flash, where it costs almost no RAM; the unix VM cannot
    freeze, so the simulator adds this many bytes to the board's heap budget. Pass a board's own
    bundle (host_tools.bundle.board_bundle) to count only what that board carries: a gate never
    imports the vending app, so the other apps' code must neither pad its heap nor be subtracted
    from its live heap as "code". Measured once per module set (the figure is cached beside the
    bundle). `exclude`: modules left out (UPDATE_ONLY: the code resident when no update runs, what
    a live-heap figure subtracts; the VM's heap itself allows for all of it).
    """
    names = [n for n in modules(bundle) if n not in exclude]
    cached = bundle / (".resident-" + hashlib.sha256(" ".join(names).encode()).hexdigest()[:12])
    if cached.exists():
        return int(cached.read_text())
    probe = bundle / ".probe.py"
    probe.write_text(_PROBE)
    env = dict(os.environ, MICROPYPATH=f"{bundle}:.frozen")
    r = subprocess.run([micropython(), "-X", "heapsize=1M", str(probe), *names],
                       capture_output=True, text=True, env=env, cwd=bundle)
    if r.returncode != 0:
        raise BuildError(f"could not import the firmware bundle on the VM:\n{r.stdout}{r.stderr}")
    n = int(r.stdout.strip().splitlines()[-1])
    cached.write_text(str(n))
    return n
