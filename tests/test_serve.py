"""`edgepay serve` (host_tools/service/): the HTTP API against a VM board and real Mosquitto —
health, readiness, the bearer token, devices, a command and its signed outcome, refusals,
Prometheus metrics, the OpenAPI document; the config file and its environment overrides; the
CLI process printing `ready` and ending cleanly on SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from host_tools.service.config import ConfigError, load
from host_tools.service.run import Service
from tests.agentkit import CLOUD

ROOT = Path(__file__).resolve().parents[1]


def call(url, method="GET", body=None, token=None):
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            raw = r.read().decode()
            return r.status, (json.loads(raw) if r.headers.get_content_type() == "application/json" else raw)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode() or "null")


def write_config(tmp_path, site, port=0, **parts):
    cfg = tmp_path / "edgepay.toml"
    part_lines = "".join(f"{k} = {str(v).lower()}\n" for k, v in parts.items())
    cfg.write_text(f"""
[broker]
host = "127.0.0.1"
port = {site.broker.cloud_port}
user = "{CLOUD[0]}"
password_env = "TEST_MQTT_PW"

[store]
registry = "{site.root / 'registry.db'}"
ledger = "{tmp_path / 'ledger.db'}"

[http]
host = "127.0.0.1"
port = {port}
token_env = "TEST_API_TOKEN"

