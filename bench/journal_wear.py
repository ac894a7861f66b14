"""Flash cost per committed money record: firmware/journal.py on littlefs over the simulated NOR flash.

1,000 session records (~150-byte signed records), each committed before the next, on the VM with
the compiled firmware; counted by the flash itself (bytes programmed, block erases). Side by side in
one run: the same records acknowledged one by one as forwarding would (the marker and the deletes
cost flash too), and the naive way (open a log file, append, close, per record) on littlefs with
MicroPython's default parameters. Also the RAM the journal holds on the VM. Last line: JSON.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from host_tools.build import compile_firmware  # noqa: E402
from host_tools.sim.board import micropython  # noqa: E402

N, SIZE = 1000, 150

VM = r"""
import gc, json, sys, vfs
import journal
from hal import flash, simflash
mode, d, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rec = bytes(range(256))[:size]
out = {}
if mode == "naive":
    dev = simflash.SimFlash(d + "/flash.bin", 4096, 128)
    vfs.VfsLfs2.mkfs(dev)
    vfs.mount(vfs.VfsLfs2(dev), "/n")  # MicroPython's defaults, as the board's root fs has
    s0 = dev.stats()
    for i in range(n):
        with open("/n/log", "ab") as f:
            f.write(rec)
else:
    gc.collect()
    a = gc.mem_alloc()
    p = flash.mount({"flash": {"dir": d, "blocks": 256}})
    gc.collect()
    b = gc.mem_alloc()
    j = journal.Journal(p + "/j", 400000)
    gc.collect()
    out["ram_fs"], out["ram_journal"] = b - a, gc.mem_alloc() - b
    dev = flash.dev
    s0 = dev.stats()
    h = bytes(16)
    peak = 0
    for i in range(1, n + 1):
        gc.collect()
        m = gc.mem_alloc()
        gc.disable()
        assert j.append(i, rec, h)
        peak = max(peak, gc.mem_alloc() - m)  # bytes one append allocates (transient)
        gc.enable()
        if mode == "acked":
            j.ack(i)
    out["append_alloc"] = peak
    assert j.depth() == (0 if mode == "acked" else n)
s1 = dev.stats()
out["prog_bytes"] = s1["prog_bytes"] - s0["prog_bytes"]
out["erases"] = s1["erases"] - s0["erases"]
out["conflicts"] = s1["conflicts"]
print(json.dumps(out))
"""


def run(bundle: Path, mode: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgepay-wear-") as d:
        script = Path(d) / "wear.py"
        script.write_text(VM)
        env = dict(os.environ, MICROPYPATH=f"{bundle}:.frozen")
        p = subprocess.run([micropython(), "-X", "heapsize=64K", str(script), mode, d, str(N), str(SIZE)],
                           capture_output=True, text=True, env=env, timeout=600)
        if p.returncode != 0:
            raise SystemExit(f"VM failed ({mode}):\n{p.stdout}{p.stderr}")
        return json.loads(p.stdout.splitlines()[-1])


def main() -> None:
    bundle = compile_firmware()
    jr, acked, naive = run(bundle, "journal"), run(bundle, "acked"), run(bundle, "naive")
    assert jr["conflicts"] == acked["conflicts"] == naive["conflicts"] == 0  # littlefs never reprograms
    per = lambda r, k: round(r[k] / N, 3)  # noqa: E731
    res = {
        "records": N,
        "flash": "NOR 4096-byte blocks (ESP32/RP2040 sector); journal fs readsize 128, progsize 16",
        "record_bytes": SIZE,
        "bytes_programmed_per_record": per(jr, "prog_bytes"),
        "erases_per_record": per(jr, "erases"),
        "program_amplification": round(jr["prog_bytes"] / N / SIZE, 2),
        "acked_bytes_programmed_per_record": per(acked, "prog_bytes"),
        "acked_erases_per_record": per(acked, "erases"),
        "naive_bytes_programmed_per_record": per(naive, "prog_bytes"),
        "naive_erases_per_record": per(naive, "erases"),
        "naive_program_amplification": round(naive["prog_bytes"] / N / SIZE, 2),
        "ram_fs_mount_bytes": jr["ram_fs"],
        "ram_journal_bytes": jr["ram_journal"],
        "append_alloc_bytes": jr["append_alloc"],
    }
    print(f"journal: {res['program_amplification']}x programmed, {res['erases_per_record']} erases/record; "
          f"acked one by one: {round(res['acked_bytes_programmed_per_record'] / SIZE, 2)}x, "
          f"{res['acked_erases_per_record']}; naive: {res['naive_program_amplification']}x, "
          f"{res['naive_erases_per_record']}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
