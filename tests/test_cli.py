"""The `edgepay` CLI end to end: provision (files, permissions, registry, a real Mosquitto reading
its passwd/acl), build (bundle, manifest, package.json), flash + logs against a fake serial board
(the MicroPython unix VM on a pty, driven by mpremote's own protocol), cmd / time / watch against
a simulated board on the VM through a real broker, ledger over a SQLite ledger; and for each, bad
input gives one clear line and a non-zero exit, never a traceback."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from host_tools.cli import cli
from host_tools.cloud.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
EDGEPAY = [sys.executable, "-m", "host_tools.cli"]


def run(*args: str, env: dict | None = None, ok: bool = True, code: int | None = None):
    r = CliRunner().invoke(cli, list(args), env=env or {}, catch_exceptions=True)
    out = r.output
    # nothing may escape as an exception (a traceback for the user)
    assert r.exception is None or isinstance(r.exception, SystemExit), (r.exception, out)
    assert "Traceback" not in out, out
    if code is not None:
        assert r.exit_code == code, (r.exit_code, out)
    elif ok:
        assert r.exit_code == 0, (r.exit_code, out)
    else:
        assert r.exit_code != 0, out
    return r


def bad(*args: str, code: int = 1, env: dict | None = None, says: str = ""):
    r = run(*args, env=env, ok=False, code=code)
    assert "error:" in r.output or "Error:" in r.output, r.output
    if says:
        assert says.lower() in r.output.lower(), r.output
    return r


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# ---- provision ------------------------------------------------------------------------------
def test_provision_files_permissions_registry(tmp_path):
    reg, out, bdir = tmp_path / "st" / "registry.db", tmp_path / "dev" / "gate-7", tmp_path / "broker"
    r = run("--registry", str(reg), "--json", "provision", "gate-7", "--board", "sim-gate", "--out", str(out),
            "--broker-dir", str(bdir), "--device-broker", "10.0.0.5:8883")
    info = json.loads(r.output)
    assert info["kid"] == "gate-7:1" and "key" not in info
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["device"] == "gate-7" and cfg["kid"] == "gate-7:1" and len(bytes.fromhex(cfg["key"])) == 32
    assert cfg["broker"]["host"] == "10.0.0.5" and cfg["broker"]["port"] == 8883
    assert cfg["board"]["kind"] == "gate" and cfg["board"]["name"] == "sim-gate"
    assert cfg["key"] not in r.output
    assert mode(out / "config.json") == 0o600 and mode(out) == 0o700 and mode(out.parent) == 0o700
    assert mode(bdir) == 0o700 and mode(bdir / "passwd") == 0o600 and mode(bdir / "acl") == 0o600
    assert mode(reg) == 0o600
    assert (bdir / "passwd").read_text().startswith("gate-7:$7$101$")
    assert "pattern write v1/dev/%u/up/#" in (bdir / "acl").read_text()
    dev = Registry(reg).get("gate-7")
    assert dev.key.hex() == cfg["key"] and dev.kind == "gate" and dev.board == "sim-gate"
    # a second device: one more passwd line, the ACL patterns once
    r2 = run("--registry", str(reg), "provision", "gate-8", "--board", str(ROOT / "boards" / "sim-gate.json"),
             "--out", str(tmp_path / "dev" / "gate-8"), "--broker-dir", str(bdir), "--show-key")
    key8 = json.loads((tmp_path / "dev" / "gate-8" / "config.json").read_text())["key"]
    assert key8 in r2.output  # only with --show-key
    assert [ln.split(":")[0] for ln in (bdir / "passwd").read_text().splitlines()] == ["gate-7", "gate-8"]
    assert (bdir / "acl").read_text().count("pattern write") == 1


def test_provision_tls(tmp_path):
    from cryptography import x509
    out, bdir = tmp_path / "d", tmp_path / "b"
    run("--registry", str(tmp_path / "r.db"), "provision", "rent-1", "--board", "sim-rental", "--out", str(out),
        "--broker-dir", str(bdir), "--tls", "--tls-host", "localhost")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["broker"]["tls"] is True and cfg["broker"]["ca"] == "ca.pem"
    for p in (out / "device.key", bdir / "ca.key", bdir / "server.key"):
        assert mode(p) == 0o600
    ca = x509.load_pem_x509_certificate((bdir / "ca.pem").read_bytes())
    dev = x509.load_pem_x509_certificate((out / "device.pem").read_bytes())
    srv = x509.load_pem_x509_certificate((bdir / "server.pem").read_bytes())
    assert dev.issuer == ca.subject and srv.issuer == ca.subject
    assert dev.subject.rfc4514_string() == "CN=rent-1"
    dev.verify_directly_issued_by(ca)
    srv.verify_directly_issued_by(ca)
    # what the board loads for mutual TLS: the same certificate and its key, DER (no PEM parser there)
    assert (cfg["broker"]["cert"], cfg["broker"]["certkey"]) == ("device.der", "device.key.der")
    assert x509.load_der_x509_certificate((out / "device.der").read_bytes()) == dev
    assert mode(out / "device.key.der") == 0o600


def test_broker_conf_mutual_tls(tmp_path, monkeypatch):
    out, bdir = tmp_path / "d", tmp_path / "b"
    run("--registry", str(tmp_path / "r.db"), "provision", "rent-1", "--board", "sim-rental", "--out", str(out),
        "--broker-dir", str(bdir), "--tls", "--tls-host", "localhost")
    monkeypatch.setenv("EDGEPAY_MQTT_PASSWORD", "cloud-secret-pw")
    crl = tmp_path / "crl.pem"
    crl.write_text("-----BEGIN X509 CRL-----\n-----END X509 CRL-----\n")
    run("broker", "conf", "--broker-dir", str(bdir), "--tls-port", "18883", "--tls-clients", "certificate",
        "--crl", str(crl))
    conf = (bdir / "mosquitto.conf").read_text().split("listener ")
    tls = next(part for part in conf if part.startswith("18883"))
    assert "require_certificate true" in tls and "use_identity_as_username true" in tls
    assert "password_file" not in tls and f"crlfile {crl.resolve()}" in tls
    plain = next(part for part in conf if part.startswith("1883 "))
    assert "password_file" in plain and "require_certificate" not in plain


def test_provision_bad_input(tmp_path):
    reg = str(tmp_path / "r.db")
    base = ["--registry", reg, "provision"]
    bad(*base, "Gate_1", "--board", "sim-gate", says="bad device id")
    bad(*base, "gate-1", "--board", "no-such-board", says="no board 'no-such-board'")
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    bad(*base, "gate-1", "--board", str(junk), says="not valid JSON")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"name": "x", "kind": "toaster"}))
    bad(*base, "gate-1", "--board", str(wrong), says="kind")
    bad(*base, "gate-1", "--board", "sim-gate", "--device-broker", "nohost", says="host:port")
    assert not Path(reg).exists()  # nothing was made for bad input
    run(*base, "gate-1", "--board", "sim-gate", "--out", str(tmp_path / "g1"), "--broker-dir", str(tmp_path / "b"))
    bad(*base, "gate-1", "--board", "sim-gate", "--out", str(tmp_path / "g1b"), "--broker-dir", str(tmp_path / "b"),
        says="already registered")
    run(*base, ok=False, code=2)  # click usage error: missing DEVICE


def _mqtt_attempt(user: str, password: str, port: int) -> bool:
    """Connect to 127.0.0.1:port (retrying while the broker starts): True when CONNACK accepts us."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=user)
    c.username_pw_set(user, password)
    rc = []
    c.on_connect = lambda cl, u, f, reason, pr: rc.append(reason.is_failure)
    for _ in range(50):
        try:
            c.connect("127.0.0.1", port)
            break
        except OSError:
            time.sleep(0.1)
    c.loop_start()
    for _ in range(50):
        if rc:
            break
        time.sleep(0.1)
    c.loop_stop()
    c.disconnect()
    return rc == [False]


