"""`edgepay sim`: boards of chosen kinds on the VM with the cloud side, a short traffic run with
JSON event lines, and the reconciliation as the last line."""
import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from host_tools.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def test_sim_short_traffic_json():
    p = subprocess.run([sys.executable, "-m", "host_tools.cli", "--json", "sim", "--gates", "1", "--vending", "1",
                        "--rental", "0", "--duration", "10", "--rate", "90", "--no-faults", "--seed", "3",
                        "--heap", "96K"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert lines, (p.stdout[-2000:], p.stderr[-2000:])
    rep = lines[-1]
    assert rep["type"] == "reconciliation" and p.returncode == 0, rep.get("problems")
    assert set(rep["devices"]) == {"gate-1", "vend-1"}
    assert rep["sessions"] > 0 and all(r["ok"] for r in rep["rows"])
    events = [ln for ln in lines[:-1] if ln["type"] == "event"]
    assert {e["device"] for e in events} >= {"site", "gate-1", "vend-1"}
    assert all({"t", "sim", "device", "event", "detail"} <= set(e) for e in events)
    assert rep["outages"] == 0 and rep["power_cuts"] == 0


def test_sim_idle_boards_come_up():
    r = CliRunner().invoke(cli, ["--json", "sim", "--gates", "0", "--vending", "0", "--rental", "1",
                                 "--scenario", "idle", "--duration", "2"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output.strip().splitlines()[-1])
    assert rep["sessions"] == 0 and rep["devices"]["rent-1"]["jdepth"] == 0


def test_sim_needs_boards():
    r = CliRunner().invoke(cli, ["sim", "--gates", "0", "--vending", "0", "--rental", "0"])
    assert r.exit_code == 1 and "no boards" in r.output