[parts]
{part_lines}""")
    return cfg


@pytest.fixture
def served(site, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_MQTT_PW", CLOUD[1])
    monkeypatch.setenv("TEST_API_TOKEN", "t0ken")
    svc = Service(load(write_config(tmp_path, site))).start()
    yield svc
    svc.stop()


def test_the_api_commands_a_vm_board_and_reports(site, served):
    b = site.board("gate-1", "gate")
    u, tok = served.url, "t0ken"
    assert call(u + "/healthz") == (200, {"ok": True})
    assert call(u + "/readyz") == (200, {"ready": True})
    assert call(u + "/v1/devices")[0] == 401
    assert call(u + "/v1/devices", token="wrong")[0] == 401
    st, devs = call(u + "/v1/devices", token=tok)
    assert st == 200 and [d["id"] for d in devs] == ["gate-1"] and devs[0]["status"] == "active"
    assert call(u + "/v1/devices?kind=vending", token=tok) == (200, [])
    st, out = call(u + "/v1/devices/gate-1/commands", "POST", {"name": "display", "args": {"text": "hi api"}}, tok)
    assert st == 200 and out["state"] == "SUCCEEDED" and out["code"] == "ok", out
    b.hw.wait_output("display", "hi api", 5)   # the display's report comes over the sim link, after the result may
    st, out = call(u + "/v1/devices/gate-1/commands", "POST", {"name": "get_state"}, tok)
    assert st == 200 and out["data"]["board"] == "sim-gate"
    # an operator's own token (tests/test_serve_auth.py has the roles); the audit log links the
    # command's id to the device's signed outcome
    served.accounts.add_user("otto", "operator")
    op = served.accounts.create_token("otto", "test")[0]
    assert call(u + "/v1/devices/gate-1/commands", "POST", {"name": "reboot"}, op)[0] == 428   # confirm first
    st, out = call(u + "/v1/devices/gate-1/commands", "POST", {"name": "display", "args": {"text": "by otto"}}, op)
    assert st == 200 and out["state"] == "SUCCEEDED"
    b.hw.wait_output("display", "by otto", 5)
    st, page = call(u + "/v1/audit", token=tok)
    last = page["items"][0]
    assert (last["action"], last["actor"], last["status"], last["target"]) == ("command", "otto", "200", "gate-1")
    assert last["detail"]["cti"] == out["cti"] and last["detail"]["state"] == "SUCCEEDED"
    assert call(u + "/v1/audit", token=op)[0] == 403
    # refusals, nothing signed or sent
    assert call(u + "/v1/devices/nope", token=tok)[0] == 404
    assert call(u + "/v1/devices/nope/commands", "POST", {"name": "get_state"}, tok)[0] == 404
    st, out = call(u + "/v1/devices/gate-1/commands", "POST", {"name": "displya"}, tok)
    assert st == 422 and "did you mean display" in out["detail"]
    assert call(u + "/v1/devices/gate-1/commands", "POST", {"name": ""}, tok)[0] == 422
    # heartbeats: verified, recorded, served with the last one (the board beats every 5 s)
    deadline = time.monotonic() + 15
    while True:
        st, hb = call(u + "/v1/devices/gate-1/heartbeats", token=tok)
        if st == 200 and hb["points"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert st == 200 and hb["last"]["heap"] > 0 and hb["points"][-1]["resolution"] == "full", hb
    assert call(u + "/v1/devices/gate-1/heartbeats?from=soon", token=tok)[0] == 422
    assert call(u + "/v1/devices/nope/heartbeats", token=tok)[0] == 404
    site.reg.set_status("gate-1", "revoked")
    assert call(u + "/v1/devices/gate-1/commands", "POST", {"name": "get_state"}, tok)[0] == 409
    assert call(u + "/metrics")[0] == 401          # only health answers without auth
    st, text = call(u + "/metrics", token=tok)
    assert st == 200 and 'edgepay_commands_total{state="SUCCEEDED"} 3.0' in text
    assert "edgepay_command_seconds_bucket" in text and 'edgepay_devices{status="revoked"} 1.0' in text
    st, spec = call(u + "/openapi.json")
    assert st == 200 and "/v1/devices/{device_id}/commands" in spec["paths"]
    assert call(u + "/v1/campaigns", token=tok) == (200, [])


def test_config_file_and_environment(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[broker]\nport = 1999\n[store]\nledger = "postgresql://db/x"\n[parts]\ncampaigns = false\n')
    c = load(cfg, env={"EDGEPAY_BROKER": "broker.example:2883", "EDGEPAY_REGISTRY": "/var/r.db"})
    assert (c.broker_host, c.broker_port, c.registry, c.ledger) == ("broker.example", 2883, "/var/r.db", "postgresql://db/x")
    assert c.parts == {"ingest": True, "time": True, "chunks": True, "campaigns": False, "api": True,
                       "sessions": False}
    for text, says in [("[brokr]\n", "unknown section"), ("[broker]\nhots = 1\n", "unknown key"),
                       ("[parts]\napi = 1\n", "true or false"), ("[broker\n", "c.toml")]:
        cfg.write_text(text)
        with pytest.raises(ConfigError, match=says):
            load(cfg, env={})
    with pytest.raises(ConfigError, match="HOST:PORT"):
        load(None, env={"EDGEPAY_HTTP": "nope"})
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml", env={})


def test_the_serve_process_says_ready_and_ends_on_sigterm(site, tmp_path):
    from host_tools.broker import free_port
    cfg = write_config(tmp_path, site, port=free_port(), campaigns=False)
    env = {**os.environ, "TEST_MQTT_PW": CLOUD[1], "TEST_API_TOKEN": "x"}
    p = subprocess.Popen([sys.executable, "-m", "host_tools.cli", "serve", "--config", str(cfg)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = p.stdout.readline()
        assert line.startswith("ready http://127.0.0.1:"), (line, p.stderr.read() if p.poll() is not None else "")
        url = line.split()[1]
        assert call(url + "/healthz") == (200, {"ok": True})
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0, p.stderr.read()
    r = subprocess.run([sys.executable, "-m", "host_tools.cli", "serve", "--config", str(tmp_path / "none.toml")],
                       cwd=ROOT, capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr


def test_the_systemd_unit_verifies_and_the_container_recipe_runs(site, tmp_path):
    """No container image can be pulled here and no unit installed: the unit passes
    `systemd-analyze verify` with its ExecStart pointed at this virtualenv, and the recipe's CMD is
    run in the virtualenv against a real config (it says ready)."""
    import re
    import shlex
    import shutil
    from host_tools.broker import free_port
    unit = (ROOT / "docs" / "deploy" / "edgepay.service").read_text()
    exe = ROOT / ".venv" / "bin" / "edgepay"
    if shutil.which("systemd-analyze"):
        u = tmp_path / "edgepay.service"
        u.write_text(unit.replace("/opt/edgepay/.venv/bin/edgepay", str(exe)))
        r = subprocess.run(["systemd-analyze", "verify", str(u)], capture_output=True, text=True)
        assert r.returncode == 0 and "edgepay.service" not in r.stderr, r.stderr
    recipe = (ROOT / "docs" / "deploy" / "Containerfile").read_text()
    [cmd] = re.findall(r"^CMD (\[.*\])$", recipe, re.M)
    argv = json.loads(cmd)
    assert argv[:2] == ["edgepay", "serve"] and "--config" in argv
    for src in re.findall(r"^COPY (\S+) ", recipe, re.M):
        for part in src.split():
            assert (ROOT / part).exists(), part
    cfg = write_config(tmp_path, site, port=free_port(), campaigns=False)
    argv[argv.index("--config") + 1] = str(cfg)
    env = {**os.environ, "TEST_MQTT_PW": CLOUD[1], "TEST_API_TOKEN": "x"}
    p = subprocess.Popen([str(exe), *argv[1:]], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    try:
        line = p.stdout.readline()
        assert line.startswith("ready http://"), (line, shlex.join(argv))
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0