def test_provisioned_broker_files_work_with_mosquitto(tmp_path):
    """passwd + acl from provision, conf from `edgepay broker conf`: a real Mosquitto accepts the
    device on its own topics only, and the cloud user on the cloud listener. The conf is used as
    written, also when the suite runs as root (its `user` line: tests/test_cli_deploy.py)."""
    from host_tools.broker import free_port, mosquitto_path
    bdir = tmp_path / "broker"
    run("--registry", str(tmp_path / "r.db"), "provision", "vend-1", "--board", "sim-vending",
        "--out", str(tmp_path / "v1"), "--broker-dir", str(bdir))
    port, cport = free_port(), free_port()
    run("--password", "cloud-pw", "broker", "conf", "--broker-dir", str(bdir), "--port", str(port),
        "--cloud-port", str(cport))
    bad("broker", "conf", "--broker-dir", str(bdir), says="password")
    from host_tools.broker import MAX_PACKET  # the packet bound (global): Mosquitto starts with it below
    assert f"max_packet_size {MAX_PACKET + 1}" in (bdir / "mosquitto.conf").read_text().splitlines()
    proc = subprocess.Popen([mosquitto_path(), "-c", str(bdir / "mosquitto.conf")], stderr=subprocess.PIPE)
    try:
        pw = json.loads((tmp_path / "v1" / "config.json").read_text())["broker"]["password"]
        assert _mqtt_attempt("vend-1", pw, port)
        assert not _mqtt_attempt("vend-1", "wrong", port)
        assert _mqtt_attempt("cloud", "cloud-pw", cport)
        assert not _mqtt_attempt("vend-1", pw, cport)  # devices are not cloud users
    finally:
        proc.kill()
        proc.wait()


