"""One process of the fleet (host_tools/sim/fleet.py): an asyncio loop running its share of the
devices, driven over a multiprocessing Pipe.

Parent -> worker: ("traffic", until_s, close_by_s, every_s) start the customers (seconds from
now); ("flood", seconds, cap) every device journals sess_open records as fast as the broker
takes them (a new one once the MQTT window has room: 8 unPUBACKed) for `seconds`, at most `cap`
unacknowledged in its journal (bench/fleet.py); ("storm", jitter_s) every device drops its connection within jitter_s and reconnects;
("drop", [ids]) those devices drop theirs; ("mark", tag) every device journals one sess_open
record (online or not: it goes out at the next connect), and the stats count the devices whose
last mark is acknowledged (`marked`: an ack round trip for each, bench/fleet.py failover);
("finish",) orderly stop, then the journals' histories.
Worker -> parent, every `report_s`: ("stats", {...}); at the end ("history", {id: [...]}), ("done",).
"""
from __future__ import annotations

import asyncio
import gc
import os
import resource
import time
from typing import Any

from host_tools.sim.fleetdevice import FleetDevice, Stats
from host_tools.sim.fleetmqtt import misc_loop
from host_tools.sim.fleetscenario import app_for


def worker_main(conn: Any, specs: list[dict], cfg: dict) -> None:
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    gc.freeze()  # what is imported is never garbage: keep the collector's passes short
    try:
        asyncio.run(_main(conn, specs, cfg))
    except KeyboardInterrupt:
        pass


def rss_kb(pid: int | None = None) -> int:
    """A process's resident memory in KB (this one by default), 0 where /proc cannot tell."""
    try:
        with open(f"/proc/{pid or os.getpid()}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


async def _main(conn: Any, specs: list[dict], cfg: dict) -> None:
    loop = asyncio.get_running_loop()
    rss0 = rss_kb()  # the process before its devices: what the devices cost is the difference
    stats = Stats()
    devs = [FleetDevice(s, cfg["host"], cfg["port"], loop, stats, rate=cfg["rate"], hb_s=cfg["hb_s"],
                        time_s=cfg["time_s"], keepalive=cfg["keepalive"], retry_s=cfg["retry_s"],
                        cmd_ttl_s=cfg["cmd_ttl_s"], clock_skew_s=cfg["clock_skew_s"], seed=cfg["seed"],
                        brokers=cfg.get("brokers"), subs=cfg.get("subs", "firmware"))
            for s in specs]
    by_id = {d.id: d for d in devs}
    inbox: asyncio.Queue = asyncio.Queue()

    def readable() -> None:
        while conn.poll():
            try:
                inbox.put_nowait(conn.recv())
            except EOFError:
                inbox.put_nowait(("finish",))
                loop.remove_reader(conn.fileno())
                return
    loop.add_reader(conn.fileno(), readable)
    misc = loop.create_task(misc_loop(lambda: [d.mq for d in devs], 2.0))
    apps: list[asyncio.Task] = []

    async def ramp() -> None:
        per = max(1, int(cfg["ramp"] / 10))  # devices started per 0.1 s
        for i in range(0, len(devs), per):
            for d in devs[i:i + per]:
                d.start()
            await asyncio.sleep(0.1)

    async def report() -> None:
        while True:
            await asyncio.sleep(cfg["report_s"])
            conn.send(("stats", {
                "online": sum(1 for d in devs if d.mq.up), "trusted": sum(1 for d in devs if d.trusted()),
                "tariffed": sum(1 for d in devs if d.tariff is not None), "depth": sum(d.depth() for d in devs),
                # customers still being served (an exit waiting for its answer): not drained yet
                "busy": sum(1 for a in apps if not a.done()),
                "marked": sum(1 for d in devs if d.mark_seq and d.acked >= d.mark_seq),
                "refused_subs": sum(d.mq.refused_subs for d in devs),
                "rss_kb": rss_kb(), "rss0_kb": rss0, **stats.take()}))

    loop.create_task(ramp())
    reporter = loop.create_task(report())
    while True:
        msg = await inbox.get()
        what = msg[0]
        if what == "traffic":
            _, until_s, close_by_s, every = msg
            now = time.monotonic()
            for d in devs:
                apps.append(loop.create_task(app_for(d, now + until_s, now + close_by_s, every).run()))
        elif what == "flood":
            _, seconds, cap = msg
            end = time.monotonic() + seconds
            for d in devs:
                apps.append(loop.create_task(_flood(d, end, cap)))
        elif what == "storm":
            jitter = msg[1]
            for d in devs:
                loop.call_later(d.rng.uniform(0, jitter), d.drop)
        elif what == "mark":
            for d in devs:
                d.mark_seq = d.record("sess_open", {"sid": f"mk-{msg[1]}", "payer": "MARK", "t0": d.now() or 0})
        elif what == "drop":
            for i in msg[1]:
                if i in by_id:
                    by_id[i].drop()
        elif what == "finish":
            for a in apps:
                a.cancel()
            await asyncio.gather(*(d.stop() for d in devs), return_exceptions=True)
            await asyncio.sleep(0.2)
            reporter.cancel()
            misc.cancel()
            conn.send(("stats", {"online": 0, "trusted": 0, "tariffed": 0, "depth": sum(d.depth() for d in devs),
                                 "rss_kb": rss_kb(), "rss0_kb": rss0, **stats.take()}))
            conn.send(("history", {d.id: d.history for d in devs}))
            conn.send(("done",))
            return


async def _flood(d: FleetDevice, end: float, cap: int) -> None:
    room = d.mq.room = asyncio.Event()
    n = 0
    while time.monotonic() < end and d.running:
        if not (d.mq.up and len(d.mq.q1) < 8 and d.depth() < cap):
            room.clear()
            try:
                await asyncio.wait_for(room.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
            continue
        n += 1
        d.record("sess_open", {"sid": f"fl-{n}", "payer": "FLOOD", "t0": d.now() or 0})
        if n % 8 == 0:
            await asyncio.sleep(0)
    d.mq.room = None
