"""`edgepay demo` end to end in the suite: a gate, a cabinet and a rental station on the VM through
a simulated hour with a network outage, a power cut and a signed firmware update of all three (the
gate's install deferred by a car under its barrier); every session must reconcile."""
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
    assert rep["devices"]["gate-1"]["boots"] == 3          # the gate lost power once, and updated
    assert rep["devices"]["vend-1"]["boots"] == rep["devices"]["rent-1"]["boots"] == 2   # updated
    assert all(d["jdepth"] == 0 for d in rep["devices"].values())
    t = rep["totals"]
    assert t["device"] == t["ledger"] == t["charged"] > 0
    # every customer the hour brought (less the provider's refusal) settled, across the outage and power cut
    pay = rep["payments"]
    assert pay["attempts"] > pay["refused"] >= 1 and rep["payment_success_rate"] >= 0.999, pay
    events = [ln for ln in lines if ln.get("type") == "event"]
    kinds = {e["event"] for e in events}
    assert {"outage", "outage over", "power cut", "power back", "car in", "car out", "sale", "rented",
            "returned"} <= kinds, kinds
    assert any("QR" in e["detail"] for e in events if e["event"] == "car in")


    # the update: every device confirmed 0.2.0 and runs it; the gate waited for the car mid-passage
    assert rep["firmware"] == {"gate-1": "0.2.0", "vend-1": "0.2.0", "rent-1": "0.2.0"}, rep["firmware"]
    for dev, u in rep["updates"].items():
        assert u["confirmed"] == "0.2.0", (dev, u)
        st = u["states"]
        assert st[0] == "signature_verified" and st[-1] == "confirmed", (dev, st)
        assert st.index("downloaded") < st.index("installing") < st.index("installed") < st.index("confirmed")
    assert rep["updates"]["gate-1"]["deferred"] == "busy"
    ups = [e for e in events if e["event"] == "update"]
    for dev in ("gate-1", "vend-1", "rent-1"):   # one JSON event per state the device reported
        assert [e["st"] for e in ups if e["device"] == dev] == rep["updates"][dev]["states"], dev
    gate = [e for e in events if e["device"] == "gate-1"]
    order = [e.get("st") or e["event"] for e in gate]
    assert order.index("car stops") < order.index("deferred") < order.index("car moves on") < order.index("installing")
    assert order.index("installed") < order.index("reboot") < order.index("rebooted") < order.index("confirmed")
    assert sum(1 for e in events if e["event"] == "campaign" and e.get("state") == "done") == 3
