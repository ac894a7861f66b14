# A test app: the device opens and closes payment sessions by itself, so a chaos test can keep
# money flowing while it breaks the network, the broker and the cloud. Each record is logged
# once committed ("REC seq hash"), which is what the ledger must end up holding, exactly once.
import asyncio
import binascii
import hashlib
import time

import cbor
import store


def setup(ctx):
    spec = ctx.cfg.get("loadgen", {})
    total = spec.get("sessions", 10)
    gap = spec.get("gap_ms", 50)

    async def gen():
        done = store.read("loadgen", 0)
        while done < total:
            sid = "s%d-%d" % (done, ctx.boots)  # a session cut short by a reset is not reused
            t0 = ctx.now() or int(time.time())
            for typ, f in ((6, {10: sid, 11: "payer-%d" % (done % 7), 13: t0}),
                           (8, {10: sid, 11: "payer-%d" % (done % 7), 13: t0, 16: 100 + done, 17: "CNY",
                                18: t0 + 60})):
                seq = ctx.record(typ, f)
                # the chain hash the journal now ends with: record() filled in type, seq and prev
                print("REC", seq, binascii.hexlify(hashlib.sha256(cbor.encode(f)).digest()[:16]).decode())
            done += 1
            store.write("loadgen", done)
            await asyncio.sleep_ms(gap)
        print("LOADGEN done", done)

    asyncio.create_task(gen())
