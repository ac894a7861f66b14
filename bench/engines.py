"""The two cluster engines of issue 14 §2 on the same protocol-level fleet run: NATS 2.x (MQTT +
JetStream, host_tools/natscluster.py) and RabbitMQ 3.10 (MQTT plugin, host_tools/rabbitcluster.py),
3 nodes each on this box, one after the other, the same fleet (host_tools/sim/fleet.py through
fleetcluster.ClusterSite: every device given every node's MQTT port, tried in turn).

Per engine:
- `start_s`: the cluster's start to ready (RabbitMQ: 3 nodes booted, 2 joined, users imported);
- `devices`: connected with a trusted clock (`connect_s`), and `kb_per_device`: the 3 nodes' RSS
  after the fleet connected, over before it, per device (a device holds a persistent session with
  a QoS 1 and a QoS 0 subscription, and a retained status);
- `committed_per_s`: every device journals records as fast as the broker takes them (at most
  `cap` unacked each) for FLOOD_S s; records committed by ingest into SQLite per second from the
  flood's start until the last is acked. Ingest is one worker on both: on NATS a durable JetStream
  consumer of the replicated stream EDGEPAY_UP (acks to devices by core NATS), on RabbitMQ a plain
  MQTT QoS 1 subscriber (the MQTT plugin has no shared subscriptions and ingest has no AMQP feed
  yet: a RabbitMQ counterpart of the JetStream feed would be a quorum queue bound to amq.topic);
- `failover_s`: node 1 killed with -9, then every device journals records for 1 s: from the kill
  until every device is online again and every journal is empty (acks flowing); `online_s`: until
  every device is online;
- what the kill lost: `retained_seen` (devices whose retained status a fresh cloud client gets on
  node 0 and on node 2 with one exact-topic subscription each, before the kill and after), the
  QoS 1 session state the survivors hold (`qos1_sessions`: RabbitMQ's quorum queues, NATS's
  consumers on $MQTT_msgs), and the reconciliation (`lost`: records journaled and never
  committed; `duplicates`: records seen twice by ingest; never a second ledger row).

    .venv/bin/python bench/engines.py            # EDGEPAY_ENGINES_N devices (200), FLOOD_S 8 s
    EDGEPAY_ENGINES=rabbitmq EDGEPAY_ENGINES_N=500 .venv/bin/python bench/engines.py   # one engine
    EDGEPAY_ENGINES=nats-lite ...   # NATS with QoS 1 consumers in memory, one replica
    EDGEPAY_ENGINES=nats-tuned ...  # memory consumers, js_api_timeout 30 s, devices ramped at 20/s

EDGEPAY_ENGINES_CONNECT_S bounds the wait for every device to be online with a trusted clock (N x
1.5 s, at least 120 s); the run goes on with whoever made it. An engine that collapsed (NATS at
500 devices under load, docs/engines.md) can hold the cloud side's shutdown for minutes.

Last line: one JSON object {"devices": N, "nats": {...}, "rabbitmq": {...}}.
"""
from __future__ import annotations

import json
import os
import queue
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from host_tools.broker import BrokerError  # noqa: E402

N = int(os.environ.get("EDGEPAY_ENGINES_N", "200"))
FLOOD_S = float(os.environ.get("EDGEPAY_ENGINES_FLOOD_S", "8"))
CAP = 20
CONNECT_S = float(os.environ.get("EDGEPAY_ENGINES_CONNECT_S", str(max(120.0, N * 1.5))))
CLOUD = ("cloud", os.urandom(9).hex())


def say(line: str) -> None:
    print(line, flush=True)


def cluster_for(engine: str):
    if engine == "nats":
        from host_tools.natscluster import NatsCluster
        return NatsCluster(users=dict([CLOUD]), cloud_users=(CLOUD[0],))
    if engine == "nats-lite":
        return _tuned_nats({"consumer_replicas": 1, "consumer_memory_storage": True})
    if engine == "nats-tuned":   # bench/fleet.py --cluster's recipe (docs/cluster.md), with a 20/s ramp
        return _tuned_nats({"consumer_memory_storage": True, "js_api_timeout": "30s"})
    from host_tools.rabbitcluster import RabbitCluster
    return RabbitCluster(users=dict([CLOUD]), cloud_users=(CLOUD[0],))


