"""The broker's own credentials rotate without downtime (issue 15 §4), on a real Mosquitto started
from the files `edgepay provision --tls` and `edgepay broker conf` write:

- the cloud's password, by overlap: `broker cloud-user add` a second user (a fresh random password,
  owner-only in a file, never printed unless asked), the services move to it, `cloud-user remove`
  the first, whose open connection the broker then drops and whose password it refuses; the last
  user is never removed; bad names and duplicates refused;
- the broker's TLS certificate: `broker renew-cert` issues a new key and certificate for the same
  names from the CA in the broker dir and reloads, so the next TLS client (verifying the CA and
  the host name, as a device does) sees the new certificate, and the old connection carries on.
"""
from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import subprocess
import time

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion

from host_tools.broker import free_port, mosquitto_path
from tests.test_cli import bad, run


class Conn:
    """A paho client that stays connected (or says why not)."""

    def __init__(self, user, password, port, ca=None, client_id=None):
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"{user}-{os.urandom(3).hex()}")
        self.c.username_pw_set(user, password)
        self.rc: list[bool] = []   # CONNACK refused?
        self.c.on_connect = lambda cl, u, f, reason, pr: self.rc.append(reason.is_failure)
        if ca:
            self.c.tls_set(ca_certs=ca)
        for _ in range(50):
            try:
                self.c.connect("127.0.0.1", port)
                break
            except OSError:
                time.sleep(0.1)
        self.c.reconnect_delay_set(5, 5)   # a dropped connection stays down while we look
        self.c.loop_start()
        for _ in range(50):
            if self.rc:
                break
            time.sleep(0.05)

    @property
    def accepted(self) -> bool:
        return self.rc[:1] == [False]

    def wait_down(self, timeout=5.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.c.is_connected():
                return True
            time.sleep(0.05)
        return False

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def site(tmp_path, monkeypatch):
    bdir = tmp_path / "broker"
    monkeypatch.setenv("EDGEPAY_MQTT_PASSWORD", "cloud-pw")
    run("--registry", str(tmp_path / "r.db"), "provision", "gate-1", "--board", "sim-gate", "--tls",
        "--tls-host", "localhost", "--tls-host", "127.0.0.1", "--out", str(tmp_path / "g1"), "--broker-dir", str(bdir))
    port, cport, tport = free_port(), free_port(), free_port()
    run("broker", "conf", "--broker-dir", str(bdir), "--port", str(port), "--cloud-port", str(cport),
        "--tls-port", str(tport))
    proc = subprocess.Popen([mosquitto_path(), "-c", str(bdir / "mosquitto.conf")], stderr=subprocess.PIPE)
    for _ in range(100):   # the pid file is the reload's way to it
        if (bdir / "mosquitto.pid").exists():
            break
        time.sleep(0.05)
    cfg = json.loads((tmp_path / "g1" / "config.json").read_text())
    yield bdir, cport, tport, cfg
    proc.kill()
    proc.wait()


def served_serial(port: int, ca: str) -> int:
    """The certificate the TLS listener presents, verified against the CA and the host name."""
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            der = t.getpeercert(True)
            assert der is not None
            return x509.load_der_x509_certificate(der).serial_number


def test_the_cloud_password_rotates_by_overlap(site):
    bdir, cport, _, _ = site
    old = Conn("cloud", "cloud-pw", cport)
    assert old.accepted
    r = json.loads(run("--json", "broker", "cloud-user", "add", "cloud-b", "--broker-dir", str(bdir)).output)
    pw_file = bdir / "cloud-b.password"
    assert r["password_file"] == str(pw_file) and "password" not in r and r["broker_reload"]["reloaded"]
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    new_pw = pw_file.read_text().strip()
    assert len(new_pw) >= 32 and new_pw not in run("broker", "cloud-user", "list", "--broker-dir", str(bdir)).output
    new = Conn("cloud-b", new_pw, cport)
    assert new.accepted and old.c.is_connected()            # both work during the overlap
    assert new.c.publish("v1/dev/gate-1/dn/cmd", b"x", qos=1).rc == 0   # and the new one has the cloud's topics
    run("broker", "cloud-user", "remove", "cloud", "--broker-dir", str(bdir))
    assert old.wait_down(), "the broker keeps a removed user's connection"
    again = Conn("cloud", "cloud-pw", cport)
    assert not again.accepted                                # its password is refused from now on
    assert new.c.is_connected()
    assert json.loads(run("--json", "broker", "cloud-user", "list", "--broker-dir", str(bdir)).output)["users"] == ["cloud-b"]
    for c in (old, new, again):
        c.close()


def test_cloud_user_refusals(site):
    bdir = site[0]
    d = ["--broker-dir", str(bdir)]
    bad("broker", "cloud-user", "add", "cloud", *d, says="exists")
    bad("broker", "cloud-user", "add", "bad name!", *d, says="bad user name")
    bad("broker", "cloud-user", "remove", "nobody", *d, says="no cloud user nobody")
    bad("broker", "cloud-user", "remove", "cloud", *d, says="last cloud user")
    r = run("broker", "cloud-user", "add", "shown", *d, "--show-password")
    assert (bdir / "shown.password").read_text().strip() in r.output   # printed only when asked
    bad("broker", "cloud-user", "list", "--broker-dir", str(bdir.parent / "nowhere"), says="broker conf")


def test_the_broker_certificate_renews_and_clients_that_trust_the_ca_never_notice(site):
    bdir, _, tport, cfg = site
    ca = str(bdir / "ca.pem")
    dev = Conn(cfg["device"], cfg["broker"]["password"], tport, ca=ca, client_id=cfg["device"])
    assert dev.accepted
    before = served_serial(tport, ca)
    r = json.loads(run("--json", "broker", "renew-cert", "--broker-dir", str(bdir), "--days", "30").output)
    assert r["cn"] and r["broker_reload"]["reloaded"]
    assert stat.S_IMODE((bdir / "server.key").stat().st_mode) == 0o600
    for _ in range(50):                                     # the broker reloads on its own time
        after = served_serial(tport, ca)
        if after != before:
            break
        time.sleep(0.1)
    assert after != before and format(after, "x") == r["serial"]
    assert dev.c.is_connected()                             # the open connection is not cut
    dev2 = Conn(cfg["device"] + "x", "nope", tport, ca=ca)  # a fresh handshake verifies the new one
    assert dev2.rc                                          # (and is then refused on its password)
    fresh = Conn(cfg["device"], cfg["broker"]["password"], tport, ca=ca, client_id=cfg["device"])
    assert fresh.accepted
    for c in (dev, dev2, fresh):
        c.close()
    bad("broker", "renew-cert", "--broker-dir", str(bdir.parent / "nowhere"), says="CA")
