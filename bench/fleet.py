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

- cluster (--cluster N): the same on the 3-node NATS cluster (host_tools/natscluster.py, every
  device given every node's MQTT port, ingest as JetStream competing consumers):
  `cluster_devices` connected and heartbeating over --hold, `cluster_broker_kb_per_device` (the
  three nodes' RSS added, per device); `cmd_p99_ms` (get_state to a random device every
  --cmd-every s during the hold, submit to verified result) and `cmd_p99_ratio` against
  `cmd_idle_p99_ms`, the same command on the same cluster with only --idle-devices devices on it,
  measured first; `failover_s`: node --kill-node killed -9 with the fleet connected, and every
  device at once journals one record: seconds until every device is online again and has the
  signed ack of that record (a round trip for each); then the ledger is reconciled against the
  journals. --subs (firmware | single) is what each device subscribes (host_tools/sim/fleetdevice.py
  SUBS), --ramp the devices connecting per second, --nats-mqtt extra settings of the nodes' mqtt
  block (JSON, e.g. '{"consumer_memory_storage": true}'); docs/cluster.md "Fleet figures".

    python bench/fleet.py [--devices 10000] [--hold 45] [--hb 30] [--flood-devices 200] [--flood-s 60]
    python bench/fleet.py --skip-devices --skip-flood --cluster 2000 [--subs single] [--ramp 50]

The last line is one JSON object. Goals (issue 14): devices >= 10,000; committed_ratio >= 0.8;
pg_committed_ratio >= 0.5 (--pg: the same flood with the ledger on a private PostgreSQL);
cluster_devices >= 2,000; cmd_p99_ratio <= 3; failover_s <= 30.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from host_tools.cloud.mqtt import BrokerSettings, CloudMQTT  # noqa: E402
from host_tools.sim.fleet import Fleet  # noqa: E402
from host_tools.sim.fleetworker import rss_kb as _proc_rss  # noqa: E402

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


def flood_figure(n: int, seconds: float, say, ledger_url: str | None = None) -> dict:
    f = Fleet(n, scenario="idle", hb_s=30.0, world_options={"ledger_url": ledger_url} if ledger_url else None)
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


def pg_flood_figure(n: int, seconds: float, say) -> dict:
    """The flood with the ledger (and the session service's tables) on a private PostgreSQL:
    pg_committed_per_s and pg_committed_ratio against the same run's plain subscriber."""
    from host_tools.pgserver import PgServer
    pg = PgServer().start()
    try:
        r = flood_figure(n, seconds, say, ledger_url=pg.new_database("fleet"))
    finally:
        pg.close()
    return {"pg_" + k: v for k, v in r.items() if k in ("committed_per_s", "committed_ratio", "plain_per_s",
                                                         "flood_records", "reconciled", "drained")}


CLUSTER_CLOUD = ("cloud", os.urandom(9).hex())


def _cluster_fleet(n: int, site, say, **kw) -> Fleet:
    opts = {"ingest_workers": 2, "ingest_hold_ms": 3000, "ingest_options": {"ack_wait_s": 5.0, "fetch_max": 100}}
    return Fleet(n, scenario="idle", broker=site, cloud=CLUSTER_CLOUD, world_options=opts, **kw)


def _cmd_probe(f: Fleet, stop: threading.Event, every: float, lat: list[float], failed: list[str]) -> None:
    """A get_state to a random device every `every` s until `stop`: submit to verified result."""
    rng = random.Random(7)
    cmd = f.world.svc.cmd
    while not stop.wait(every):
        d = rng.choice(f.devices)["id"]
        t = time.monotonic()
        try:
            r = cmd.send(d, "get_state", timeout=10.0, ttl=f.world.cmd_ttl)
        except Exception as e:  # noqa: BLE001 - counted, the probe goes on
            failed.append(f"{d}: {e}")
            continue
        if r.ok:
            lat.append(time.monotonic() - t)
        else:
            failed.append(f"{d}: {r.state.value}")


def _p99(xs: list[float]) -> float | None:
    from host_tools.sim.fleet import pct
    v = pct(xs, 99)
    return None if v is None else round(v * 1000, 1)


def cluster_figure(n: int, a, say) -> dict:
    from host_tools.natscluster import NatsCluster
    from host_tools.sim.fleetcluster import ClusterSite
    mqtt = json.loads(a.nats_mqtt) if a.nats_mqtt else {}
    out: dict = {"cluster_asked": n, "cluster_subs": a.subs, "cluster_ramp": a.ramp, "cluster_nats_mqtt": mqtt,
                 "load_start": [round(x, 1) for x in os.getloadavg()]}
    for attempt in range(3):  # a start on a loaded box may miss its MQTT warm-up: a fresh one
        c = NatsCluster(users=dict([CLUSTER_CLOUD]), cloud_users=(CLUSTER_CLOUD[0],), mqtt=mqtt)
        try:
            c.start(timeout=60.0)
            break
        except Exception as e:  # noqa: BLE001 - tried again, then raised
            c.close()
            say(f"cluster start: {str(e)[:200]}")
            if attempt == 2:
                raise
    site = ClusterSite(c)
    try:
        # the same command with almost nobody on the cluster
        idle = _cluster_fleet(a.idle_devices, site, say, hb_s=a.hb, subs=a.subs, ramp=a.ramp)
        try:
            idle.start()
            idle.connect(say)
            lat: list[float] = []
            failed: list[str] = []
            stop = threading.Event()
            t = threading.Thread(target=_cmd_probe, args=(idle, stop, a.cmd_every, lat, failed), daemon=True)
            t.start()
            idle.wait_for(lambda: len(lat) + len(failed) >= a.idle_cmds, a.idle_cmds * 2 * a.cmd_every + 30)
            stop.set()
            t.join(15)
            out.update(cmd_idle_p99_ms=_p99(lat), cmd_idle_p50_ms=_p50(lat), cmd_idle_n=len(lat),
                       cmd_idle_failed=len(failed))
        finally:
            idle.close()
        rss0 = [c.rss_kb(i) for i in range(len(c.nodes))]
        f = _cluster_fleet(n, site, say, hb_s=a.hb, subs=a.subs, ramp=a.ramp, retry_s=10.0)
        try:
            f.start()
            up = f.connect(say, timeout=max(60.0, 3 * n / max(1, a.ramp)))
            out.update(cluster_all_up=up, cluster_connect_s=f.connect_s,
                       cluster_refused_subs=f.total("refused_subs"),
                       cluster_connect_failed=f.counts.get("connect_failed", 0))
            seen: dict[str, float] = {}
            lock = threading.Lock()

            def on_hb(topic: str, payload: bytes) -> None:
                with lock:
                    seen[topic.split("/")[2]] = time.monotonic()
            sub = None
            for attempt in range(5):  # a loaded cluster's auth callout may time out a connect
                sub = CloudMQTT(site.cloud_settings(*CLUSTER_CLOUD))
                sub.subscribe("v1/dev/+/up/hb", on_hb, qos=0)
                try:
                    sub.connect()
                    break
                except Exception as e:  # noqa: BLE001 - tried again, then reported
                    sub.close()
                    sub = None
                    say(f"heartbeat subscriber: {e}")
                    time.sleep(2)
            if sub is None:  # the cluster does not take the cloud's connection: the run's figure
                out.update(cluster_devices=0, cluster_online=f.total("online"),
                           cluster_error="the cloud's subscriber could not connect to node 0",
                           load_hold=[round(x, 1) for x in os.getloadavg()])
                return out
            t_hold = time.monotonic()
            lat, failed = [], []
            stop = threading.Event()
            t = threading.Thread(target=_cmd_probe, args=(f, stop, a.cmd_every, lat, failed), daemon=True)
            t.start()
            f.wait_for(lambda: False, a.hold, say, every=5.0)
            stop.set()
            t.join(15)
            with lock:
                beating = sum(1 for v in seen.values() if v >= t_hold)
            sub.close()
            rss = [c.rss_kb(i) for i in range(len(c.nodes))]
            idle_p99 = out.get("cmd_idle_p99_ms")
            out.update(cluster_devices=beating, cluster_online=f.total("online"),
                       cluster_broker_kb_per_device=round((sum(rss) - sum(rss0)) / max(1, n), 1),
                       cluster_rss_mb=[round(x / 1024) for x in rss],
                       cmd_p99_ms=_p99(lat), cmd_p50_ms=_p50(lat), cmd_n=len(lat), cmd_failed=len(failed),
                       cmd_failed_sample=failed[:3],
                       cmd_p99_ratio=round(_p99(lat) / idle_p99, 2) if lat and idle_p99 else None,
                       load_hold=[round(x, 1) for x in os.getloadavg()])
            # failover: a node killed under the connected fleet; every device journals one record now
            k = a.kill_node
            on_k = c.nodes[k].varz().get("connections", 0)   # its MQTT and NATS clients
            t0 = time.monotonic()
            c.kill(k)
            f.send_all(("mark", "failover"))
            back = f.wait_for(lambda: f.total("online") >= n and f.total("marked") >= n, a.failover_timeout, say,
                              every=2.0)
            out.update(failover_s=round(time.monotonic() - t0, 1) if back else None, failover_ok=back,
                       failover_node=k, failover_devices_on_node=on_k,
                       failover_online=f.total("online"), failover_acked=f.total("marked"),
                       failover_broker_moves=f.counts.get("broker_moves", 0))
            say(f"failover: {back} in {out['failover_s']} s ({f.total('marked')}/{n} acked)")
            drained = f.drain(say, timeout=120.0)
            f.finish()
            rep = f.reconcile(check_sessions=False)
            out.update(cluster_drained=drained, cluster_reconciled=rep["ok"], cluster_records=rep["records"],
                       cluster_reconcile_problems=rep["problems"][:5], load_end=[round(x, 1) for x in os.getloadavg()])
        finally:
            f.close()
    finally:
        site.close()
        c.close()
    return out


def _p50(xs: list[float]) -> float | None:
    from host_tools.sim.fleet import pct
    v = pct(xs, 50)
    return None if v is None else round(v * 1000, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=10000)
    ap.add_argument("--hold", type=float, default=45.0, help="seconds of heartbeats counted (> --hb)")
    ap.add_argument("--hb", type=float, default=30.0, help="heartbeat interval of every device")
    ap.add_argument("--flood-devices", type=int, default=200)
    ap.add_argument("--flood-s", type=float, default=60.0)
    ap.add_argument("--skip-devices", action="store_true")
    ap.add_argument("--skip-flood", action="store_true")
    ap.add_argument("--pg", action="store_true", help="the flood again with the ledger on PostgreSQL (pg_*)")
    ap.add_argument("--cluster", type=int, default=0, help="devices on the 3-node NATS cluster (0: skip)")
    ap.add_argument("--subs", choices=("firmware", "single"), default="firmware")
    ap.add_argument("--ramp", type=int, default=50,
                    help="cluster devices connecting per second (whole devices per 0.1 s in each process: 15-29 give 20/s)")
    ap.add_argument("--nats-mqtt", default="", help="JSON: extra settings of the nodes' mqtt block")
    ap.add_argument("--idle-devices", type=int, default=10)
    ap.add_argument("--idle-cmds", type=int, default=200)
    ap.add_argument("--cmd-every", type=float, default=0.25)
    ap.add_argument("--kill-node", type=int, default=1)
    ap.add_argument("--failover-timeout", type=float, default=180.0)
    a = ap.parse_args()

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
    out: dict = {"bench": "fleet"}
    if not a.skip_devices:
        out.update(devices_figure(a.devices, a.hold, a.hb, say))
    if not a.skip_flood:
        out.update(flood_figure(a.flood_devices, a.flood_s, say))
    if a.pg:
        out.update(pg_flood_figure(a.flood_devices, a.flood_s, say))
    if a.cluster:
        out.update(cluster_figure(a.cluster, a, say))
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