# ---- build ----------------------------------------------------------------------------------
def test_build_bundle_manifest_package(tmp_path):
    out = tmp_path / "gate"
    r = run("--json", "build", "--board", "esp32-devkitc-gate", "--out", str(out))
    info = json.loads(r.output)
    mods = set(info["modules"])
    assert {"main.py", "agent.mpy", "hal/flash.mpy"} <= mods  # a board boots main.py only
    assert not any("simflash" in m or m.startswith("hal/sim") for m in mods)  # sim-only: not on a board
    if (ROOT / "firmware" / "apps" / "gate.py").exists():
        assert "apps/gate.mpy" in mods and "apps/vending.mpy" not in mods and "apps/rental.mpy" not in mods
    assert info["mpy_bytes"] == sum(f.stat().st_size for f in (out / "bundle").rglob("*") if f.is_file())
    manifest = (out / "manifest.py").read_text()
    assert 'module("main.py", base_path="src")' in manifest and "simflash" not in manifest
    compile(manifest, "manifest.py", "exec")
    pkg = json.loads((out / "package.json").read_text())
    assert sorted(u[0] for u in pkg["urls"]) == sorted(mods)
    assert all((out / u[1]).is_file() for u in pkg["urls"])
    # a simulated board: the simulator modules, no machine-only drivers
    sim = json.loads(run("--json", "build", "--board", "sim-gate", "--out", str(tmp_path / "sim")).output)
    assert "hal/simflash.mpy" in sim["modules"]
    if (ROOT / "firmware" / "hal" / "mach.py").exists():
        assert "hal/mach.mpy" not in sim["modules"]
    # the human report
    r = run("build", "--board", "pico-w-vending", "--out", str(tmp_path / "pico"))
    assert "total" in r.output and ".mpy bytes" in r.output


def test_build_bad_input(tmp_path):
    bad("build", "--board", "nope", says="no board")
    run("build", ok=False, code=2)


# ---- flash + logs against the fake serial board ---------------------------------------------
@pytest.fixture
def serial_board(tmp_path):
    from tests.serialboard import FakeSerialBoard
    b = FakeSerialBoard(tmp_path / "flash").start()
    yield b
    b.stop()


