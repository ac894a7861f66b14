"""A new user's path through the `edgepay` CLI (issue 11 §3): what the README and docs promise,
tried as a newcomer would, and every way it went wrong then: --json failures on stdout, the
commands listed and checked before signing, clear file errors, full ledger columns, the broker
told about a new device, sim VMs that die with their parent, keys kept out of the repository."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from host_tools.cli import cli
from tests.test_cli import fleet as fleet  # noqa: F401 - the shared fixture

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


# ---- 2. cmd: the commands listed, checked before signing; an offline device warned about -------
def test_cmd_help_lists_commands_and_arguments():
    r = invoke("cmd", "--help")
    assert r.exit_code == 0
    from host_tools.cloud.cmdspec import COMMANDS
    for name in COMMANDS:
        assert f"  {name} " in r.stdout, name
    assert "1:target" in r.stdout and "3?:hold_s" in r.stdout and "2:cur" in r.stdout


def test_cmd_refuses_unknown_names_and_bad_args_before_anything():
    """No registry, no broker: the check comes first, exit 2 (usage), naming what is valid."""
    env = {"EDGEPAY_REGISTRY": "/nonexistent/registry.db", "EDGEPAY_MQTT_PASSWORD": "x"}
    r = invoke("cmd", "gate-1", "opne", "1=0", env=env)
    assert r.exit_code == 2 and "unknown command 'opne'" in r.stderr and "did you mean open" in r.stderr
    assert "get_state" in r.stderr  # the valid names
    for args, says in [(["open"], "needs 1:target"), (["open", "target=x"], "must be an unsigned integer"),
                       (["open", "9=1"], "no argument 9"), (["open", "1=-1"], "unsigned integer"),
                       (["set_tariff", "1=1", "2=eur"], "currency code"),
                       (["display", "1=" + "x" * 65], "1-64 bytes"),
                       (["get_state", "1=1"], "its arguments are none"),
                       (["set_config", "1=2"], "by name"), (["auth", "1=s", "2=yes"], "true or false")]:
        r = invoke("cmd", "gate-1", *args, env=env)
        assert r.exit_code == 2 and says in r.stderr, (args, r.stderr)
    obj = json_failure("cmd", "gate-1", "reboot", "delay=5", code=2, name="usage", env=env)
    assert "1?:delay_s" in obj["error"]
    # by name or by key, and --unchecked passes a name the table does not know: on to the registry
    from host_tools.cloud.cmdspec import check
    assert check("open", {"target": 1, "hold_s": 5}) == {1: 1, 3: 5}
    assert check("cancel_session", {1: 42}) == {1: "42"}
    r = invoke("cmd", "gate-1", "future_cmd", "--unchecked", env=env)
    assert r.exit_code == 1 and "no registry" in r.stderr


def test_cmd_warns_when_retained_status_says_offline(fleet):  # noqa: F811
    env, board = fleet
    r = invoke("cmd", "gate-1", "get_state", env=env)
    assert r.exit_code == 0 and "offline" not in r.stderr
    board.kill()  # the broker publishes the device's will: status online=false, retained
    time.sleep(1.0)
    r = invoke("cmd", "gate-1", "get_state", "--timeout", "1", env=env)
    assert r.exit_code == 12, r.output  # still sent (TIMED_OUT, not refused)
    assert "retained status says offline" in r.stderr


# ---- 3. --ca: a missing or bad CA file is said so, not "cannot connect to the broker" ----------
def test_ca_file_missing_or_bad_is_named(tmp_path):
    reg, _ = provision(tmp_path)
    base = ["--registry", str(reg), "--broker", "127.0.0.1:1", "--password", "x"]
    for cmd in (["cmd", "gate-1", "get_state"], ["watch", "gate-1", "--count", "1"]):
        r = invoke(*base, "--ca", str(tmp_path / "missing.pem"), *cmd)
        assert r.exit_code == 1 and "the CA file" in r.stderr and "does not exist" in r.stderr, r.stderr
        assert "connect" not in r.stderr
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    r = invoke(*base, "--ca", str(junk), "cmd", "gate-1", "get_state")
    assert r.exit_code == 1 and "not a PEM CA certificate" in r.stderr, r.stderr
    json_failure(*base, "--ca", str(tmp_path), "cmd", "gate-1", "get_state", code=2, name="usage",
                 says="is a directory")


# ---- 4. ledger: full values when piped, ISO 8601 UTC times -------------------------------------
def _ledger(tmp_path: Path, device: str) -> Path:
    from host_tools.cloud.ledger_open import open_ledger
    from tests.test_cli import _records
    db = tmp_path / "ledger.db"
    with open_ledger(str(db)) as led:
        led.commit(_records(device, os.urandom(32)))
    return db


def test_ledger_piped_full_values_iso_times(tmp_path):
    dev = "gate-north-entrance-lane-0001"
    db = _ledger(tmp_path, dev)
    r = invoke("ledger", "--db", str(db), "sessions")  # not a terminal: tab-separated, whole
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0].split("\t") == ["device", "sid", "state", "payer", "amount", "t0", "t1", "offline", "reason"]
    rows = {ln.split("\t")[1]: ln.split("\t") for ln in lines[1:]}
    assert rows["s1"][0] == dev and rows["s1"][4] == "250 EUR"
    assert rows["s1"][5] == "1970-01-01T00:16:40Z" and rows["s1"][6] == "1970-01-01T00:26:40Z"
    assert "…" not in r.stdout
    assert json.loads(invoke("--json", "ledger", "--db", str(db)).stdout)[0]["t0"] in (1000, 2000)  # JSON: seconds
    r = invoke("ledger", "--db", str(db), "totals")
    assert r.stdout.splitlines()[1] == "EUR\t250"


def test_ledger_terminal_table_folds_never_truncates(tmp_path):
    dev = "gate-north-entrance-lane-0001"
    db = _ledger(tmp_path, dev)
    def table(columns: int) -> str:
        p = subprocess.run([*EDGEPAY, "ledger", "--db", str(db)], capture_output=True, text=True, cwd=ROOT,
                           env=dict(os.environ, FORCE_COLOR="1", NO_COLOR="1", COLUMNS=str(columns)), timeout=60)
        assert p.returncode == 0 and "│" in p.stdout, p.stdout  # the rich table
        return p.stdout
    assert "…" not in table(70)  # narrow: cells fold
    wide = table(200)
    assert dev in wide and "1970-01-01T00:16:40Z" in wide and "…" not in wide


# ---- 5. provisioning while Mosquitto runs: the broker is reloaded, or the command said -------
def test_provision_reloads_the_running_broker(tmp_path):
    """`edgepay broker conf` + `mosquitto -c` (as docs/broker.md says): a device provisioned while
    it runs is accepted at once (SIGHUP through the conf's pid_file), not refused with CONNACK 5."""
    import time as _t

    from host_tools.broker import free_port, mosquitto_path
    from tests.test_cli import _mqtt_attempt
    bdir = tmp_path / "broker"
    reg = str(tmp_path / "r.db")
    invoke("--registry", reg, "provision", "vend-1", "--board", "sim-vending", "--out", str(tmp_path / "v1"),
           "--broker-dir", str(bdir))
    port, cport = free_port(), free_port()
    assert invoke("--password", "cloud-pw", "broker", "conf", "--broker-dir", str(bdir), "--port", str(port),
                  "--cloud-port", str(cport)).exit_code == 0
    assert f"pid_file {bdir.resolve() / 'mosquitto.pid'}" in (bdir / "mosquitto.conf").read_text()
    proc = subprocess.Popen([mosquitto_path(), "-c", str(bdir / "mosquitto.conf")], stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if (bdir / "mosquitto.pid").exists() and _mqtt_attempt("cloud", "cloud-pw", cport):
                break
            _t.sleep(0.05)
        r = invoke("--json", "--registry", reg, "provision", "vend-2", "--board", "sim-vending",
                   "--out", str(tmp_path / "v2"), "--broker-dir", str(bdir))
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["broker_reload"] == {"reloaded": proc.pid}
        pw = json.loads((tmp_path / "v2" / "config.json").read_text())["broker"]["password"]
        ok = False
        for _ in range(40):  # the reload is asynchronous: a few ms
            ok = _mqtt_attempt("vend-2", pw, port)
            if ok:
                break
            _t.sleep(0.05)
        assert ok, "the new device is refused: the broker was not reloaded"
    finally:
        proc.kill()
        proc.wait()


def test_provision_names_the_reload_for_a_broker_it_does_not_manage(tmp_path):
    """A Mosquitto configured elsewhere that reads these files: the exact command, on stderr."""
    from host_tools.broker import Broker
    bdir = tmp_path / "broker"
    bdir.mkdir()
    (tmp_path / "other").mkdir()
    with Broker(workdir=tmp_path / "other", extra_conf=f"# its devices: {bdir.resolve() / 'passwd'}") as b:
        r = invoke("--json", "--registry", str(tmp_path / "r.db"), "provision", "vend-3", "--board", "sim-vending",
                   "--out", str(tmp_path / "v3"), "--broker-dir", str(bdir))
        assert r.exit_code == 0
        assert json.loads(r.stdout)["broker_reload"]["reload"] == f"kill -HUP {b.proc.pid}"
        assert f"kill -HUP {b.proc.pid}" in r.stderr and "CONNACK 5" in r.stderr
    # nothing running that reads them: nothing said
    r = invoke("--registry", str(tmp_path / "r.db"), "provision", "vend-4", "--board", "sim-vending",
               "--out", str(tmp_path / "v4"), "--broker-dir", str(bdir))
    assert r.exit_code == 0 and "warning" not in r.stderr


# ---- 6. a sim board's VM ends with its parent, whatever signal ends the parent ---------------
def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the death signal is Linux's (setpriv)")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_sim_board_vm_dies_with_the_example(tmp_path, broker, sig):
    import signal as _signal
    out = tmp_path / "gate-001"
    assert invoke("--registry", str(tmp_path / "registry.db"), "provision", "gate-001", "--board", "sim-gate",
                  "--out", str(out), "--broker-dir", str(tmp_path / "b"),
                  "--device-broker", f"127.0.0.1:{broker.port}").exit_code == 0
    broker.add_user("gate-001", json.loads((out / "config.json").read_text())["broker"]["password"])
    p = subprocess.Popen([sys.executable, str(ROOT / "examples" / "sim_board.py"), str(out / "config.json"),
                          str(tmp_path / "flash")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    try:
        assert p.stdout is not None
        deadline = time.monotonic() + 30
        for line in p.stdout:
            if "online" in line or time.monotonic() > deadline:
                break
        vms = _children(p.pid)
        assert len(vms) == 1 and _alive(vms[0]), vms
        p.send_signal(getattr(_signal, sig))
        p.wait(15)
        for _ in range(100):
            if not _alive(vms[0]):
                break
            time.sleep(0.05)
        assert not _alive(vms[0]), f"the VM outlived its parent ({sig})"
        if sig == "SIGTERM":  # a clean stop: the example said so
            assert "board exited: stopped" in p.stdout.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# ---- 7. keys written inside a checkout stay out of git -----------------------------------------
def test_default_state_dir_is_ignored_by_git(tmp_path):
    repo = tmp_path / "someones-repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([*EDGEPAY, "provision", "gate-001", "--board", "sim-gate"], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert (repo / "edgepay" / "devices" / "gate-001" / "config.json").exists()
    assert (repo / "edgepay" / ".gitignore").read_text().splitlines()[-1] == "*"
    st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=repo, capture_output=True,
                        text=True, check=True).stdout
    assert st == "", st  # neither the key, the broker passwd, the registry nor the .gitignore itself
    # an --out made elsewhere: its topmost new directory is ignored too; an existing one is not touched
    p = subprocess.run([*EDGEPAY, "--registry", "state/r.db", "provision", "gate-002", "--board", "sim-gate",
                        "--out", "keys/gate-002", "--broker-dir", "edgepay/broker"], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert (repo / "keys" / ".gitignore").exists() and (repo / "state" / ".gitignore").exists()
    assert not (repo / "keys" / "gate-002" / ".gitignore").exists()  # only the top: flash copies no extras
    assert subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout == ""


# ---- 8. real boards: an explicit broker address, and no sim config flashed to them -------------
def test_real_board_needs_device_broker_and_refuses_sim_config(tmp_path):
    reg = str(tmp_path / "r.db")
    r = invoke("--registry", reg, "provision", "gate-001", "--board", "esp32-devkitc-gate",
               "--out", str(tmp_path / "g"), "--broker-dir", str(tmp_path / "b"))
    assert r.exit_code == 2 and "real board" in r.stderr and "--device-broker" in r.stderr, r.stderr
    assert not (tmp_path / "g").exists() and not (tmp_path / "r.db").exists()  # nothing made
    r = invoke("--registry", reg, "provision", "gate-001", "--board", "esp32-devkitc-gate", "--out",
               str(tmp_path / "g"), "--broker-dir", str(tmp_path / "b"), "--device-broker", "127.0.0.1:1883")
    assert r.exit_code == 0 and "is the board itself" in r.stderr  # explicit: allowed, with a warning
    r = invoke("--registry", reg, "provision", "gate-002", "--board", "esp32-devkitc-gate", "--out",
               str(tmp_path / "g2"), "--broker-dir", str(tmp_path / "b"), "--device-broker", "192.168.1.10:1883")
    assert r.exit_code == 0 and "warning" not in r.stderr
    # a sim board's config on a real board: refused before the port is opened
    _, sim = provision(tmp_path / "s", "gate-003")
    r = invoke("flash", "--board", "esp32-devkitc-gate", "--port", str(tmp_path / "no-tty"),
               "--config", str(sim / "config.json"))
    assert r.exit_code == 1 and "sim board 'sim-gate'" in r.stderr and "real board" in r.stderr, r.stderr


# ---- 11. journal export over a board's serial port, reconciled with the ledger ------------------
@pytest.fixture
def serial_board(tmp_path):
    from tests.serialboard import FakeSerialBoard
    b = FakeSerialBoard(tmp_path / "flash").start()
    yield b
    b.stop()


def test_journal_export_from_a_serial_board_reconciles(tmp_path, serial_board):
    """Records journaled on the board (the firmware's own Journal on its littlefs) come back over
    the serial port as the JOURNAL `ledger reconcile` reads, and agree with the ledger's copy."""
    import hashlib

    from mpremote.transport_serial import SerialTransport

    from host_tools.cloud.ledger_open import open_ledger
    from host_tools.protocol import verify_mac0
    from host_tools.protocol import topic as topic_for
    from tests.test_cli import _records
    reg, out = provision(tmp_path, "gate-1")
    cfg = json.loads((out / "config.json").read_text())
    built = json.loads(invoke("--json", "build", "--board", "sim-gate", "--out", str(tmp_path / "bld")).stdout)
    r = invoke("--json", "flash", "--board", "sim-gate", "--port", serial_board.port, "--config",
               str(out / "config.json"), "--bundle", built["out"], "--no-reset")
    assert r.exit_code == 0, r.output
    recs = _records("gate-1", bytes.fromhex(cfg["key"]))
    t = topic_for("gate-1", "sess_open")
    lines = ["import board, config", "from hal import flash", "from journal import Journal",
             "b = board.load(config.load()['board'])",
             "j = Journal(flash.mount(b) + '/j', b['journal'].get('capacity', 32768), prog=flash.progsize)"]
    for rec in recs:  # as firmware/uplink.py journals a record: the envelope, the payload's hash
        h = hashlib.sha256(verify_mac0(bytes.fromhex(cfg["key"]), b"gate-1:1", t, rec.raw)).digest()[:16]
        lines.append(f"j.append({rec.seq}, bytes.fromhex('{rec.raw.hex()}'), bytes.fromhex('{h.hex()}'), True)")
    tr = SerialTransport(serial_board.port, baudrate=115200)
    try:
        tr.enter_raw_repl(soft_reset=True)
        tr.exec("\n".join(lines) + "\n")
        tr.exit_raw_repl()
    finally:
        tr.close()
    jl = tmp_path / "gate-1.jsonl"
    r = invoke("--json", "journal", "export", "--port", serial_board.port, "--out", str(jl), "--no-reset")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["records"] == 3 and summary["last_seq"] == 3 and summary["acked"] == 0
    got = [json.loads(ln) for ln in jl.read_text().splitlines()]
    assert [(g["seq"], g["raw"]) for g in got] == [(rec.seq, rec.raw.hex()) for rec in recs]
    db = tmp_path / "ledger.db"
    with open_ledger(str(db)) as led:
        led.commit(recs)
    r = invoke("--json", "ledger", "--db", str(db), "reconcile", "gate-1", str(jl))
    assert r.exit_code == 0 and json.loads(r.stdout)["ok"], r.output
    # to stdout without --out: the same lines, the summary on stderr
    r = invoke("journal", "export", "--port", serial_board.port, "--no-reset")
    assert r.exit_code == 0 and r.stdout == jl.read_text() and "exported 3 records" in r.stderr


def test_journal_export_bad_input(tmp_path, serial_board):
    r = invoke("journal", "export", "--port", str(tmp_path / "no-tty"))
    assert r.exit_code == 3 and "serial port" in r.stderr
    # a board with no config on its flash: the device's own error, one line
    r = invoke("journal", "export", "--port", serial_board.port, "--no-reset")
    assert r.exit_code == 1 and "could not open its journal" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_journal_export_from_a_sim_boards_flash_reconciles(tmp_path):
    """A stopped sim board's journal, read from its flash image (the firmware's Journal on the VM,
    over a copy): the records it holds come back as the JOURNAL `ledger reconcile` reads."""
    import hashlib
    import subprocess

    from host_tools.build import compile_firmware, micropython
    from host_tools.cloud.ledger_open import open_ledger
    from host_tools.protocol import topic as topic_for
    from host_tools.protocol import verify_mac0
    from tests.test_cli import _records
    reg, out = provision(tmp_path, "gate-1")
    cfg = json.loads((out / "config.json").read_text())
    from host_tools.boardcheck import device_board
    bdef = device_board(out)  # board.json beside the config, which carries its stamp
    fc = bdef["flash"]
    recs = _records("gate-1", bytes.fromhex(cfg["key"]))
    t = topic_for("gate-1", "sess_open")
    appends = []
    for rec in recs:  # as firmware/uplink.py journals a record: the envelope, the payload's hash
        h = hashlib.sha256(verify_mac0(bytes.fromhex(cfg["key"]), b"gate-1:1", t, rec.raw)).digest()[:16]
        appends.append(f"j.append({rec.seq}, bytes.fromhex('{rec.raw.hex()}'), bytes.fromhex('{h.hex()}'), True)")
    image = out / "flash.bin"
    image.write_bytes(b"\xff" * (fc.get("blocks", 128) + 64) * 4096)   # a blank chip, as a new board's
    from host_tools.sim.flashfs import vm_blockdev
    script = vm_blockdev(image, 0, fc.get("blocks", 128), 4096, writable=True) + "\n".join([
        "import vfs", "from journal import Journal",
        "vfs.VfsLfs2.mkfs(Dev(), readsize=128, progsize=16, lookahead=32)",
        "vfs.mount(vfs.VfsLfs2(Dev(), readsize=128, progsize=16, lookahead=32, mtime=False), '/jfs')",
        f"j = Journal('/jfs/j', {bdef['journal'].get('capacity', 32768)}, prog=16)",
        *appends, "j.ack(1)", "print('done')"])
    r = subprocess.run([micropython(), "-c", script], capture_output=True, text=True, timeout=60,
                       env={"MICROPYPATH": str(compile_firmware())})
    assert r.returncode == 0 and "done" in r.stdout, r.stderr
    before = image.read_bytes()
    jl = tmp_path / "gate-1.jsonl"
    r = invoke("--json", "journal", "export", "--board-dir", str(out), "--out", str(jl))
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["records"] == 2 and summary["last_seq"] == 3 and summary["acked"] == 1
    got = [json.loads(ln) for ln in jl.read_text().splitlines()]
    assert [(g["seq"], g["raw"]) for g in got] == [(rec.seq, rec.raw.hex()) for rec in recs[1:]]
    assert image.read_bytes() == before   # read from a copy: the board's image is untouched
    db = tmp_path / "ledger.db"
    with open_ledger(str(db)) as led:
        led.commit(recs)
    r = invoke("--json", "ledger", "--db", str(db), "reconcile", "gate-1", str(jl), "--from-seq", "2")
    assert r.exit_code == 0 and json.loads(r.stdout)["ok"], r.output
    # refused: both sources, neither, a directory that is no board, a board that never booted
    assert invoke("journal", "export", "--port", "x", "--board-dir", str(out)).exit_code == 2
    assert invoke("journal", "export").exit_code == 2
    r = invoke("journal", "export", "--board-dir", str(tmp_path / "nothing"))
    assert r.exit_code == 1 and "not a provisioned board" in r.stderr
    image.unlink()
    r = invoke("journal", "export", "--board-dir", str(out))
    assert r.exit_code == 1 and "never booted" in r.stderr
