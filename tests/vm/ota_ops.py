# hal/ota.py on the VM over a board directory's flash.bin (tests/test_hal_ota_vm.py). stdin: JSON
# {"dir": board dir, "flash": {...} (optional), "mount": true (optional), "ops": [...]}; each op:
#   {"op": "state"}                      -> {"running", "trial", "next", "size", "bs"}
#   {"op": "update", "data": hex, "chunk": n (optional)}
#                                        -> the next slot erased, written (chunks spanning blocks),
#                                           read back, set_boot: {"slot", "ok"}
#   {"op": "valid"}                      -> mark_valid
# Prints one JSON line: {"results": [...], "cut": op index or null, "stats": chip stats}. A power
# cut armed by the test (flash.cut in the dir) ends the run at the op it strikes.
import hashlib
import json
import sys

from hal import ota, simflash

req = json.loads(sys.stdin.read())
fc = dict(req.get("flash") or {})
fc["dir"] = req["dir"]
cfg = {"flash": fc}
if req.get("mount"):  # as the firmware boots: the main fs mounted first, its chip's cut kills the VM
    from hal import flash
    flash.mount_fs(cfg)
    print(json.dumps({"mounted": simflash.chip.stats()}))
else:
    simflash.chip = simflash._chip(fc, simflash.FS_BLOCKS + 2 + 2 * simflash.OTA_BLOCKS)
out = []
cut = None


def state():
    s = ota.slots(cfg)
    p = s.next_update()
    return {"running": s.running(), "trial": s.trial(), "next": p.label, "size": p.size, "bs": p.bs}


def update(data, chunk):
    s = ota.slots(cfg)
    p = s.next_update()
    erased = -1
    for o in range(0, len(data), chunk):
        part = data[o:o + chunk]
        for b in range(o // p.bs, (o + len(part) - 1) // p.bs + 1):
            if b > erased:
                p.erase(b)
                erased = b
        p.write(o, part)
    back = bytearray(len(data))
    p.readinto(0, back)
    s.set_boot(p, len(data), hashlib.sha256(data).digest())
    return {"slot": p.label, "ok": back == data}


for i, op in enumerate(req["ops"]):
    try:
        k = op["op"]
        if k == "state":
            out.append(state())
        elif k == "update":
            out.append(update(bytes.fromhex(op["data"]), op.get("chunk", 1000)))
        elif k == "valid":
            ota.slots(cfg).mark_valid()
            out.append(None)
    except simflash.PowerLoss:
        cut = i
        break
print(json.dumps({"results": out, "cut": cut, "stats": simflash.chip.stats()}))
