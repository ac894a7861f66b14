"""Session records into the ledger, and the signed cumulative ack sent only after the commit.

Self-contained: a private Mosquitto, an IngestWorker on the cloud listener, and a scripted device
(paho + the host codec, on the device listener) that publishes a short hash-chained session,
one duplicate, and listens for its acks. The ledger is a temporary SQLite file unless --db names
one (a path, sqlite:///path or postgresql://...).

    .venv/bin/python examples/ingest_worker.py [--db edgepay/ledger.db]
"""
import argparse
import os
import queue
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from host_tools.cloud.mqtt import BrokerSettings
from host_tools.broker import Broker
from host_tools.cloud.ingest import IngestWorker
from host_tools.cloud.ledger import GENESIS, chain_hash
from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.registry import Registry
from host_tools.protocol import open_message, seal, topic, verify_mac0

CLOUD_USER, CLOUD_PW = "cloud", "cloud-pw"
DEV, DEV_PW = "gate-001", "gate-001-pw"


def device_records(key: bytes, kid: bytes) -> list[bytes]:
    """What a device's journal holds: signed records, seq increasing, each linked to the last."""
    now = int(time.time())
    t = topic(DEV, "sess_open")  # every record type goes to v1/dev/<id>/up/rec
    fields = [
        {"type": "sess_open", "seq": 1, "sid": "s-1", "payer": "A12345", "t0": now - 5400},
        {"type": "sess_update", "seq": 2, "sid": "s-1", "amount": 500, "cur": "EUR", "t1": now - 1800},
        {"type": "sess_close", "seq": 3, "sid": "s-1", "payer": "A12345", "t0": now - 5400, "t1": now,
         "amount": 1000, "cur": "EUR"},
    ]
    out, prev = [], GENESIS
    for f in fields:
        raw = seal(key, kid, t, dict(f, prev=prev))
        out.append(raw)
        prev = chain_hash(verify_mac0(key, kid, t, raw))  # SHA-256(payload bytes)[:16]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", help="ledger URL (default: a temporary SQLite file)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="edgepay-ex-"))
    db = args.db or str(root / "ledger.db")

    with Broker(users={CLOUD_USER: CLOUD_PW, DEV: DEV_PW}, cloud_users=(CLOUD_USER,)) as broker:
        registry = Registry(root / "registry.db")
        dev = registry.add(DEV, os.urandom(32), "gate", "sim-gate")
        ledger = open_ledger(db)

        def on_commit(records):  # after the commit and the acks; never delays an ack
            for r in records:
                print(f"committed {r.device} seq {r.seq} {r.type_name} sid={r.sid} amount={r.amount}")

        worker = IngestWorker(registry, ledger, BrokerSettings("127.0.0.1", broker.cloud_port, CLOUD_USER, CLOUD_PW),
                              group="ingest", batch_ms=5, on_commit=on_commit).start()

        # the scripted device: its own credentials on the device listener (username = client id)
        acks: queue.Queue = queue.Queue()
        d = paho.Client(CallbackAPIVersion.VERSION2, client_id=DEV)
        d.username_pw_set(DEV, DEV_PW)
        d.on_message = lambda c, u, m: acks.put(open_message(dev.key, dev.kid, m.topic, m.payload))
        d.connect("127.0.0.1", broker.port)
        d.subscribe(topic(DEV, "ack"), qos=1)
        d.loop_start()
        time.sleep(0.3)
        try:
            recs = device_records(dev.key, dev.kid)
            for raw in recs + [recs[1]]:  # the last one again: a duplicate, acked again, stored once
                d.publish(topic(DEV, "sess_open"), raw, qos=1).wait_for_publish(5)
                ack = acks.get(timeout=5)  # PUBACK meant nothing for money: this is the receipt
                print(f"  ack upto={ack['upto']} (signed, seq {ack['seq']})")
            time.sleep(0.2)
            print("stats:", {k: v for k, v in worker.stats.items() if v and k != "refused"})
            for s in ledger.sessions(DEV):
                print(f"session {s.sid}: {s.state} {s.amount} {s.currency} (records {s.open_seq}..{s.close_seq})")
            print("totals:", ledger.totals())
            rec = ledger.reconcile(DEV, [(i + 1, raw) for i, raw in enumerate(recs)])
            print("reconciled with the device's journal:", rec.ok)
        finally:
            d.loop_stop()
            d.disconnect()
            worker.stop()
            ledger.close()
            registry.close()


if __name__ == "__main__":
    main()
