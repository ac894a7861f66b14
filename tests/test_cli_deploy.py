"""The CLI as deployed: which broker listener each command talks to by default, `cmd --timeout` as
one deadline, certificate lifetimes, a generated mosquitto.conf that starts as root, and Wi-Fi
credentials in provisioning. Real Mosquitto; bad input gives one line and a non-zero exit."""
from __future__ import annotations

import asyncio
import datetime
import json
import os
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from host_tools.cloud.mqtt import BrokerSettings
from host_tools.broker import CLOUD_PORT, DEVICE_PORT, free_port, mosquitto_path
from tests.test_cli import bad, mode, run

ROOT = Path(__file__).resolve().parents[1]


# ---- 1. default ports ---------------------------------------------------------------------------
def test_cloud_commands_default_to_the_cloud_listener(tmp_path):
    from host_tools.cli.common import DEFAULT_BROKER, Ctx
    assert (DEVICE_PORT, CLOUD_PORT) == (1883, 1884)
    assert DEFAULT_BROKER.endswith(f":{CLOUD_PORT}") and Ctx().broker_addr() == ("127.0.0.1", CLOUD_PORT)
    top = run("--help").output
    assert f"127.0.0.1:{CLOUD_PORT}" in top and "CLOUD listener" in top
    # `broker conf` puts the cloud listener where --broker points by default, devices on 1883
    help_conf = run("broker", "conf", "--help").output
    assert f"default: {DEVICE_PORT}" in help_conf.replace("\n", " ") or str(DEVICE_PORT) in help_conf
    assert "device listener" in help_conf and "cloud listener" in help_conf
    # a device is given the device listener, on the --broker host, not the cloud port
    r = run("--registry", str(tmp_path / "r.db"), "--broker", "mqtt.example.com:1884", "--json", "provision",
            "gate-1", "--board", "sim-gate", "--out", str(tmp_path / "g"), "--broker-dir", str(tmp_path / "b"))
    assert json.loads(r.output)["broker"] == f"mqtt.example.com:{DEVICE_PORT}"
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    assert (cfg["broker"]["host"], cfg["broker"]["port"]) == ("mqtt.example.com", DEVICE_PORT)
    # the ingest worker (a cloud service) also defaults to the cloud listener
    p = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "host_tools.cloud.ingest", "--help"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert f"default: {CLOUD_PORT}" in " ".join(p.stdout.split())


def test_cmd_default_broker_reaches_a_cloud_listener_on_1884(tmp_path):
    """No --broker at all: `cmd` connects to 127.0.0.1:1884 (skipped if 1884 is taken here)."""
    from tests.conftest import _make
    b = _make()
    b.cloud_port = CLOUD_PORT
    b._auto_port = False
    try:
        b.start()
    except Exception as e:  # noqa: BLE001 - someone else holds 1884 on this machine
        b.close()
        pytest.skip(f"cannot listen on {CLOUD_PORT}: {e}")
    try:
        reg = tmp_path / "r.db"
        run("--registry", str(reg), "provision", "gate-1", "--board", "sim-gate", "--out", str(tmp_path / "g"),
            "--broker-dir", str(tmp_path / "b"))
        env = {"EDGEPAY_REGISTRY": str(reg), "EDGEPAY_MQTT_PASSWORD": "cloud-pw", "EDGEPAY_BROKER": ""}
        r = run("--json", "--registry", str(reg), "cmd", "gate-1", "get_state", "--timeout", "0.5",
                env={k: v for k, v in env.items() if v}, code=12)  # connected; nobody answers
        assert json.loads(r.output)["state"] == "TIMED_OUT"
    finally:
        b.close()


# ---- 2. one deadline ----------------------------------------------------------------------------
@pytest.fixture
def silent_device(broker, tmp_path):
    """A registered device that never answers, and the CLI's environment for the cloud listener."""
    reg = tmp_path / "registry.db"
    run("--registry", str(reg), "provision", "gate-1", "--board", "sim-gate", "--out", str(tmp_path / "g"),
        "--broker-dir", str(tmp_path / "b"), "--device-broker", f"127.0.0.1:{broker.port}")
    env = {"EDGEPAY_REGISTRY": str(reg), "EDGEPAY_BROKER": f"127.0.0.1:{broker.cloud_port}",
           "EDGEPAY_MQTT_USER": "cloud", "EDGEPAY_MQTT_PASSWORD": "cloud-pw"}
    return env, reg