def _tuned_nats(mqtt: dict):
    """NATS with its MQTT block changed (NatsCluster(mqtt=...), docs/cluster.md "Subscriptions"):
    nats-lite, QoS 1 consumers in memory and one replica (which 2.15 ignores: consumers follow the
    stream's); nats-tuned, memory consumers and a 30 s js_api_timeout, so a SUBSCRIBE that waits
    for its consumer is not refused after 5 s."""
    from host_tools.natscluster import NatsCluster
    return NatsCluster(users=dict([CLOUD]), cloud_users=(CLOUD[0],), mqtt=mqtt)


def rss(c) -> list[int]:
    return [c.rss_kb(i) if c.nodes[i].proc and c.nodes[i].proc.poll() is None else 0 for i in range(len(c.nodes))]


def retained_seen(port: int, ids: list[str], wait: float = 3.0) -> int:
    """Devices whose retained status a fresh cloud connection to `port` is given, one exact-topic
    subscription each (RabbitMQ gives none to a wildcard)."""
    got: set[str] = set()
    q: queue.Queue = queue.Queue()
    m = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"cloud-ret-{os.urandom(3).hex()}", protocol=paho.MQTTv311)
    m.username_pw_set(*CLOUD)
    m.on_connect = lambda c, u, f, rc, p: q.put(rc.value)
    m.on_message = lambda c, u, msg: got.add(msg.topic.split("/")[2]) if msg.retain else None
    m.connect("127.0.0.1", port, keepalive=30)
    m.loop_start()
    try:
        if q.get(timeout=10) != 0:
            return -1
        for i in range(0, len(ids), 100):
            m.subscribe([(f"v1/dev/{d}/up/status", 0) for d in ids[i:i + 100]])
        time.sleep(wait)
        return len(got)
    except queue.Empty:
        return -1
    finally:
        m.disconnect()
        m.loop_stop()


def qos1_sessions(engine: str, c, node: int) -> int | None:
    """The QoS 1 subscription state the cluster holds, asked of a surviving node."""
    try:
        if engine == "rabbitmq":
            return sum(1 for x in c.queues(node) if x["name"].endswith("qos1") and x.get("type") == "quorum"
                       and x.get("leader") not in (None, "", "undefined"))
        url = f"http://127.0.0.1:{c.nodes[node].http_port}/jsz?accounts=true&streams=true&consumers=true"
        with urllib.request.urlopen(url, timeout=5) as r:
            js = json.loads(r.read())
        n = 0
        for acc in js.get("account_details") or []:
            for st in acc.get("stream_detail") or []:
                if st.get("name") == "$MQTT_msgs":
                    n += len(st.get("consumer_detail") or [])
        return n
    except Exception as e:  # noqa: BLE001 - a figure missed is reported as None
        say(f"qos1_sessions({engine}): {type(e).__name__}: {e}")
        return None


