"""Chaos (issue: never lose a money record): 3 devices on the MicroPython VM journal 500 sessions
while the broker is SIGKILLed and restarted every few seconds, a TCP proxy drops their
connections, and one of 2 ingest workers is SIGKILLed mid-batch and restarted. At the end the
ledger holds exactly what the devices committed: nothing lost, nothing twice. SQLite and PostgreSQL.
"""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from host_tools.cloud.mqtt import BrokerSettings
from host_tools.broker import Broker
from host_tools.cloud.commands import CommandClient
from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.registry import Registry
from host_tools.sim.netfault import FaultyProxy
from host_tools.sim.provision import provision_sim

ROOT = Path(__file__).resolve().parents[1]
SESSIONS = int(os.environ.get("EDGEPAY_CHAOS_SESSIONS", "500"))
DEVICES = ("chaos-a", "chaos-b", "chaos-c")


def worker(broker, registry_path, db, n):
    env = dict(os.environ, EDGEPAY_MQTT_PASSWORD="cloud-pw")
    p = subprocess.Popen([sys.executable, "-m", "host_tools.cloud.ingest", "--port", str(broker.cloud_port),
                          "--registry", str(registry_path), "--db", db, "--batch-ms", "20"],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 20
    for line in p.stdout:
        if "ready" in line:
            break
        assert time.monotonic() < deadline, f"worker {n} not ready"
    return p


def committed(board):
    """(seq, hash) of every record the device's journal reported committed."""
    out = set()
    for line in board.lines:
        m = re.search(r"REC (\d+) ([0-9a-f]{32})", line)
        if m:
            out.add((int(m.group(1)), m.group(2)))
    return out


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_chaos_ledger_equals_journals(tmp_path, backend, request):
    db = str(tmp_path / "ledger.db") if backend == "sqlite" else request.getfixturevalue("pg").new_database("chaos")
    broker = Broker(users={"cloud": "cloud-pw"})
    broker.start()
    proxy = FaultyProxy(broker.port, seed=7)
    reg_path = tmp_path / "registry.db"
    reg = Registry(reg_path)
    boards, workers = [], []
    try:
        per = [SESSIONS // 3 + (1 if i < SESSIONS % 3 else 0) for i in range(3)]
        for dev, n in zip(DEVICES, per):
            b = provision_sim(broker, reg, tmp_path, dev, app="loadgen", loadgen={"sessions": n, "gap_ms": 60})
            cfg = __import__("json").loads((b.dir / "config.json").read_text())
            cfg["broker"]["port"] = proxy.port  # every byte goes through the faulty network
            cfg["board"].update(journal={"capacity": 48 * 1024}, flash={"blocks": 64})
            b.write_config(cfg)
            shutil.copy(ROOT / "tests" / "vm" / "loadgen.py", b.dir / "loadgen.py")
            boards.append(b)
        workers = [worker(broker, reg_path, db, i) for i in range(2)]
        for b in boards:
            b.start()
        proxy.drop_rate = 0.15  # each connection has a ~15%/s chance of being cut
        t0 = time.monotonic()
        step, killed_worker = 0, False
        while time.monotonic() - t0 < 240:
            time.sleep(1.0)
            step += 1
            if step % 4 == 0:
                broker.restart(kill=True)           # SIGKILL: in-flight and queued messages lost
            elif step % 4 == 2:
                proxy.drop_all()
            if step == 3 and not killed_worker:
                workers[0].kill()                   # mid-batch: records are streaming in
                workers[0].wait()
                killed_worker = True
            if step == 7:
                workers[0] = worker(broker, reg_path, db, 0)
            if all("LOADGEN done" in b.log() for b in boards) and step >= 8:
                break
        assert all("LOADGEN done" in b.log() for b in boards), "devices did not finish their sessions"
        # the chaos really happened while money was flowing
        drops = [b.log().count("mqtt down") for b in boards]
        print("chaos:", {"steps": step, "broker_kills": step // 4, "proxy": proxy.stats, "device_drops": drops})
        assert step // 4 >= 2 and killed_worker and min(drops) >= 3, drops
        # calm: let store-and-forward drain everything still unacknowledged
        proxy.drop_rate = 0.0
        expected = {d: committed(b) for d, b in zip(DEVICES, boards)}
        assert sum(map(len, expected.values())) == 2 * SESSIONS
        ledger = open_ledger(db)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if all(ledger.count(d) == len(expected[d]) for d in DEVICES):
                break
            time.sleep(1)
        for d in DEVICES:
            got = {(r.seq, r.hash.hex()) for r in ledger.records(d)}
            assert got == expected[d], (d, len(got), len(expected[d]), sorted(expected[d] - got)[:5],
                                        sorted(got - expected[d])[:5])
        assert not ledger.rejects()
        assert sum(s.amount for s in ledger.sessions() if s.state == "closed") == sum(100 + i for n in per for i in range(n))
        ledger.close()
        # and every device ends with nothing pending: all acknowledged, so all forgotten
        c = CommandClient(reg, BrokerSettings("127.0.0.1", broker.cloud_port, "cloud", "cloud-pw")).connect()
        try:
            for d in DEVICES:
                deadline = time.monotonic() + 30
                while True:
                    st = c.send(d, "get_state", timeout=5)
                    if st.ok and st.data["jdepth"] == 0:
                        break
                    assert time.monotonic() < deadline, (d, st.state, st.data)
                    time.sleep(1)
        finally:
            c.close()
    finally:
        for b in boards:
            b.kill()
        for w in workers:
            if w.poll() is None:
                w.kill()
        proxy.close()
        broker.close()