def test_cmd_timeout_is_one_deadline(broker, silent_device, monkeypatch):
    """The broker takes the command but never acknowledges it (frozen right after our CONNACK), and
    no device answers: TIMED_OUT after --timeout in all, not a PUBACK wait plus a result wait."""
    from host_tools.cloud.commands import CommandClient
    env, _ = silent_device
    real_connect = CommandClient.connect

    def connect_then_freeze(self, timeout=10.0):
        out = real_connect(self, timeout)
        broker.freeze()
        return out
    monkeypatch.setattr(CommandClient, "connect", connect_then_freeze)
    try:
        for timeout in (1.0, 2.0):
            t0 = time.monotonic()
            r = run("--json", "cmd", "gate-1", "get_state", "--timeout", str(timeout), env=env, code=12)
            wall = time.monotonic() - t0
            broker.thaw()
            res = json.loads(r.output)
            assert res["state"] == "TIMED_OUT"
            assert 0.9 * timeout <= res["elapsed_ms"] / 1000 <= 1.4 * timeout, res["elapsed_ms"]
            assert wall < 1.4 * timeout + 2.0, wall  # + connect and registry
    finally:
        broker.thaw()


def test_sdk_timeout_is_one_deadline_sync_and_async(broker, silent_device):
    from host_tools.cloud.commands import CommandClient, State
    from host_tools.cloud.registry import Registry
    _, reg_path = silent_device
    reg = Registry(reg_path)
    client = CommandClient(reg, BrokerSettings("127.0.0.1", broker.cloud_port, "cloud", "cloud-pw")).connect(5)
    try:
        broker.freeze()
        t0 = time.monotonic()
        c = client.send("gate-1", "get_state", timeout=1.0)
        took = time.monotonic() - t0
        assert c.state is State.TIMED_OUT and 0.9 <= took <= 1.4, took
        t0 = time.monotonic()
        c = asyncio.run(client.asend("gate-1", "get_state", timeout=1.0))
        took = time.monotonic() - t0
        assert c.state is State.TIMED_OUT and 0.9 <= took <= 1.4, took
    finally:
        broker.thaw()
        client.close()
        reg.close()


def test_cmd_silent_device_times_out_in_about_the_timeout(silent_device):
    env, _ = silent_device
    t0 = time.monotonic()
    r = run("--json", "cmd", "gate-1", "get_state", "--timeout", "1", env=env, code=12)
    assert json.loads(r.output)["state"] == "TIMED_OUT"
    assert 0.9 <= json.loads(r.output)["elapsed_ms"] / 1000 <= 1.4
    assert time.monotonic() - t0 < 3.4


