# A test app: the device opens and closes payment sessions by itself, so a chaos test can keep
# money flowing while it breaks the network, the broker and the cloud. Each record is logged
# once committed ("REC seq hash"), which is what the ledger must end up holding, exactly once.
import asyncio
import binascii
import time

import store


def setup(agent):
    spec = agent.cfg.get("loadgen", {})
    total = spec.get("sessions", 10)
    gap = spec.get("gap_ms", 50)

    async def gen():
        done = store.read("loadgen", 0)
        while done < total:
            sid = "s%d-%d" % (done, agent.boots)  # a session cut short by a reset is not reused
            t0 = agent.clock.now() or int(time.time())
            for typ, f in ((6, {10: sid, 11: "payer-%d" % (done % 7), 13: t0}),
                           (8, {10: sid, 11: "payer-%d" % (done % 7), 13: t0, 16: 100 + done, 17: "CNY",
                                18: t0 + 60})):
                seq = agent.uplink.record(typ, f)
                print("REC", seq, binascii.hexlify(agent.uplink.j.last_hash).decode())
            done += 1
            store.write("loadgen", done)
            await asyncio.sleep_ms(gap)
        print("LOADGEN done", done)

    asyncio.create_task(gen())