def test_flash_and_logs_on_fake_serial_board(tmp_path, serial_board):
    """Raw REPL, raw-paste and mpremote's file protocol on the real VM; soft resets as a board does."""
    out = tmp_path / "dev"
    run("--registry", str(tmp_path / "r.db"), "provision", "gate-9", "--board", "sim-gate", "--out", str(out),
        "--broker-dir", str(tmp_path / "b"), "--device-broker", "127.0.0.1:9")  # nothing listens on 9
    built = json.loads(run("--json", "build", "--board", "sim-gate", "--out", str(tmp_path / "bld")).output)
    r = run("--json", "flash", "--board", "sim-gate", "--port", serial_board.port, "--config",
            str(out / "config.json"), "--bundle", built["out"])
    info = json.loads(r.output)
    flash = serial_board.dir
    assert info["verified"] == "sha256"
    assert {"config.json", "board.json"} <= {f["file"] for f in info["files"]}
    for f in info["files"]:
        local = (out / f["file"]) if f["file"] in ("config.json", "board.json") else tmp_path / "bld" / "bundle" / f["file"]
        assert (flash / f["file"]).read_bytes() == local.read_bytes()
    # the board file is the one `build` and `provision` checked; the config carries its SHA-256
    assert (flash / "board.json").read_bytes() == (tmp_path / "bld" / "board.json").read_bytes()
    assert json.loads((flash / "config.json").read_text())["board"]["sha256"] == built["board_sha256"] == \
        hashlib.sha256((flash / "board.json").read_bytes()).hexdigest()
    assert b"soft reboot" in serial_board.transcript  # mpremote soft-reset the board first
    # mpremote's own CLI sees the same files (fs cp back from the board)
    back = tmp_path / "back.json"
    subprocess.run([str(Path(sys.executable).parent / "mpremote"), "connect", serial_board.port, "resume",
                    "fs", "cp", ":config.json", str(back)], check=True, capture_output=True, timeout=30)
    assert back.read_bytes() == (out / "config.json").read_bytes()
    # the agent boots from what was flashed; logs follows it from a soft reset
    r = run("logs", "--port", serial_board.port, "--reset", "--timeout", "30", "--until", r"agent gate-9 boot")
    assert "soft reboot" in r.output and "agent gate-9 boot" in r.output
    r = run("--json", "logs", "--port", serial_board.port, "--timeout", "20", "--lines", "1")
    assert "line" in json.loads(r.output.splitlines()[0])


def test_flash_bad_input(tmp_path, serial_board):
    cfg = tmp_path / "config.json"
    bad("flash", "--board", "nope", "--port", serial_board.port, says="no board")
    cfg.write_text("{bad")
    bad("flash", "--board", "sim-gate", "--port", serial_board.port, "--config", str(cfg), says="not valid JSON")
    cfg.write_text(json.dumps({"device": "d", "kid": "d:1", "key": "zz", "broker": {}, "board": {"kind": "gate"}}))
    bad("flash", "--board", "sim-gate", "--port", serial_board.port, "--config", str(cfg), says="key")
    cfg.write_text(json.dumps({"device": "d", "kid": "d:1", "key": "00" * 32, "broker": {}, "board": {"kind": "vending"}}))
    bad("flash", "--board", "sim-gate", "--port", serial_board.port, "--config", str(cfg), says="vending")
    # a config without the stamp of the board file checked now (unstamped, or another version of it)
    for section in ({"name": "sim-gate", "kind": "gate"}, {"name": "sim-gate", "kind": "gate", "sha256": "ab" * 32}):
        cfg.write_text(json.dumps({"device": "d", "kid": "d:1", "key": "00" * 32, "broker": {}, "board": section}))
        bad("flash", "--board", "sim-gate", "--port", serial_board.port, "--config", str(cfg),
            says="provision the device again (edgepay provision d --board sim-gate)")
    bad("flash", "--board", "sim-gate", "--port", str(tmp_path / "no-tty"), code=3, says="serial port")
    bad("logs", "--port", str(tmp_path / "no-tty"), code=3, says="serial port")
    bad("logs", "--port", serial_board.port, "--timeout", "1", "--until", "(", says="regex")