# ---- 3. certificate lifetimes -------------------------------------------------------------------
def _days(cert) -> float:
    return (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() / 86400


def test_certificate_lifetimes(tmp_path):
    from cryptography import x509
    from host_tools.tls import CA_DAYS, LEAF_DAYS
    now = datetime.datetime.now(datetime.timezone.utc)
    bdir = tmp_path / "b"
    run("--registry", str(tmp_path / "r.db"), "provision", "rent-1", "--board", "sim-rental", "--out",
        str(tmp_path / "d1"), "--broker-dir", str(bdir), "--tls", "--tls-host", "localhost")
    ca = x509.load_pem_x509_certificate((bdir / "ca.pem").read_bytes())
    srv = x509.load_pem_x509_certificate((bdir / "server.pem").read_bytes())
    dev = x509.load_pem_x509_certificate((tmp_path / "d1" / "device.pem").read_bytes())
    assert CA_DAYS >= 3650 and LEAF_DAYS >= 825
    assert ca.not_valid_after_utc - now > datetime.timedelta(days=CA_DAYS - 2)
    for leaf in (srv, dev):
        assert abs((leaf.not_valid_after_utc - now) - datetime.timedelta(days=LEAF_DAYS)) < datetime.timedelta(hours=1)
        assert leaf.not_valid_before_utc <= now
    # --cert-days for the next device: its certificate only (the broker's was made once)
    run("--registry", str(tmp_path / "r.db"), "provision", "rent-2", "--board", "sim-rental", "--out",
        str(tmp_path / "d2"), "--broker-dir", str(bdir), "--tls", "--tls-host", "localhost", "--cert-days", "90")
    dev2 = x509.load_pem_x509_certificate((tmp_path / "d2" / "device.pem").read_bytes())
    assert abs((dev2.not_valid_after_utc - now) - datetime.timedelta(days=90)) < datetime.timedelta(hours=1)
    dev2.verify_directly_issued_by(ca)
    for days in ("0", "-3", "99999", "ten"):
        r = run("--registry", str(tmp_path / "r.db"), "provision", "rent-3", "--board", "sim-rental", "--out",
                str(tmp_path / "d3"), "--broker-dir", str(bdir), "--tls", "--cert-days", days, code=2)
        assert "--cert-days" in r.output
    assert not (tmp_path / "d3").exists()


def test_leaf_never_outlives_its_ca():
    from host_tools.tls import make_ca, make_leaf
    ca_key, ca = make_ca(days=10)
    _, leaf = make_leaf(ca_key, ca, days=825)
    assert leaf.not_valid_after_utc == ca.not_valid_after_utc
    assert 10 <= _days(ca) <= 11.01


# ---- 4. broker conf as root ---------------------------------------------------------------------
def _start(conf: Path, port: int, cport: int) -> subprocess.Popen:
    from tests.test_cli import _mqtt_attempt
    proc = subprocess.Popen([mosquitto_path(), "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        assert _mqtt_attempt("cloud", "cloud-pw", cport), proc.stderr
    except AssertionError:
        proc.kill()
        raise
    return proc


def test_broker_conf_names_the_user_and_starts_as_is(tmp_path):
    """Whoever runs `broker conf` owns the 0600 files: the conf says so, and Mosquitto started by
    that account (root here, when the suite runs as root) reads them: no hand edit."""
    import pwd
    bdir = tmp_path / "broker"
    run("--registry", str(tmp_path / "r.db"), "provision", "vend-1", "--board", "sim-vending",
        "--out", str(tmp_path / "v1"), "--broker-dir", str(bdir))
    port, cport = free_port(), free_port()
    r = run("--json", "--password", "cloud-pw", "broker", "conf", "--broker-dir", str(bdir), "--port", str(port),
            "--cloud-port", str(cport))
    me = pwd.getpwuid(os.getuid()).pw_name
    assert json.loads(r.output)["user"] == me
    assert f"user {me}" in (bdir / "mosquitto.conf").read_text().splitlines()
    proc = _start(bdir / "mosquitto.conf", port, cport)
    proc.kill()
    proc.wait()


@pytest.mark.skipif(os.getuid() != 0, reason="giving files to another account needs root")
def test_broker_conf_run_as_gives_the_files_to_that_user(tmp_path):
    import pwd
    try:
        acct = pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no mosquitto account")
    # the broker dir must be reachable by that account: tmp_path (under 0700 dirs) is not
    run("--registry", str(tmp_path / "r.db"), "provision", "vend-1", "--board", "sim-vending",
        "--out", str(tmp_path / "v1"), "--broker-dir", str(tmp_path / "b"))
    bad("--password", "cloud-pw", "broker", "conf", "--broker-dir", str(tmp_path / "b"), "--run-as", "mosquitto",
        says="does not let mosquitto reach")
    bad("--password", "cloud-pw", "broker", "conf", "--broker-dir", str(tmp_path / "b"), "--run-as", "nobody-here-x",
        says="no such user")
    top = Path(tempfile.mkdtemp(prefix="edgepay-runas-"))
    try:
        os.chmod(top, 0o711)
        bdir = top / "broker"
        run("--registry", str(tmp_path / "r2.db"), "provision", "vend-1", "--board", "sim-vending",
            "--out", str(top / "v1"), "--broker-dir", str(bdir))
        port, cport = free_port(), free_port()
        run("--password", "cloud-pw", "broker", "conf", "--broker-dir", str(bdir), "--port", str(port),
            "--cloud-port", str(cport), "--run-as", "mosquitto")
        assert "user mosquitto" in (bdir / "mosquitto.conf").read_text().splitlines()
        for name in ("passwd", "acl", "passwd_cloud", "acl_cloud", "mosquitto.conf"):
            st = (bdir / name).stat()
            assert st.st_uid == acct.pw_uid and stat.S_IMODE(st.st_mode) == 0o600
        assert bdir.stat().st_uid == acct.pw_uid and mode(bdir) == 0o700
        proc = _start(bdir / "mosquitto.conf", port, cport)  # root drops to mosquitto and reads them
        try:
            out = subprocess.run(["ps", "-o", "user=", "-p", str(proc.pid)], capture_output=True, text=True).stdout
            assert out.strip() == "mosquitto"
        finally:
            proc.kill()
            proc.wait()
    finally:
        import shutil
        shutil.rmtree(top, ignore_errors=True)


# ---- 6. Wi-Fi credentials in provisioning -------------------------------------------------------
def test_provision_wifi(tmp_path):
    pw = tmp_path / "wifi.txt"
    pw.write_text("correct horse battery\n")
    pw.chmod(0o600)
    base = ["--registry", str(tmp_path / "r.db"), "provision"]
    r = run(*base, "gate-1", "--board", "esp32-devkitc-gate", "--out", str(tmp_path / "g"), "--broker-dir",
            str(tmp_path / "b"), "--device-broker", "10.0.0.5:1883",  # a real board: required
            "--wifi-ssid", "site-net", "--wifi-password-file", str(pw))
    assert "correct horse" not in r.output and "site-net" in r.output
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    assert cfg["wifi"] == {"ssid": "site-net", "password": "correct horse battery"}
    assert mode(tmp_path / "g" / "config.json") == 0o600
    r = run("--json", *base, "gate-2", "--board", "sim-gate", "--out", str(tmp_path / "g2"), "--broker-dir",
            str(tmp_path / "b"), "--wifi-ssid", "site-net", "--wifi-password-file", str(pw))
    assert json.loads(r.output)["wifi"] == {"ssid": "site-net"} and "correct horse" not in r.output
    # bad input: nothing made
    out = ["--out", str(tmp_path / "x"), "--broker-dir", str(tmp_path / "b")]
    bad(*base, "gate-3", "--board", "sim-gate", *out, "--wifi-ssid", "site-net", says="--wifi-password-file")
    bad(*base, "gate-3", "--board", "sim-gate", *out, "--wifi-password-file", str(pw), says="--wifi-ssid")
    bad(*base, "gate-3", "--board", "sim-gate", *out, "--wifi-ssid", "s", "--wifi-password-file",
        str(tmp_path / "none.txt"), says="cannot read")
    pw.chmod(0o644)
    bad(*base, "gate-3", "--board", "sim-gate", *out, "--wifi-ssid", "s", "--wifi-password-file", str(pw),
        says="chmod 600")
    pw.write_text("short")
    pw.chmod(0o600)
    r = bad(*base, "gate-3", "--board", "sim-gate", *out, "--wifi-ssid", "s", "--wifi-password-file", str(pw),
            says="8-63")
    assert "short" not in r.output
    bad(*base, "gate-3", "--board", "sim-gate", *out, "--wifi-ssid", "x" * 33, "--wifi-password-file", str(pw),
        says="1-32 bytes")
    assert not (tmp_path / "x").exists()
    pw.write_text("")  # an open network
    run(*base, "gate-3", "--board", "sim-gate", *out, "--wifi-ssid", "cafe", "--wifi-password-file", str(pw))
    assert json.loads((tmp_path / "x" / "config.json").read_text())["wifi"] == {"ssid": "cafe", "password": ""}
