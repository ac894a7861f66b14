"""`edgepay demo` end to end in the suite: a gate, a cabinet and a rental station on the VM through
a simulated hour with a network outage and a power cut; every session must reconcile."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_reconciles_every_session():
    p = subprocess.run([sys.executable, "-m", "host_tools.cli", "--json", "demo"], cwd=ROOT,
                       capture_output=True, text=True, timeout=240)
    lines = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert lines, (p.stdout[-2000:], p.stderr[-2000:])
    rep = lines[-1]
    assert rep["type"] == "reconciliation"
    assert p.returncode == 0, rep["problems"]
    assert rep["ok"] and not rep["problems"] and not rep["flags"]
    assert rep["sessions"] == len(rep["rows"]) > 0
    assert all(r["ok"] and r["state"] == "closed" for r in rep["rows"])
    assert all(r["device_amount"] == r["ledger_amount"] == r["charged"] == r["expected"] for r in rep["rows"])
    for kind in ("gate", "vending", "rental"):
        assert rep["by_kind"].get(kind, 0) > 0, kind
    assert rep["outages"] >= 1 and rep["power_cuts"] >= 1
    assert rep["offline_sessions"] > 0                     # sessions opened during the outage
    assert rep["devices"]["gate-1"]["boots"] == 2          # the gate lost power once
    assert all(d["jdepth"] == 0 for d in rep["devices"].values())
    t = rep["totals"]
    assert t["device"] == t["ledger"] == t["charged"] > 0
    events = [ln for ln in lines if ln.get("type") == "event"]
    kinds = {e["event"] for e in events}
    assert {"outage", "outage over", "power cut", "power back", "car in", "car out", "sale", "rented",
            "returned"} <= kinds, kinds
    assert any("QR" in e["detail"] for e in events if e["event"] == "car in")