# ---- cmd, time, watch against a simulated board through a real broker -----------------------
@pytest.fixture
def fleet(broker, tmp_path):
    """A device provisioned with the CLI, running on the VM, and the CLI's environment."""
    from host_tools.sim.board import SimBoard
    reg = tmp_path / "registry.db"
    out = tmp_path / "gate-1"
    run("--registry", str(reg), "provision", "gate-1", "--board", "sim-gate", "--out", str(out),
        "--broker-dir", str(tmp_path / "b"), "--device-broker", f"127.0.0.1:{broker.port}")
    cfg = json.loads((out / "config.json").read_text())
    cfg["settings"] = {"hb_s": 5, "keepalive_s": 4, "backoff_min_ms": 100, "backoff_max_ms": 1000}
    broker.add_user("gate-1", cfg["broker"]["password"])
    (tmp_path / "board").mkdir()
    shutil.copyfile(out / "board.json", tmp_path / "board" / "board.json")  # its stamp is in the config
    board = SimBoard(tmp_path / "board", cfg)
    board.start()
    board.wait_for("online", timeout=30)
    env = {"EDGEPAY_REGISTRY": str(reg), "EDGEPAY_BROKER": f"127.0.0.1:{broker.cloud_port}",
           "EDGEPAY_MQTT_USER": "cloud", "EDGEPAY_MQTT_PASSWORD": "cloud-pw"}
    yield env, board
    board.kill()


def test_cmd_time_outcomes(fleet):
    env, board = fleet
    r = run("--json", "cmd", "gate-1", "get_state", env=env)
    res = json.loads(r.output)
    assert res["state"] == "SUCCEEDED" and res["data"]["board"] == "sim-gate"
    r = run("cmd", "gate-1", "get_state", env=env)
    assert "SUCCEEDED" in r.output
    # before its clock is set, a command that needs time is refused: REJECTED (11)
    r = run("--json", "cmd", "gate-1", "set_config", "hb_s=30", env=env, code=11)
    assert json.loads(r.output)["code"] == "clock_untrusted"
    r = run("time", "gate-1", env=env)  # the device asks, the CLI answers, the clock is checked
    assert "time set" in r.output and "clock trusted" in r.output
    r = run("--json", "time", "--for", "0.5", env=env)  # the fleet's responder, for half a second
    assert json.loads(r.output)["refused"] == 0
    r = run("--json", "cmd", "gate-1", "set_config", "hb_s=30", env=env)
    assert json.loads(r.output)["state"] == "SUCCEEDED"
    run("--json", "cmd", "gate-1", "no_such_command", "--unchecked", env=env, code=11)  # the device's own refusal
    r = run("--json", "cmd", "gate-1", "set_config", "hb_s=1", env=env, code=11)  # out of range
    assert json.loads(r.output)["code"] == "bad_args"
    # no device answering: TIMED_OUT (12), or EXPIRED (13) once the command's exp has passed
    board.kill()
    run("cmd", "gate-1", "get_state", "--timeout", "1", env=env, code=12)
    run("cmd", "gate-1", "get_state", "--timeout", "2.5", "--ttl", "1", env=env, code=13)


