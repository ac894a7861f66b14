"""Command round trip: cloud signs a command -> device on the MicroPython VM verifies, acts and
replies -> cloud verifies the signed result; against a raw paho QoS1 ping-pong through the same
broker in the same run. Prints {"p50_ms", "p99_ms", "raw_p50_ms", "raw_p99_ms", "ratio_p99"}."""
import json
import os
import threading
import time


from _kit import CLOUD, broker, cloud, pct, workdir
from host_tools.cloud.mqtt import CloudMQTT
from host_tools.cloud.registry import Registry
from host_tools.sim.provision import provision_sim

N = int(os.environ.get("EDGEPAY_RTT_N", "300"))


def device_rtts(b, reg) -> list[float]:
    board = provision_sim(b, reg, workdir(), "rtt-1", settings={"hb_s": 60, "keepalive_s": 30}).start()
    c = cloud(b, reg)
    try:
        board.wait_for("online", 20)
        assert c.sync_time("rtt-1")
        board.wait_for("time set", 5)
        for _ in range(20):  # warm up
            c.send("rtt-1", "display", {1: "warm"})
        out = []
        for i in range(N):
            t0 = time.perf_counter()
            r = c.send("rtt-1", "display", {1: "n%d" % i}, timeout=10)
            out.append((time.perf_counter() - t0) * 1000)
            assert r.ok, (r.state, r.code)
        return out
    finally:
        c.close()
        board.kill()


def raw_rtts(b) -> list[float]:
    """A host paho client echoes QoS1 messages; another times publish -> echo arrival."""
    echo = CloudMQTT("127.0.0.1", b.cloud_port, *CLOUD)
    echo.subscribe("bench/ping", lambda t, p: echo.client.publish("bench/pong", p, qos=1))
    echo.connect()
    got = threading.Event()
    pinger = CloudMQTT("127.0.0.1", b.cloud_port, *CLOUD)
    pinger.subscribe("bench/pong", lambda t, p: got.set())
    pinger.connect()
    time.sleep(0.3)
    out = []
    try:
        for i in range(N + 20):
            got.clear()
            t0 = time.perf_counter()
            pinger.client.publish("bench/ping", b"x" * 100, qos=1)
            assert got.wait(5)
            if i >= 20:
                out.append((time.perf_counter() - t0) * 1000)
        return out
    finally:
        echo.close()
        pinger.close()


def main():
    b = broker()
    try:
        reg = Registry()
        raw = raw_rtts(b)
        dev = device_rtts(b, reg)
        raw2 = raw_rtts(b)  # both sides of the device run, so drift shows up in neither alone
    finally:
        b.close()
    raw = raw + raw2
    out = {"n": N, "p50_ms": round(pct(dev, 50), 3), "p99_ms": round(pct(dev, 99), 3),
           "raw_p50_ms": round(pct(raw, 50), 3), "raw_p99_ms": round(pct(raw, 99), 3)}
    out["ratio_p99"] = round(out["p99_ms"] / out["raw_p99_ms"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