def run_engine(engine: str) -> dict:
    from host_tools.sim.fleet import Fleet
    from host_tools.sim.fleetcluster import ClusterSite
    out: dict = {"engine": engine}
    c = cluster_for(engine)
    try:
        t = time.monotonic()
        c.start(timeout=90.0)
        out["start_s"] = round(time.monotonic() - t, 1)
        time.sleep(5.0)   # a booted VM settles (RabbitMQ's RSS falls by MBs after its start)
        rss0 = rss(c)
        site = ClusterSite(c)
        if engine.startswith("nats"):
            opts = {"ingest_workers": 1, "ingest_options": {"ack_wait_s": 2.0, "fetch_max": 200}}
        else:
            opts = {"ingest_workers": 0}   # one plain subscriber, below
        # ramp: devices connecting per second (Fleet's default 500: a burst); nats-tuned 20/s
        f = Fleet(N, broker=site, cloud=CLOUD, seconds=10.0, world_options=opts,
                  ramp=20 if engine == "nats-tuned" else 500)
        with f:
            w = f.world
            if engine == "rabbitmq":
                from host_tools.cloud.ingest import IngestWorker
                w.ingest.append(IngestWorker(w.registry, w.ledger, w.cloud_broker, group=None,
                                             on_commit=w.svc.on_commit).start())
            ok = f.connect(say, CONNECT_S)
            out["devices"] = f.total("online")
            out["trusted"] = f.total("trusted")   # online with a trusted clock: only those journal records
            out["connect_s"] = f.connect_s
            out["provision_s"] = round(f.provision_s, 1)
            time.sleep(2.0)
            rss1 = rss(c)
            out["rss_kb"] = {"before": rss0, "connected": rss1}
            out["kb_per_device"] = round((sum(rss1) - sum(rss0)) / max(1, N), 1)
            if not ok:
                out["problem"] = f"{f.total('online')}/{N} online, {f.total('trusted')} with a trusted clock"

            # records/s through ingest
            c0 = sum(x.stats["committed"] for x in w.ingest)
            t0 = time.monotonic()
            f.flood(FLOOD_S, cap=CAP, say=say)
            sealed = f.counts.get("records", 0)
            drained = f.wait_for(lambda: f.total("depth") == 0, 180.0, say)
            t1 = time.monotonic()
            c1 = sum(x.stats["committed"] for x in w.ingest)
            out["flood"] = {"seconds": FLOOD_S, "cap": CAP, "sealed": sealed, "sealed_per_s": round(sealed / FLOOD_S, 1),
                            "committed": c1 - c0, "drain_s": round(t1 - t0 - FLOOD_S, 1), "drained": drained}
            out["committed_per_s"] = round((c1 - c0) / (t1 - t0), 1)
            say(f"{engine}: flood {out['flood']} -> {out['committed_per_s']}/s committed")

            # what a node kill costs
            ids = [d["id"] for d in f.devices]
            time.sleep(1.0)
            out["retained_seen"] = {"before": {"n0": retained_seen(c.nodes[0].mqtt_port, ids),
                                               "n2": retained_seen(c.nodes[2].mqtt_port, ids)}}
            out["qos1_sessions"] = {"before": qos1_sessions(engine, c, 0)}
            moves0 = f.counts.get("broker_moves", 0)
            cuts0 = f.counts.get("disconnects", 0)
            t_kill = time.monotonic()
            c.kill(1)
            f.send_all(("flood", 1.0, 1))
            online_at: list[float | None] = [None]

            def back() -> bool:
                # the workers report once a second: "online" counts only from a report that has seen
                # the cut (its disconnects), so online_s and failover_s are good to about 1 s
                cut = f.counts.get("disconnects", 0) > cuts0
                if online_at[0] is None and cut and f.total("online") >= N:
                    online_at[0] = time.monotonic()
                return (time.monotonic() - t_kill > 1.2 and online_at[0] is not None
                        and f.total("online") >= N and f.total("depth") == 0)
            recovered = f.wait_for(back, 120.0, say, every=0.5)
            out["failover_s"] = round(time.monotonic() - t_kill, 1) if recovered else None
            out["online_s"] = round(online_at[0] - t_kill, 1) if online_at[0] else None
            out["broker_moves"] = f.counts.get("broker_moves", 0) - moves0
            out["cut_by_kill"] = f.counts.get("disconnects", 0) - cuts0
            time.sleep(1.0)
            out["retained_seen"]["after"] = {"n0": retained_seen(c.nodes[0].mqtt_port, ids),
                                             "n2": retained_seen(c.nodes[2].mqtt_port, ids)}
            out["qos1_sessions"]["after"] = qos1_sessions(engine, c, 0)
            say(f"{engine}: failover {out['failover_s']} s (online {out['online_s']} s), "
                f"retained {out['retained_seen']}, qos1 sessions {out['qos1_sessions']}")

            f.finish()
            rep = f.reconcile(check_sessions=False)
            ing = [x.stats for x in w.ingest]
            out["records"] = rep["records"]
            out["committed"] = sum(s["committed"] for s in ing)
            out["lost"] = rep["records"] - rep["ingest"]["committed"]
            out["problems"] = rep["problems"][:5]
            out["duplicates"] = rep["ingest"]["duplicates"]
            out["reconciled"] = rep["ok"]
    finally:
        c.close()
    return out


def main() -> int:
    results: dict = {"devices": N, "flood_s": FLOOD_S, "cap": CAP}
    for engine in os.environ.get("EDGEPAY_ENGINES", "nats,rabbitmq").split(","):
        try:
            results[engine] = run_engine(engine)
        except BrokerError as e:
            results[engine] = {"skipped": f"{type(e).__name__}: {e}"[:300]}
        say(f"{engine}: {json.dumps(results[engine])}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
