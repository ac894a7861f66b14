"""Command round trip: cloud signs a command -> device on the MicroPython VM verifies, acts and
replies -> cloud verifies the signed result; against a raw paho QoS1 ping-pong through the same
broker in the same run.

The machine is shared, so the two are interleaved in blocks (BLOCK raw pings, then BLOCK commands,
and so on): load that comes and goes lands on both, and the ratios stay meaningful when the
absolute figures do not. N (EDGEPAY_RTT_N, default 3,000) samples of each: p99 of 300 is noise.
Prints {"n", "p50_ms", "p99_ms", "raw_p50_ms", "raw_p99_ms", "ratio_p50", "ratio_p99", ...}."""
import json
import os
import threading
import time

from _kit import CLOUD, broker, cloud, pct, workdir
from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.mqtt import CloudMQTT
from host_tools.cloud.registry import Registry
from host_tools.sim.provision import provision_sim

N = int(os.environ.get("EDGEPAY_RTT_N", "3000"))
BLOCK = int(os.environ.get("EDGEPAY_RTT_BLOCK", "100"))
WARM = 50
GOAL = 3.0  # both ratios


class Raw:
    """A host paho client echoes QoS1 messages; another times publish -> echo arrival."""

    def __init__(self, b):
        self.echo = CloudMQTT(BrokerSettings("127.0.0.1", b.cloud_port, *CLOUD))
        self.echo.subscribe("bench/ping", lambda t, p: self.echo.client.publish("bench/pong", p, qos=1))
        self.echo.connect()
        self.got = threading.Event()
        self.pinger = CloudMQTT(BrokerSettings("127.0.0.1", b.cloud_port, *CLOUD))
        self.pinger.subscribe("bench/pong", lambda t, p: self.got.set())
        self.pinger.connect()
        time.sleep(0.3)  # both SUBACKs in

    def one(self) -> float:
        self.got.clear()
        t0 = time.perf_counter()
        self.pinger.client.publish("bench/ping", b"x" * 100, qos=1)
        assert self.got.wait(5), "raw echo lost"
        return (time.perf_counter() - t0) * 1000

    def close(self):
        self.echo.close()
        self.pinger.close()


class Device:
    def __init__(self, b, reg):
        self.board = provision_sim(b, reg, workdir(), "rtt-1", settings={"hb_s": 60, "keepalive_s": 30}).start()
        self.c = cloud(b, reg)
        self.board.wait_for("online", 20)
        assert self.c.sync_time("rtt-1")
        self.board.wait_for("time set", 5)
        self.i = 0

    def one(self) -> float:
        self.i += 1
        t0 = time.perf_counter()
        r = self.c.send("rtt-1", "display", {1: "n%d" % self.i}, timeout=10)
        dt = (time.perf_counter() - t0) * 1000
        assert r.ok, (r.state, r.code)
        return dt

    def close(self):
        self.c.close()
        self.board.kill()


def main():
    b = broker()
    raw = dev = None
    try:
        reg = Registry()
        raw, dev = Raw(b), Device(b, reg)
        for _ in range(WARM):
            raw.one()
            dev.one()
        r_ms: list[float] = []
        d_ms: list[float] = []
        t0 = time.time()
        while len(d_ms) < N:
            k = min(BLOCK, N - len(d_ms))
            r_ms += [raw.one() for _ in range(k)]
            d_ms += [dev.one() for _ in range(k)]
    finally:
        for x in (dev, raw):
            if x is not None:
                x.close()
        b.close()
    out = {"n": N, "block": BLOCK,
           "p50_ms": round(pct(d_ms, 50), 3), "p99_ms": round(pct(d_ms, 99), 3),
           "raw_p50_ms": round(pct(r_ms, 50), 3), "raw_p99_ms": round(pct(r_ms, 99), 3)}
    out["ratio_p50"] = round(out["p50_ms"] / out["raw_p50_ms"], 2)
    out["ratio_p99"] = round(out["p99_ms"] / out["raw_p99_ms"], 2)
    out["goal"] = GOAL
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
