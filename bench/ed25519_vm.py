"""Release-manifest verification on the MicroPython VM at a board's 64K heap: firmware/ed25519.py
(with the pure-Python firmware/sha512.py: the port's hashlib has none) and firmware/release.py,
compiled with mpy-cross as a board runs them.

    .venv/bin/python bench/ed25519_vm.py

Under CPython this file signs a manifest with a release key made for the run, compiles firmware/
(host_tools/build.py) and itself, and re-runs itself on the VM (-X heapsize=64K), where it
measures: the median time of ed25519.verify over the manifest's Sig_structure, of the whole
release.open_manifest (CBOR, shape, key, signature, fields) and of the SHA-512 alone; the heap a
verify needs above what is live before it (peak_heap_kb: the lowest gc.mem_free() sampled at every
point operation and hash block with gc.threshold(256), so at most 256 B of it is garbage); what
stays allocated after it (retained_bytes, after gc.collect()); what importing the modules costs
(import_heap_kb, import_bytes: a frozen module's code would sit in flash instead). Then the least
free heap in which a verify still passes, the rest taken by a ballast of chunks that fills the
holes too (min_free_kb, bisected to 1/8 KB over separate VM runs: the peak plus what fragmentation
costs). The unix port is 64-bit: objects are about twice an ESP32's.
ESP32 runs MicroPython roughly 45-70x slower (DESIGN.md): verify_ms x 45..70 is the board's figure.

Last line: {"verify_ms", "manifest_verify_ms", "sha512_ms", "peak_heap_kb", "min_free_kb",
"retained_bytes", "import_heap_kb", "mpy_bytes": {module: bytes}, "mpy_total", "goal_verify_ms", ...}
"""
import sys

