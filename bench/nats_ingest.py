"""Ingest throughput on the 3-node NATS cluster: competing consumers on JetStream against the plain
MQTT subscriber, in the same run, on the same stream of records.

N devices x M records (default 20 x 250), signed and chained (bench/ingest.py make_stream), are
published QoS 1 by one paho MQTT 3.1.1 client to node 0's MQTT listener; every run starts on a fresh
SQLite ledger (WAL, synchronous=FULL) and a fresh stream. Each run's figure is end to end, from the
first publish until every device's ack {upto: its last seq} has arrived at an MQTT listener on node
2 (everything committed and acknowledged):
- plain_per_s: one `python -m host_tools.cloud.ingest --engine nats --group ''` (a plain MQTT
  subscriber: what ingest on NATS could do before, one worker, no work sharing);
- js1_per_s, js2_per_s: 1 and 2 worker processes in group `ingest` on the JetStream stream
  EDGEPAY_UP (R3), acks to devices by core NATS (the default);
- js1_mqtt_acks_per_s: 1 worker, acks over MQTT QoS 1 instead (the other choice, for the record);
- js1_ratio, js2_ratio: against plain_per_s.
The last line is one JSON object. Skipped (a JSON line saying why) without nats-server / nats-py.

    python bench/nats_ingest.py [--devices 20] [--records 250] [--batch-max 500] [--batch-ms 5]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _kit import CLOUD, workdir  # noqa: E402
from ingest import client, make_stream  # noqa: E402  (bench/ingest.py)

from host_tools.broker import BrokerError  # noqa: E402
from host_tools.cloud.ledger_open import open_ledger  # noqa: E402
from host_tools.cloud.registry import Registry  # noqa: E402
from host_tools.protocol import decode_payload, make_kid, verify_mac0  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def drop_stream(cluster) -> None:
    import nats
    from nats.js.errors import NotFoundError

    async def go():
        nc = await nats.connect(list(cluster.nats_urls()), user=CLOUD[0], password=CLOUD[1])
        try:
            await nc.jetstream().delete_stream("EDGEPAY_UP")
        except NotFoundError:
            pass
        finally:
            await nc.close()
    asyncio.run(go())


def run_once(cluster, reg_path: str, db_path: Path, stream, last_seq: dict, keys: dict, args,
             workers: int, group: str, acks: str = "nats") -> dict:  # acks: ignored by the plain MQTT path
    drop_stream(cluster)
    env = {**os.environ, "EDGEPAY_MQTT_PASSWORD": CLOUD[1]}
    db_url = f"sqlite:///{db_path}"
    open_ledger(db_url).close()   # the schema, before workers race to make it
    procs = []
    try:
        for i in range(workers):
            p = subprocess.Popen(
                [sys.executable, "-m", "host_tools.cloud.ingest", "--engine", "nats",
                 "--port", str(cluster.nodes[i % 3].mqtt_port), "--servers", ",".join(cluster.nats_urls()),
                 "--user", CLOUD[0], "--registry", reg_path, "--db", db_url, "--group", group,
                 "--acks-via", acks, "--batch-max", str(args.batch_max), "--batch-ms", str(args.batch_ms),
                 *(["--hold-ms", str(args.hold_ms)] if args.hold_ms is not None else []), "--prefetch", str(args.prefetch)],
                cwd=str(ROOT), env=env, stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", "worker did not start"
        acked: dict[str, int] = {}
        all_acked = threading.Event()
        t_acked = [0.0]

        def on_ack(c, u, m):
            dev = m.topic.split("/")[2]
            ack = decode_payload(verify_mac0(keys[dev], make_kid(dev, 1), m.topic, m.payload), m.topic)
            if ack["upto"] > acked.get(dev, 0):
                acked[dev] = ack["upto"]
                if len(acked) == len(last_seq) and all(acked[d] >= s for d, s in last_seq.items()):
                    t_acked[0] = time.time()
                    all_acked.set()
        subscribed = threading.Event()
        acks_c = client(cluster.nodes[2].mqtt_port, v5=False)
        acks_c.on_message = on_ack
        acks_c.on_subscribe = lambda *a: subscribed.set()
        acks_c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("v1/dev/+/dn/ack", 1)
        acks_c.connect("127.0.0.1", cluster.nodes[2].mqtt_port)
        acks_c.loop_start()
        pub = client(cluster.nodes[0].mqtt_port, v5=False)
        pub.connect("127.0.0.1", cluster.nodes[0].mqtt_port)
        pub.loop_start()
        assert subscribed.wait(20), "ack listener not subscribed"
        time.sleep(0.5)
        t0 = time.time()
        infos = [pub.publish(t, data, qos=1) for t, data in stream]
        for info in infos[-50:]:
            info.wait_for_publish(120)
        t_pub = time.time()
        ok = all_acked.wait(300)
        for c in (pub, acks_c):
            c.disconnect()
            c.loop_stop()
        led = open_ledger(db_url)
        count = led.count()
        led.close()
        assert count == len(stream), f"ledger has {count} of {len(stream)}"
        return {"published_s": t_pub - t0, "committed_s": (t_acked[0] - t0) if ok else None}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                out, _ = p.communicate(timeout=30)
                lines = [x for x in out.strip().splitlines() if x.startswith("{")]
                if lines:
                    s = json.loads(lines[-1])
                    print(f"  worker ({group or 'plain'}, acks {acks}): committed={s['committed']} duplicates="
                          f"{s['duplicates']} batches={s['batches']} gaps={s['gaps']} stream={s.get('stream')}",
                          file=sys.stderr)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--records", type=int, default=250)
    ap.add_argument("--batch-max", type=int, default=500)
    ap.add_argument("--batch-ms", type=float, default=5.0)
    ap.add_argument("--hold-ms", type=float, default=None, help="default: the worker's (3000 on JetStream)")
    ap.add_argument("--prefetch", type=int, default=500)
    ap.add_argument("--only", default="", help="comma-separated runs (plain,js1,js2,js1_mqtt_acks)")
    args = ap.parse_args()
    try:
        import nats  # noqa: F401

        from host_tools.natscluster import NatsCluster
        cluster = NatsCluster(users={CLOUD[0]: CLOUD[1]}, cloud_users=(CLOUD[0],))
    except (ImportError, BrokerError) as e:
        print(json.dumps({"skipped": f"{type(e).__name__}: {e}"}))
        return 0
    wd = workdir()
    reg_path = str(wd / "registry.db")
    reg = Registry(reg_path)
    stream, last_seq, keys = make_stream(reg, args.devices, args.records)
    n = len(stream)
    out: dict = {"devices": args.devices, "records": args.records, "messages": n, "nodes": 3}
    runs = {"plain": (1, "", "mqtt"), "js1": (1, "ingest", "nats"), "js2": (2, "ingest", "nats"),
            "js1_mqtt_acks": (1, "ingest", "mqtt")}
    if args.only:
        runs = {k: v for k, v in runs.items() if k in args.only.split(",") or k == "plain"}
    try:
        cluster.start()
        for i, (name, (workers, group, acks)) in enumerate(runs.items()):
            r = run_once(cluster, reg_path, wd / f"ledger-{i}.db", stream, last_seq, keys, args, workers, group, acks)
            out[f"{name}_per_s"] = round(n / r["committed_s"], 1) if r["committed_s"] else 0.0
            if name == "plain":
                out["publish_per_s"] = round(n / r["published_s"], 1)
        for name in [k for k in ("js1", "js2") if k in runs]:
            out[f"{name}_ratio"] = round(out[f"{name}_per_s"] / out["plain_per_s"], 3) if out["plain_per_s"] else 0.0
    finally:
        reg.close()
        cluster.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
