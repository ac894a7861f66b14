"""A new user's path through the `edgepay` CLI (issue 11 §3): what the README and docs promise,
tried as a newcomer would, and every way it went wrong then: --json failures on stdout, the
commands listed and checked before signing, clear file errors, full ledger columns, the broker
told about a new device, sim VMs that die with their parent, keys kept out of the repository."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from host_tools.cli import cli

ROOT = Path(__file__).resolve().parents[1]
EDGEPAY = [sys.executable, "-m", "host_tools.cli"]


def invoke(*args: str, env: dict | None = None):
    r = CliRunner().invoke(cli, list(args), env=env or {}, catch_exceptions=True)
    assert r.exception is None or isinstance(r.exception, SystemExit), (r.exception, r.output)
    assert "Traceback" not in r.output, r.output
    return r


def json_failure(*args: str, code: int, name: str, says: str = "", env: dict | None = None) -> dict:
    """Under --json a failure is one JSON object on stdout, nothing on stderr, the same exit code."""
    r = invoke("--json", *args, env=env)
    assert r.exit_code == code, (r.exit_code, r.output)
    assert r.stderr == "", r.stderr
    obj = json.loads(r.stdout)
    assert obj["code"] == name and obj["exit"] == code and isinstance(obj["error"], str), obj
    assert says.lower() in obj["error"].lower(), obj
    return obj


def provision(tmp_path: Path, dev: str = "gate-1", *extra: str) -> tuple[Path, Path]:
    reg, out = tmp_path / "registry.db", tmp_path / dev
    r = invoke("--registry", str(reg), "provision", dev, "--board", "sim-gate", "--out", str(out),
               "--broker-dir", str(tmp_path / "b"), "--device-broker", "127.0.0.1:9", *extra)
    assert r.exit_code == 0, r.output
    return reg, out


# ---- 1. --json: every failure a JSON object on stdout ------------------------------------------
def test_json_failures_are_objects_on_stdout(tmp_path):
    json_failure("--registry", str(tmp_path / "nope.db"), "cmd", "d", "get_state", code=1, name="error",
                 says="no registry", env={"EDGEPAY_MQTT_PASSWORD": "x"})
    json_failure("cmd", code=2, name="usage", says="missing argument")
    json_failure("frobnicate", code=2, name="usage", says="no such command")
    json_failure("ledger", "--db", "postgresql://nobody@127.0.0.1:1/none", "totals", code=3, name="unreachable")
    reg, _ = provision(tmp_path)
    json_failure("--registry", str(reg), "--broker", "127.0.0.1:1", "--password", "x", "cmd", "gate-1",
                 "get_state", code=3, name="unreachable")
    # without --json: the line on stderr, stdout empty
    r = invoke("--registry", str(tmp_path / "nope.db"), "cmd", "d", "get_state", env={"EDGEPAY_MQTT_PASSWORD": "x"})
    assert r.exit_code == 1 and r.stdout == "" and r.stderr.startswith("error: no registry")


def test_json_failure_console_script(tmp_path):
    """The installed entry point, separate pipes: stdout is the JSON object, stderr empty."""
    p = subprocess.run([*EDGEPAY, "--json", "--registry", str(tmp_path / "nope.db"), "cmd", "d", "get_state"],
                       capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, EDGEPAY_MQTT_PASSWORD="x"),
                       timeout=60)
    assert p.returncode == 1 and p.stderr == "", p.stderr
    assert json.loads(p.stdout)["code"] == "error"
    p = subprocess.run([*EDGEPAY, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "JSON lines" in p.stdout and '"error"' in p.stdout
