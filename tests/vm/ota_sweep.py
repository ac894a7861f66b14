# One boot of a board in the middle of a firmware update (tests/test_ota_powercut.py): the real
# updater (firmware/ota.py) over the real slots (hal/ota, hal/simota) and store on the simulated
# chip, with the network stood in: a chunk request is answered at once from the payload file, and
# the cloud's time answer is taken as given (the clock is trusted). A power cut armed by the test
# (flash.cut in the board dir) kills this process at the flash op it strikes, as it kills a board.
# stdin JSON: {"dir", "payload": path, "st": the "ota" file, "setup": write it (and one more) first}.
# Prints "EV <json>" per update event, "REBOOT" when the updater resets the board, then one JSON
# line {"done": final state or null, "running": slot, "fw": the "fw" file}.
import asyncio
import json
import sys

import store
from hal import flash, ota as hota

req = json.loads(sys.stdin.read())
fc = {"dir": req["dir"], "blocks": 16, "block_size": 4096}
board = {"name": "sim-gate", "kind": "gate", "flash": fc}
store.ROOT = flash.mount_fs(board)
with open(req["payload"], "rb") as f:
    payload = f.read()
if req.get("setup"):  # a board before the cuts: an accepted `ota` command's state, and others
    store.write("keep", [1, 2, 3])  # the device's other state: it must come through every cut
    store.write("ota", req["st"])
    print("{}")
    sys.exit(0)


class Clock:
    def now(self):
        return 1800000000

    def trusted(self):
        return True


class Link:
    up = True


class Agent:
    def __init__(self):
        self.cfg = {}
        self.board = board
        self.fw = "0.1.0"
        self.settings = {"ota_defer_s": 60, "ota_confirm_s": 60}
        self.clock = Clock()
        self.mqtt = Link()
        self._busy = None
        self.final = None
        self.rebooted = False
        self.u = None

    async def send(self, typ, fields, qos=1):
        if typ == 12:  # a chunk request: the chunk server's answer, verified, arrives at once
            c = self.u.st["chunk"]
            i = fields[11]
            print("REQ", i)
            p = {10: fields[10], 11: i, 12: payload[i * c:(i + 1) * c]}
            self.u.on_chunk(p)
        elif typ == 4:
            d = fields[11]
            print("EV", json.dumps(d))
            if d["st"] in ("confirmed", "failed", "rolled_back"):
                self.final = d["st"]

    def self_test(self):
        return True

    async def _reboot(self, delay):
        print("REBOOT")  # the board resets here: nothing after it runs
        self.rebooted = True
        await asyncio.sleep(3600)


async def main(a, how):
    a.u.start(how)
    while not a.rebooted and a.u.task is not None and not a.u.task.done():
        await asyncio.sleep_ms(5)


a = Agent()
slots = hota.slots(board)
st = store.read("ota")
a.u = ota = __import__("ota").Updater(a, slots, st)
how = ota.boot() if st else None
if how is not None:
    asyncio.run(main(a, how))
print(json.dumps({"done": a.final, "running": slots.running(), "fw": store.read("fw"), "how": how,
                  "keep": store.read("keep")}))