if sys.implementation.name != "micropython":
    import hashlib
    import json
    import os
    import subprocess
    import tempfile
    from pathlib import Path

    ROOT = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(ROOT))
    import cbor2
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from host_tools.build import compile_firmware, micropython, mpy_cross
    from host_tools.protocol.manifest import Manifest, key_id, sig_structure, sign_manifest

    MODULES = ("ed25519", "sha512", "release")
    GOAL_MS = 30  # issue 12: manifest verification on the VM, about 2 s on an ESP32

    def vm(mpy: Path, tmp: Path, heap: str, mode: str, doc: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, MICROPYPATH=f"{tmp}:{mpy}")
        return subprocess.run([micropython(), "-X", f"heapsize={heap}", "-m", "ed25519_bench", mode],
                              input=doc, capture_output=True, text=True, env=env, timeout=300)

    def floor_kb(mpy: Path, tmp: Path, doc: str) -> float:
        """The least free heap (KB, to 1/8) a verify needs, the rest held by a ballast."""
        lo, hi = 0, 32 * 1024  # bytes: fails at lo, passes at hi
        if vm(mpy, tmp, "64K", str(hi), doc).returncode != 0:
            raise SystemExit(f"a verify does not fit in {hi} free bytes")
        while hi - lo > 128:
            mid = (lo + hi) // 2
            if vm(mpy, tmp, "64K", str(mid), doc).returncode == 0:
                hi = mid
            else:
                lo = mid
        return round(hi / 1024, 2)

    def main() -> None:
        key = Ed25519PrivateKey.generate()   # a release key for this run only
        pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        payload = b"\0" * 65536
        m = Manifest(board="sim-gate", kind="gate", version="1.4.0", seq=7, size=len(payload),
                     sha256=hashlib.sha256(payload).digest(), window=(1_800_000_000, 1_800_086_400),
                     from_version="1.2.0")
        raw = sign_manifest(key, m)
        prot, _, body, sig = cbor2.loads(raw).value
        doc = json.dumps({"pub": pub.hex(), "kid": key_id(key.public_key()).hex(), "raw": raw.hex(),
                          "sig": sig.hex(), "msg": sig_structure(prot, body).hex()})
        mpy = compile_firmware()
        sizes = {name: (mpy / f"{name}.mpy").stat().st_size for name in MODULES}
        with tempfile.TemporaryDirectory(prefix="edgepay-bench-") as t:
            tmp = Path(t)
            subprocess.run([mpy_cross(), "-o", str(tmp / "ed25519_bench.mpy"), __file__], check=True)
            proc = vm(mpy, tmp, "64K", "measure", doc)
            if proc.returncode != 0:
                raise SystemExit(f"VM exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            imports = json.loads(vm(mpy, tmp, "64K", "imports", doc).stdout.strip().splitlines()[-1])
            imports.pop("cbor")  # every bundle has it already
            res["import_bytes"] = imports
            res["import_heap_kb"] = round(sum(imports.values()) / 1024, 2)
            floor = floor_kb(mpy, tmp, doc)
        res.update({"min_free_kb": floor, "manifest_bytes": len(raw),
                    "mpy_bytes": sizes, "mpy_total": sum(sizes.values()), "goal_verify_ms": GOAL_MS,
                    "within_goal": res["manifest_verify_ms"] <= GOAL_MS, "heapsize": "64K",
                    "esp32_est_s": [round(res["manifest_verify_ms"] * k / 1000, 2) for k in (45, 70)]})
        print(f"ed25519.verify {res['verify_ms']} ms, open_manifest {res['manifest_verify_ms']} ms "
              f"(sha512 {res['sha512_ms']} ms); peak +{res['peak_heap_kb']} KB, fits in {res['min_free_kb']} KB free; "
              f".mpy {sizes}")
        print(json.dumps(res))

    main()
    sys.exit(0)

import binascii
import gc
import json
import time

MODE = sys.argv[-1]
if MODE == "imports":
    # what importing each module costs (from .mpy: code and constants on the heap; frozen, in flash)
    imports = {}
    for name in ("cbor", "sha512", "ed25519", "release"):
        gc.collect()
        b0 = gc.mem_alloc()
        __import__(name)
        gc.collect()
        imports[name] = gc.mem_alloc() - b0
    print(json.dumps(imports))
    sys.exit(0)

import ed25519  # noqa: E402 (after the imports mode, which measures them fresh)
import release  # noqa: E402
import sha512  # noqa: E402

u = binascii.unhexlify
N = 9


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def timed(fn, n=N):
    ts = []
    for _ in range(n):
        gc.collect()
        t = time.ticks_us()
        fn()
        ts.append(time.ticks_diff(time.ticks_us(), t))
    return round(median(ts) / 1000, 2)


d = json.loads(sys.stdin.read())
pub = u(d["pub"])
sig = u(d["sig"])
msg = u(d["msg"])
raw = u(d["raw"])
trusted = {u(d["kid"]): pub}
d = None
if MODE != "measure":
    # leave about MODE bytes free, then verify once: exit 0 iff it fits. The ballast is a chain of
    # chunks, largest first, so it fills the holes too: what is left is MODE bytes, not one hole.
    want = int(MODE)
    ballast = None
    gc.collect()
    for size in (4096, 1024, 256, 64, 16):
        try:
            while gc.mem_free() - size - 96 > want:
                ballast = (ballast, bytearray(size))
        except MemoryError:
            pass
    gc.collect()
    if not ed25519.verify(pub, sig, msg):
        sys.exit(2)
    sys.exit(0)

assert ed25519.verify(pub, sig, msg)
verify_ms = timed(lambda: ed25519.verify(pub, sig, msg))
manifest_ms = timed(lambda: release.open_manifest(raw, trusted, ()))
def sha(r, a, m):
    h = sha512.sha512(r)
    h.update(a)
    h.update(m)
    return h.digest()


sha_ms = timed(lambda: sha(sig[:32], pub, msg))

# peak: sample the free heap at every point operation and hash block, the GC kept near the live set
low = [1 << 30]
_add = ed25519._add
_dbl = ed25519._dbl
_cmp = sha512._compress


def add(p, q):
    f = gc.mem_free()
    if f < low[0]:
        low[0] = f
    return _add(p, q)


def dbl(p):
    f = gc.mem_free()
    if f < low[0]:
        low[0] = f
    return _dbl(p)


def comp(h, b):
    f = gc.mem_free()
    if f < low[0]:
        low[0] = f
    return _cmp(h, b)


ed25519._add = add
ed25519._dbl = dbl
sha512._compress = comp
gc.threshold(256)
gc.collect()
a0 = gc.mem_alloc()
f0 = gc.mem_free()
ok = ed25519.verify(pub, sig, msg)
gc.threshold(-1)
gc.collect()
retained = gc.mem_alloc() - a0
ed25519._add = _add
ed25519._dbl = _dbl
sha512._compress = _cmp
assert ok

print(json.dumps({"verify_ms": verify_ms, "manifest_verify_ms": manifest_ms, "sha512_ms": sha_ms,
                  "peak_heap_kb": round((f0 - low[0]) / 1024, 2), "retained_bytes": retained}))
