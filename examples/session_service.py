"""A pay-after vending session end to end: authorise, open, take, close, ledger, settle.

Self-contained: a private Mosquitto; the cloud side (SessionService with the ScriptedProvider test
double, an IngestWorker feeding the ledger and settling through on_commit); a simulated vending
cabinet (boards/sim-vending.json) whose door, QR scanner and RFID reader are driven from here.
--ledger PATH keeps the ledger (SQLite) for `edgepay ledger --db PATH`.

    .venv/bin/python examples/session_service.py [--ledger edgepay/ledger.db]
"""
import argparse
import tempfile
import time
from pathlib import Path

from host_tools.cloud.mqtt import BrokerSettings
from host_tools.broker import Broker
from host_tools.cloud.ingest import IngestWorker
from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.payafter import ScriptedProvider
from host_tools.cloud.registry import Registry
from host_tools.cloud.sessions import SessionService
from host_tools.sim.peripherals import SimPeripherals
from host_tools.sim.provision import provision_sim

CLOUD_USER, CLOUD_PW = "cloud", "cloud-pw"
DEV = "vend-001"
# set_tariff args (protocol/FEES.md): version 1, CNY, a price list [sku, unit price in fen]
TARIFF = {1: 1, 2: "CNY", 8: [["cola", 350], ["chips", 600], ["water", 200]]}


def wait_until(pred, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ledger", help="SQLite ledger file to keep (default: a temporary one)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="edgepay-ex-"))
    if args.ledger:
        Path(args.ledger).parent.mkdir(parents=True, exist_ok=True)

    with Broker(users={CLOUD_USER: CLOUD_PW}, cloud_users=(CLOUD_USER,)) as broker:
        registry = Registry(root / "registry.db")
        ledger = open_ledger(args.ledger or str(root / "ledger.db"))
        provider = ScriptedProvider(default_credit=100_000)  # every payer trusted up to 1000.00
        svc = SessionService(registry, provider, BrokerSettings("127.0.0.1", broker.cloud_port, CLOUD_USER, CLOUD_PW)).start()
        worker = IngestWorker(registry, ledger, BrokerSettings("127.0.0.1", broker.cloud_port, CLOUD_USER, CLOUD_PW),
                              on_commit=svc.on_commit).start()
        hw = SimPeripherals()
        board = provision_sim(broker, registry, root, DEV, board_file="sim-vending", peripherals=hw)
        try:
            board.start()
            board.wait_for("online", timeout=30)
            hw.wait_connected(10)
            assert svc.cmd.sync_time(DEV)
            board.wait_for("time set", timeout=5)
            cmd = svc.set_tariff(DEV, TARIFF, wait=True)  # validated by fees.validate, then signed
            print("tariff:", cmd.state.value)

            svc.bind("user-7", "acct-7")  # the QR token user-7 belongs to pay-after account acct-7
            hw.tag("rfid", "cola#1,cola#2,chips#1,water#1")  # the cabinet's stock (RFID inventory)
            time.sleep(0.3)
            hw.scan("qr", "user-7")  # auth_req -> provider create+start -> signed `auth` granted
            hw.wait_output("door_lock", "unlocked", 10)
            print("door unlocked for user-7")
            hw.set_input("door", 1)
            time.sleep(0.3)
            hw.tag("rfid", "cola#2,water#1")  # a cola and the chips were taken
            time.sleep(0.3)
            hw.set_input("door", 0)  # door shut: sess_close (journaled, sent, committed, acked)
            hw.wait_output("door_lock", "locked", 5)

            wait_until(lambda: any(s.state == "closed" for s in ledger.sessions(DEV)), what="closed session")
            s = ledger.sessions(DEV)[0]
            print(f"ledger: {s.sid} {s.state} {s.amount} {s.currency} lines={s.lines}")
            wait_until(lambda: svc.settle_status(DEV, s.sid)["status"].startswith("settled"), what="settled")
            print("settle:", svc.settle_status(DEV, s.sid))
            order = provider.get(svc.settle_status(DEV, s.sid)["order_no"])
            print("order:", order.order_no, order.state.value, order.amount, order.cur,
                  "via", " -> ".join(t.to.value for t in order.history))
            print("flags:", svc.flags(DEV))
        finally:
            board.kill()
            hw.close()
            worker.stop()
            svc.stop()
            ledger.close()
            registry.close()


if __name__ == "__main__":
    main()
