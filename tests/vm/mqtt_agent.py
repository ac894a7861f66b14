# VM-side MQTT agent driven by tests/test_mqtt_vm.py.
# argv[1]: JSON config (MQTTClient config + "subs": [[filter, qos, mode]]).
# stdin: JSON lines of commands; stdout: JSON lines of events.
# Handler modes: "ok", "async", "slow:<ms>" (async sleep before returning), "raise", "mem".
import asyncio
import json
import sys
import time
import gc
from mqtt_client import MQTTClient


def emit(**kw):
    kw["t"] = time.ticks_ms()
    print(json.dumps(kw))


def make_handler(mode):
    if mode == "ok":
        def h(topic, payload, retain, dup):
            emit(ev="msg", topic=topic, payload=payload.decode(), retain=retain, dup=dup)
        return h
    if mode == "raise":
        def h(topic, payload, retain, dup):
            emit(ev="msg", topic=topic, payload=payload.decode(), retain=retain, dup=dup)
            raise ValueError("handler boom")
        return h
    if mode == "mem":
        def h(topic, payload, retain, dup):
            emit(ev="msg", topic=topic, payload=payload.decode(), retain=retain, dup=dup)
            raise MemoryError("simulated")
        return h
    ms = 0
    if mode.startswith("slow:"):
        ms = int(mode[5:])

    async def ah(topic, payload, retain, dup):
        emit(ev="msg", topic=topic, payload=payload.decode(), retain=retain, dup=dup)
        await asyncio.sleep_ms(ms)
        emit(ev="handled", topic=topic, payload=payload.decode())
    return ah


async def do_pub(c, cmd):
    try:
        r = await c.publish(cmd["topic"], cmd.get("payload", ""), cmd.get("qos", 1),
                            cmd.get("retain", False), cmd.get("wait", True))
        emit(ev="pubdone", id=cmd.get("id"), r=r)
    except Exception as e:
        emit(ev="puberr", id=cmd.get("id"), err=repr(e))


async def main():
    cfg = json.loads(sys.argv[1])
    subs = cfg.pop("subs", [])
    c = MQTTClient(cfg)
    c.on_state(lambda up: emit(ev="state", up=up, sp=c.session_present))
    c.on_error(lambda where, e: emit(ev="error", where=where, err=repr(e)))
    for flt, qos, mode in subs:
        c.subscribe(flt, qos, make_handler(mode))
    c.start()
    emit(ev="ready")
    r = asyncio.StreamReader(sys.stdin)
    while True:
        line = await r.readline()
        if not line:
            break
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "pub":
            asyncio.create_task(do_pub(c, cmd))
        elif op == "sub":
            c.subscribe(cmd["topic"], cmd.get("qos", 1), make_handler(cmd.get("mode", "ok")))
        elif op == "stats":
            gc.collect()
            emit(ev="stats", stats=c.stats, up=c.up, inflight=c.inflight(), mem_free=gc.mem_free())
        elif op == "stop":
            await c.stop()
            emit(ev="stopped", stats=c.stats)
            break


asyncio.run(main())