def test_cmd_bad_input(fleet, tmp_path):
    env, _ = fleet
    bad("cmd", "nobody", "get_state", env=env, says="unknown device")
    bad("cmd", "gate-1", "open", "1", env=env, code=2, says="key=value")  # argument errors: usage (2)
    bad("cmd", "gate-1", "open", "1=2", "1=3", env=env, code=2, says="twice")
    bad("cmd", "gate-1", "open", "1=2.5", env=env, code=2, says="float")
    bad("cmd", "gate-1", "x" * 30, env=env, code=2, says="command name")
    bad("cmd", "gate-1", "get_state", env=dict(env, EDGEPAY_BROKER="127.0.0.1:1"), code=3, says="unreachable")
    bad("cmd", "gate-1", "get_state", env=dict(env, EDGEPAY_MQTT_PASSWORD="wrong"), code=3)
    bad("cmd", "gate-1", "get_state", env=dict(env, EDGEPAY_MQTT_PASSWORD=""), says="password")
    bad("cmd", "gate-1", "get_state", env=dict(env, EDGEPAY_BROKER="nonsense"), says="host:port")
    bad("cmd", "gate-1", "get_state", env=dict(env, EDGEPAY_REGISTRY=str(tmp_path / "none.db")), says="no registry")
    notdb = tmp_path / "notdb.db"
    notdb.write_bytes(b"this is not a database, it is a key file gone wrong" * 20)
    bad("cmd", "gate-1", "get_state", env=dict(env, EDGEPAY_REGISTRY=str(notdb)), says="cannot open the registry")
    bad("time", "nobody", env=env, says="unknown device")


def test_watch_verified_stream(fleet, tmp_path):
    env, board = fleet
    p = subprocess.Popen([*EDGEPAY, "--json", "watch", "gate-1", "--count", "3", "--duration", "40"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, **env), cwd=ROOT)
    time.sleep(1.5)
    run("cmd", "gate-1", "get_state", env=env)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "Traceback" not in err
    lines = [json.loads(x) for x in out.splitlines()]
    assert lines and all(x["verified"] and x["device"] == "gate-1" for x in lines)
    types = {x["msg"]["type"] for x in lines}
    assert "cmd_result" in types or "heartbeat" in types or "status" in types
    # the human form, briefly
    r = run("watch", "gate-1", "--count", "1", "--duration", "10", env=env)
    assert "gate-1" in r.output


