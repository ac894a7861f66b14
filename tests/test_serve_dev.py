"""`edgepay serve --dev` as a new user runs it: one command starts its own Mosquitto, SQLite
under --dir, every part including the session service (scripted provider), and prints the admin's
password once; the console's login works over plain HTTP with it; SIGTERM ends the service and its
broker; a second start keeps the accounts."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from host_tools.broker import free_port

ROOT = Path(__file__).resolve().parents[1]


def start(tmp_path, port):
    env = dict(os.environ, EDGEPAY_HTTP=f"127.0.0.1:{port}")
    p = subprocess.Popen([sys.executable, "-m", "host_tools.cli", "serve", "--dev", "--dir", str(tmp_path / "dev")],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = p.stdout.readline() if p.stdout else ""
        if not line:
            break
        lines.append(line)
        if line.startswith("ready "):
            return p, lines
    p.kill()
    raise AssertionError(f"no ready line: {lines} {p.stderr.read() if p.stderr else ''}")


def stop(p):
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 0


def test_serve_dev_starts_everything_and_the_admin_logs_in(tmp_path):
    port = free_port()
    p, lines = start(tmp_path, port)
    try:
        text = "".join(lines)
        assert "sessions" in lines[-1] and "api" in lines[-1], lines[-1]
        pw = re.search(r"console user admin, password (\S+)", text).group(1)
        m = re.search(r"broker 127\.0\.0\.1:(\d+) for devices, (\d+) for the cloud", text)
        assert m, text
        u = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(u + "/readyz", timeout=10) as r:
            assert json.loads(r.read())["ready"] is True
        req = urllib.request.Request(u + "/v1/session", method="POST",
                                     data=json.dumps({"user": "admin", "password": pw}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=20) as r:
            cookie = r.headers.get_all("Set-Cookie")
            assert r.status == 200 and json.loads(r.read())["role"] == "admin"
        assert cookie and not any("secure" in c.lower() for c in cookie)   # plain HTTP in development
        assert (tmp_path / "dev" / "registry.db").exists() and (tmp_path / "dev" / "ledger.db").exists()
    finally:
        stop(p)
    with __import__("socket").socket() as s:                    # its broker went with it
        assert s.connect_ex(("127.0.0.1", int(m.group(2)))) != 0
    p, lines = start(tmp_path, port)                            # again: the accounts are kept
    try:
        assert any("accounts kept" in x for x in lines)
    finally:
        stop(p)
