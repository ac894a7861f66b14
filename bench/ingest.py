"""Ingest throughput: signed records through Mosquitto into the ledger, with acks, against a raw
paho subscriber receiving the same stream in the same run.

N devices x M records (default 20 x 250), correctly signed and chained, are published QoS 1 as
fast as one paho client can. Two subscribers take the same stream at the same time, each in its
own process: an ingest worker (`python -m host_tools.cloud.ingest`: verify, dedupe, chain check,
batched commit into SQLite WAL synchronous=FULL, then a signed ack) and a raw paho subscriber that
only counts. End to end, from the first publish:
- raw_per_s: until the raw subscriber has received the last message;
- committed_per_s: until the last device's ack {upto: its last seq} has arrived (so everything is
  committed and acknowledged).
With PostgreSQL installed the stream is sent again (a fresh private cluster, fsync on) into a PG
ledger: pg_committed_per_s. The last line is one JSON object; goal ratio >= 0.5.

    python bench/ingest.py [--devices 20] [--records 250] [--batch-max 500] [--batch-ms 5]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from _kit import CLOUD, broker, workdir  # noqa: E402
from host_tools.cloud.ledger import GENESIS, chain_hash
from host_tools.cloud.ledger_open import open_ledger  # noqa: E402
from host_tools.cloud.registry import Registry  # noqa: E402
from host_tools.protocol import build_mac0, decode_payload, encode_payload, make_kid, topic, verify_mac0  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _nodelay(client, userdata, sock):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def client(port: int, v5: bool = True) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5 if v5 else paho.MQTTv311)
    c.username_pw_set(*CLOUD)
    c.on_socket_open = _nodelay
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    return c


def make_stream(reg: Registry, devices: int, records: int) -> tuple[list[tuple[str, bytes]], dict[str, int], dict]:
    """Signed chained records, interleaved device by device; the last seq and key of each device."""
    per_dev, last, keys = [], {}, {}
    for i in range(devices):
        dev = f"bench-{i:03d}"
        key = os.urandom(32)
        reg.add(dev, key, "vending", "bench")
        keys[dev] = key
        t, kid, prev, out = topic(dev, "sess_open"), make_kid(dev, 1), GENESIS, []
        for j in range(records):
            sid = f"s{j // 3}"
            kind = ("sess_open", "sess_update", "sess_close")[j % 3]
            msg = {"type": kind, "seq": j + 1, "prev": prev, "sid": sid}
            if kind == "sess_open":
                msg.update(payer=f"payer-{i}", t0=1_700_000_000 + j, slot=1)
            elif kind == "sess_update":
                msg.update(amount=50, cur="EUR", t1=1_700_000_060 + j)
            else:
                msg.update(payer=f"payer-{i}", t0=1_700_000_000 + j, slot=1, amount=120, cur="EUR",
                           t1=1_700_000_900 + j, lines=[["snack", 2, 60]])
            payload = encode_payload(msg, t)
            out.append((t, build_mac0(key, kid, t, payload)))
            prev = chain_hash(payload)
        per_dev.append(out)
        last[dev] = records
    stream = [per_dev[i][j] for j in range(records) for i in range(devices)]
    return stream, last, keys


def raw_subscriber(port: int, n: int) -> None:
    """Subprocess mode: count n messages of v1/dev/+/up/rec, print the wall time of the last."""
    done = threading.Event()
    count = [0]
    last = [0.0]

    def on_message(c, u, m):
        count[0] += 1
        if count[0] >= n:
            last[0] = time.time()
            done.set()
    c = client(port)
    c.on_message = on_message
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("v1/dev/+/up/rec", 1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    time.sleep(0.3)
    print("ready", flush=True)
    done.wait(300)
    print(json.dumps({"last": last[0], "count": count[0]}), flush=True)
    c.disconnect()
    c.loop_stop()


def run_once(b, reg_path: str, db_url: str, stream, last_seq: dict, keys: dict, args, with_raw: bool) -> dict:
    env = {**os.environ, "EDGEPAY_MQTT_PASSWORD": CLOUD[1]}
    worker = subprocess.Popen(
        [sys.executable, "-m", "host_tools.cloud.ingest", "--port", str(b.cloud_port), "--user", CLOUD[0],
         "--registry", reg_path, "--db", db_url, "--batch-max", str(args.batch_max),
         "--batch-ms", str(args.batch_ms)], cwd=str(ROOT), env=env, stdout=subprocess.PIPE, text=True)
    raw = None
    try:
        assert worker.stdout.readline().strip() == "ready", "worker did not start"
        if with_raw:
            raw = subprocess.Popen([sys.executable, __file__, "--raw-subscriber", str(b.cloud_port), str(len(stream))],
                                   cwd=str(ROOT), stdout=subprocess.PIPE, text=True)
            assert raw.stdout.readline().strip() == "ready", "raw subscriber did not start"
        # the ack listener: done when every device has an ack covering its last record
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
        acks = client(b.cloud_port)
        acks.on_message = on_ack
        acks.on_connect = lambda cl, u, f, rc, p: cl.subscribe("v1/dev/+/dn/ack", 1)
        acks.connect("127.0.0.1", b.cloud_port)
        acks.loop_start()
        pub = client(b.cloud_port)
        pub.connect("127.0.0.1", b.cloud_port)
        pub.loop_start()
        time.sleep(0.5)
        t0 = time.time()
        infos = [pub.publish(t, data, qos=1) for t, data in stream]
        for info in infos[-50:]:
            info.wait_for_publish(60)
        t_pub = time.time()
        ok = all_acked.wait(300)
        result = {"t0": t0, "published_s": t_pub - t0,
                  "committed_s": (t_acked[0] - t0) if ok else None}
        if raw is not None:
            out = json.loads(raw.stdout.readline())
            raw.wait(30)
            result["raw_s"] = out["last"] - t0 if out["count"] >= len(stream) else None
        for c in (pub, acks):
            c.disconnect()
            c.loop_stop()
        return result
    finally:
        worker.terminate()
        try:
            out, _ = worker.communicate(timeout=30)
            lines = [x for x in out.strip().splitlines() if x.startswith("{")]
            if lines:
                stats = json.loads(lines[-1])
                print(f"worker stats ({db_url.split()[0][:40]}): committed={stats['committed']} "
                      f"duplicates={stats['duplicates']} batches={stats['batches']} acks={stats['acks']} "
                      f"refused={stats['refused']} gaps={stats['gaps']}", file=sys.stderr)
        except subprocess.TimeoutExpired:
            worker.kill()
        if raw is not None and raw.poll() is None:
            raw.kill()


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--raw-subscriber":
        raw_subscriber(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--records", type=int, default=250)
    ap.add_argument("--batch-max", type=int, default=500)
    ap.add_argument("--batch-ms", type=float, default=5.0)
    ap.add_argument("--no-pg", action="store_true")
    args = ap.parse_args()
    wd = workdir()
    b = broker()
    reg_path = str(wd / "registry.db")
    reg = Registry(reg_path)
    stream, last_seq, keys = make_stream(reg, args.devices, args.records)
    n = len(stream)
    out: dict = {"devices": args.devices, "records": args.records, "messages": n}
    try:
        r = run_once(b, reg_path, f"sqlite:///{wd / 'ledger.db'}", stream, last_seq, keys, args, with_raw=True)
        led = open_ledger(f"sqlite:///{wd / 'ledger.db'}")
        assert led.count() == n, f"ledger has {led.count()} of {n}"
        led.close()
        out["committed_per_s"] = round(n / r["committed_s"], 1) if r["committed_s"] else 0.0
        out["raw_per_s"] = round(n / r["raw_s"], 1) if r.get("raw_s") else 0.0
        out["ratio"] = round(out["committed_per_s"] / out["raw_per_s"], 3) if out["raw_per_s"] else 0.0
        out["publish_per_s"] = round(n / r["published_s"], 1)
        if not args.no_pg:
            try:
                from host_tools.pgserver import PgServer, PgUnavailable
                try:
                    pg = PgServer(fast=False).start()
                except PgUnavailable as e:
                    print(f"PostgreSQL unavailable: {e}", file=sys.stderr)
                    pg = None
                if pg is not None:
                    try:
                        url = pg.new_database("bench")
                        r = run_once(b, reg_path, url, stream, last_seq, keys, args, with_raw=False)
                        led = open_ledger(url)
                        assert led.count() == n, f"PG ledger has {led.count()} of {n}"
                        led.close()
                        out["pg_committed_per_s"] = round(n / r["committed_s"], 1) if r["committed_s"] else 0.0
                    finally:
                        pg.close()
            except ImportError as e:
                print(f"psycopg unavailable: {e}", file=sys.stderr)
    finally:
        reg.close()
        b.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