def test_watch_shows_unverified(fleet):
    """A message that does not verify (wrong key) is shown as UNVERIFIED with its error code."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from host_tools.protocol import seal
    env, board = fleet
    board.kill()  # quiet, so the forged message is the one seen (after the retained status)
    p = subprocess.Popen([*EDGEPAY, "--json", "watch", "--count", "3", "--duration", "20"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, **env), cwd=ROOT)
    assert p.stderr is not None
    ready = p.stderr.readline()   # "watching ...": subscribed, so the forged message cannot be missed
    assert ready.startswith("watching"), ready
    c = paho.Client(CallbackAPIVersion.VERSION2)
    c.username_pw_set("cloud", "cloud-pw")
    c.connect("127.0.0.1", int(env["EDGEPAY_BROKER"].split(":")[1]))
    c.loop_start()
    t = "v1/dev/gate-1/up/hb"
    c.publish(t, seal(b"\x01" * 32, b"gate-1:1", t, {"type": "heartbeat", "seq": 9, "uptime": 1, "heap": 1,
                                                      "jdepth": 0, "clock": 0}), qos=1).wait_for_publish(5)
    out, err = p.communicate(timeout=40)
    c.loop_stop()
    lines = [json.loads(x) for x in out.splitlines()]
    assert any(x.get("error") == "bad_mac" and not x["verified"] and x["topic"] == t for x in lines), out


def test_watch_bad_input(tmp_path, broker):
    env = {"EDGEPAY_REGISTRY": str(tmp_path / "none.db"), "EDGEPAY_BROKER": f"127.0.0.1:{broker.cloud_port}",
           "EDGEPAY_MQTT_PASSWORD": "cloud-pw"}
    bad("watch", env=env, says="no registry")
    bad("watch", "Bad/Id", env=env, says="bad device id")
    Registry(tmp_path / "r.db").close()
    env["EDGEPAY_REGISTRY"] = str(tmp_path / "r.db")
    bad("watch", "nobody", env=env, says="unknown device")
    bad("watch", env=dict(env, EDGEPAY_BROKER="127.0.0.1:1"), code=3, says="unreachable")


# ---- ledger ---------------------------------------------------------------------------------
def _records(device: str, key: bytes):
    from host_tools.cloud.ledger import GENESIS, Record, chain_hash
    from host_tools.protocol import decode_payload, seal, verify_mac0
    from host_tools.protocol import topic as topic_for
    kid = f"{device}:1".encode()
    t = topic_for(device, "sess_open")
    out, prev = [], GENESIS
    msgs = [{"type": "sess_open", "seq": 1, "sid": "s1", "payer": "p1", "t0": 1000},
            {"type": "sess_close", "seq": 2, "sid": "s1", "payer": "p1", "t0": 1000, "t1": 1600,
             "amount": 250, "cur": "EUR"},
            {"type": "sess_open", "seq": 3, "sid": "s2", "payer": "p2", "t0": 2000}]
    for m in msgs:
        raw = seal(key, kid, t, dict(m, prev=prev))
        payload = verify_mac0(key, kid, t, raw)
        out.append(Record.from_message(device, decode_payload(payload, t), payload, raw))
        prev = chain_hash(payload)
    return out


def test_ledger_sessions_totals_reconcile(tmp_path):
    from host_tools.cloud.ledger_open import open_ledger
    db = tmp_path / "ledger.db"
    recs = _records("gate-1", os.urandom(32))
    with open_ledger(str(db)) as led:
        led.commit(recs)
    sess = json.loads(run("--json", "ledger", "--db", str(db), "sessions").output)
    assert {(s["sid"], s["state"]) for s in sess} == {("s1", "closed"), ("s2", "open")}
    assert json.loads(run("--json", "ledger", "--db", str(db), "sessions", "--state", "open").output)[0]["sid"] == "s2"
    assert "s1" in run("ledger", "--db", f"sqlite:///{db}").output  # default: sessions
    tot = json.loads(run("--json", "ledger", "--db", str(db), "totals").output)
    assert tot["totals"] == {"EUR": 250} and tot["records"] == 3
    assert "EUR" in run("ledger", "--db", str(db), "totals").output
    journal = tmp_path / "journal.json"
    journal.write_text(json.dumps([{"seq": r.seq, "raw": r.raw.hex()} for r in recs]))
    assert json.loads(run("--json", "ledger", "--db", str(db), "reconcile", "gate-1", str(journal)).output)["ok"]
    journal.write_text("\n".join(json.dumps({"seq": r.seq, "raw": r.raw.hex()}) for r in recs[:2])
                       + "\n" + json.dumps({"seq": 4, "raw": "a0"}))
    r = run("--json", "ledger", "--db", str(db), "reconcile", "gate-1", str(journal), code=4)
    d = json.loads(r.output)
    assert d["missing"] == [4] and d["extra"] == [3] and not d["ok"]


def test_ledger_bad_input(tmp_path):
    bad("ledger", "--db", str(tmp_path / "none.db"), "totals", says="no ledger")
    notdb = tmp_path / "x.db"
    notdb.write_bytes(b"garbage" * 200)
    r = run("ledger", "--db", str(notdb), "totals", ok=False)
    assert "error:" in r.output
    j = tmp_path / "j.json"
    j.write_text("[{\"seq\": \"one\"}]")
    from host_tools.cloud.ledger_open import open_ledger
    open_ledger(str(tmp_path / "l.db")).close()
    bad("ledger", "--db", str(tmp_path / "l.db"), "reconcile", "gate-1", str(j), says="entry 0")
    bad("ledger", "--db", "postgresql://nobody@127.0.0.1:1/none", "totals", code=3, says="cannot open")
    run("ledger", "--db", str(tmp_path / "l.db"), "frobnicate", ok=False, code=2)


def test_console_script_no_traceback(tmp_path):
    """The installed entry point: a bad registry path gives one line on stderr, exit 1."""
    p = subprocess.run([*EDGEPAY, "--registry", str(tmp_path / "nope.db"), "cmd", "d", "get_state"],
                       capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, EDGEPAY_MQTT_PASSWORD="x"),
                       timeout=60)
    assert p.returncode == 1 and "Traceback" not in p.stderr and p.stderr.startswith("error: no registry")
    p = subprocess.run([*EDGEPAY, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 0 and "Exit codes" in p.stdout
