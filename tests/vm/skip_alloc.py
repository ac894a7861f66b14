# Heap allocated while MQTTClient._skip streams past n bytes from a host TCP server (argv: port
# n mode), the GC off so every allocation counts. mode "client": the client's _skip; "slices":
# the loop it replaced (a memoryview slice and a coroutine per chunk), for comparison. "waits"
# counts the times the socket ran dry and the poller was asked (asyncio allocates its entry then).
import asyncio
import gc
import json
import sys
import time

import hal
from mqtt_client import MQTTClient


async def slices(c, st, n):
    while n:
        k = min(n, c._max)
        await c._fill(st, c._rxmv[:k])
        n -= k


async def main():
    port, n, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    c = MQTTClient({"client_id": "x", "max_packet": 2300})
    s = hal.connect("127.0.0.1", port)
    st = asyncio.StreamReader(s)
    await asyncio.sleep_ms(50)
    q = asyncio.core._io_queue
    waits = [0]
    queue_read = q.queue_read

    def counted(s):
        waits[0] += 1
        queue_read(s)
    q.queue_read = counted
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    t0 = time.ticks_ms()
    await (c._skip(st, n) if mode == "client" else slices(c, st, n))
    ms = time.ticks_diff(time.ticks_ms(), t0)
    a1 = gc.mem_alloc()
    gc.enable()
    q.queue_read = queue_read
    s.close()
    print(json.dumps({"mode": mode, "n": n, "alloc": a1 - a0, "ms": ms, "waits": waits[0]}))


asyncio.run(main())
