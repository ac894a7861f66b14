"""Power cuts on a whole simulated board (its flash loses power at a chosen program/erase, torn
or clean) while it journals and forwards sessions to a real ingest worker and ledger. After each
reboot on the same flash: every record the device reported committed reaches the ledger, no seq
is ever reused (a reuse would show as a conflict in the ledger's rejects), the chain never breaks.
"""
import json
import re
import shutil
import time
from pathlib import Path

import pytest

from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.ingest import IngestWorker
from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.registry import Registry
from host_tools.sim.provision import provision_sim

ROOT = Path(__file__).resolve().parents[1]
# (op at which power goes, bytes of the fatal write that land: None = clean)
CUTS = [(60, None), (61, 7), (95, 0), (140, 100), (141, None), (203, 33), (260, None), (333, 1)]


def committed(board):
    return {(int(m.group(1)), m.group(2)) for m in
            (re.search(r"REC (\d+) ([0-9a-f]{32})", ln) for ln in board.lines) if m}


@pytest.fixture
def rig(broker, tmp_path):
    reg = Registry(tmp_path / "registry.db")
    ledger = open_ledger(str(tmp_path / "ledger.db"))
    w = IngestWorker(reg, ledger, BrokerSettings("127.0.0.1", broker.cloud_port, "cloud", "cloud-pw"), hold_ms=0)
    w.start()
    yield reg, ledger
    w.stop()
    ledger.close()


def test_power_cut_at_chosen_writes_loses_nothing(broker, rig, tmp_path):
    reg, ledger = rig
    b = provision_sim(broker, reg, tmp_path, "cut-1", app="loadgen", loadgen={"sessions": 300, "gap_ms": 15})
    cfg = json.loads((b.dir / "config.json").read_text())
    cfg["board"].update(journal={"capacity": 32 * 1024}, flash={"blocks": 48})
    b.write_config(cfg)
    shutil.copy(ROOT / "tests" / "vm" / "loadgen.py", b.dir / "loadgen.py")
    try:
        _cut_and_check(b, ledger)
    finally:
        b.kill()


def _cut_and_check(b, ledger):
    seen = set()
    for at, tear in CUTS:  # each boot after a cut is itself cut: recovery runs under cuts too
        b.arm_power_cut(at, tear)
        b.start(reset_cause="power_on")
        b.wait(30)
        assert b.exit_reason() == "killed", (at, tear, b.log()[-2000:])  # power went, mid-write
        seen |= committed(b)
    assert len(seen) > 50 and "LOADGEN done" not in b.log()
    b.start()
    b.wait_for("LOADGEN done", 120)
    seen |= committed(b)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not seen <= {(r.seq, r.hash.hex()) for r in ledger.records("cut-1")}:
        time.sleep(0.5)
    got = {(r.seq, r.hash.hex()) for r in ledger.records("cut-1")}
    assert seen <= got, sorted(seen - got)[:5]
    # anything else in the ledger is a record whose append completed just before the cut could
    # report it: it must still be a link of the one chain (no rejects, no forks, no reused seq)
    print("powercut:", {"cuts": len(CUTS), "reported_committed": len(seen), "ledger": len(got)})
    assert not ledger.rejects("cut-1")
    recs = sorted(ledger.records("cut-1"), key=lambda r: r.seq)
    for prev, cur in zip(recs, recs[1:]):
        assert cur.prev == prev.hash and cur.seq > prev.seq
