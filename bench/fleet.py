"""Fleet figures (issue 14 §4, the first two): how many protocol-level devices this box holds
connected and heartbeating on Mosquitto, and how much of a record flood ingest commits.

- devices: N fleet devices (host_tools/sim/fleet.py: real MQTT 3.1.1 clients, own credentials and
  keys, the host codec) connect, get a trusted clock, and heartbeat every --hb seconds; a plain
  cloud subscriber on up/hb counts the distinct devices whose heartbeat arrived during the --hold
  window that follows. `broker_kb_per_device` and `sim_kb_per_device` are the RSS the devices
  added to Mosquitto and to the device processes (each process's RSS before its devices created,
  subtracted).
- committed_per_s, committed_ratio: --flood-devices devices journal records as fast as the broker
  takes them (a new record once the device's MQTT window of 8 has room) for --flood-s seconds,
  through the site's ingest worker (verify, chain check, SQLite commit, signed ack); a plain
  subscriber in its own process receives the same stream in the same run. The ratio is records
  committed over records that subscriber received, in the same window. Then the journals drain
  and the ledger is reconciled record by record against every journal (`reconciled`).

    python bench/fleet.py [--devices 10000] [--hold 45] [--hb 30] [--flood-devices 200] [--flood-s 60]

The last line is one JSON object. Goals (issue 14): devices >= 10,000; committed_ratio >= 0.8.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from host_tools.cloud.mqtt import BrokerSettings, CloudMQTT  # noqa: E402
from host_tools.sim.fleet import Fleet, _proc_rss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# a plain QoS 1 subscriber in its own process (so it does not share the ingest worker's GIL):
# prints its count whenever a line arrives on stdin, exits at EOF
PLAIN = r"""
import sys, threading
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
n = [0]
c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
c.username_pw_set(user, pw)
def on_connect(cl, u, f, rc, p):
    cl.subscribe("v1/dev/+/up/rec", 1)
def on_sub(cl, u, mid, rc, p):
    print("ready", flush=True)
def on_msg(cl, u, m):
    n[0] += 1
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_sub, on_msg
c.connect(host, port, 30)
c.loop_start()
for line in sys.stdin:
    print(n[0], flush=True)
c.loop_stop()
"""


def devices_figure(n: int, hold: float, hb: float, say) -> dict:
    f = Fleet(n, scenario="idle", hb_s=hb, ramp=500)
    try:
        f.start()
        broker0 = _proc_rss(f.world.broker.proc.pid)
        up = f.connect(say)
        seen: dict[str, float] = {}
        lock = threading.Lock()
        w = f.world
        t_hold = time.monotonic()

        def on_hb(topic: str, payload: bytes) -> None:
            with lock:
                seen[topic.split("/")[2]] = time.monotonic()
        sub = CloudMQTT(BrokerSettings("127.0.0.1", w.broker.cloud_port, *w.cloud))
        sub.subscribe("v1/dev/+/up/hb", on_hb, qos=0)
        sub.connect()
        f.wait_for(lambda: False, hold, say, every=5.0)
        with lock:
            beating = sum(1 for t in seen.values() if t >= t_hold)
        sub.close()
        online = f.total("online")
        broker_kb = _proc_rss(f.world.broker.proc.pid) - broker0
        sim_kb = sum(s.get("rss_kb", 0) - s.get("rss0_kb", 0) for s in f.last.values())
        return {"devices": beating, "devices_online": online, "devices_asked": n, "all_up": up,
                "connect_s": f.connect_s, "provision_s": round(f.provision_s, 1), "procs": f.procs,
                "broker_kb_per_device": round(broker_kb / max(1, n), 2),
                "sim_kb_per_device": round(sim_kb / max(1, n), 1),
                "broker_rss_mb": round((broker0 + broker_kb) / 1024, 1),
                "sim_rss_mb": [round(s.get("rss_kb", 0) / 1024, 1) for s in f.last.values()]}
    finally:
        f.close()


def flood_figure(n: int, seconds: float, say) -> dict:
    f = Fleet(n, scenario="idle", hb_s=30.0)
    plain = None
    try:
        f.start()
        f.connect(say)
        w = f.world
        plain = subprocess.Popen([sys.executable, "-c", PLAIN, "127.0.0.1", str(w.broker.cloud_port), *w.cloud],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert plain.stdout is not None and plain.stdin is not None
        assert plain.stdout.readline().strip() == "ready"

        def plain_count() -> int:
            plain.stdin.write("?\n")  # type: ignore[union-attr]
            plain.stdin.flush()  # type: ignore[union-attr]
            return int(plain.stdout.readline())  # type: ignore[union-attr]

        def committed() -> int:
            return sum(x.stats["committed"] for x in w.ingest)
        p0, c0, t0 = plain_count(), committed(), time.monotonic()
        f.flood(seconds, say=say)
        p1, c1, t1 = plain_count(), committed(), time.monotonic()
        dt = t1 - t0
        drained = f.drain(say, timeout=120.0)
        f.finish()
        rep = f.reconcile(check_sessions=False)
        return {"flood_devices": n, "flood_s": round(dt, 1), "plain_per_s": round((p1 - p0) / dt, 1),
                "committed_per_s": round((c1 - c0) / dt, 1),
                "committed_ratio": round((c1 - c0) / max(1, p1 - p0), 3),
                "flood_records": rep["records"], "drained": drained, "reconciled": rep["ok"],
                "reconcile_problems": rep["problems"][:5]}
    finally:
        if plain is not None:
            plain.stdin.close()  # type: ignore[union-attr]
            plain.wait(10)
        f.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=10000)
    ap.add_argument("--hold", type=float, default=45.0, help="seconds of heartbeats counted (> --hb)")
    ap.add_argument("--hb", type=float, default=30.0, help="heartbeat interval of every device")
    ap.add_argument("--flood-devices", type=int, default=200)
    ap.add_argument("--flood-s", type=float, default=60.0)
    ap.add_argument("--skip-devices", action="store_true")
    ap.add_argument("--skip-flood", action="store_true")
    a = ap.parse_args()

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
    out: dict = {"bench": "fleet"}
    if not a.skip_devices:
        out.update(devices_figure(a.devices, a.hold, a.hb, say))
    if not a.skip_flood:
        out.update(flood_figure(a.flood_devices, a.flood_s, say))
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
