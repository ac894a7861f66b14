"""The SDK examples in examples/ run as documented (docs/cloud-sdk.md, docs/quickstart.md): each
exits 0 within its time limit and prints what the docs say it prints."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
LIMIT_S = 20


def run(*args: str, timeout: float = LIMIT_S) -> str:
    p = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    return p.stdout


@pytest.mark.parametrize("script,says", [
    ("send_command.py", ["get_state  SUCCEEDED", "clock_untrusted", "CREATED -> SENT -> SUCCEEDED",
                         "bad_args", "unsupported", "TIMED_OUT"]),
    ("async_commands.py", ["vend-001  display    SUCCEEDED", "bad_args", "late result: status 0"]),
    ("ingest_worker.py", ["ack upto=3", "'duplicates': 1", "totals: {'EUR': 1000}", "journal: True"]),
    ("session_service.py", ["tariff: SUCCEEDED", "closed 950 CNY", "'status': 'settled'", "DONE 950 CNY"]),
])
def test_example_runs(script, says):
    out = run(str(EXAMPLES / script))
    for s in says:
        assert s in out, (s, out)


def test_session_service_keeps_its_ledger_for_the_cli(tmp_path):
    db = tmp_path / "ledger.db"
    run(str(EXAMPLES / "session_service.py"), "--ledger", str(db))
    out = subprocess.run([sys.executable, "-m", "host_tools.cli", "--json", "ledger", "--db", str(db), "totals"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30, check=True).stdout
    assert json.loads(out)["totals"] == {"CNY": 950}


def test_sim_board_runs_a_provisioned_config(tmp_path, broker):
    """The quickstart path: `edgepay provision` a sim board, run it with examples/sim_board.py."""
    out = tmp_path / "gate-001"
    subprocess.run([sys.executable, "-m", "host_tools.cli", "--registry", str(tmp_path / "registry.db"),
                    "provision", "gate-001", "--board", "sim-gate", "--out", str(out),
                    "--broker-dir", str(tmp_path / "broker"), "--device-broker", f"127.0.0.1:{broker.port}"],
                   cwd=ROOT, check=True, capture_output=True, timeout=30)
    cfg = json.loads((out / "config.json").read_text())
    broker.add_user("gate-001", cfg["broker"]["password"])
    log = run(str(EXAMPLES / "sim_board.py"), str(out / "config.json"), str(tmp_path / "flash"), "--seconds", "4")
    assert "online" in log and "board exited: stopped" in log, log
