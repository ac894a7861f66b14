"""Board definitions: every boards/*.json passes the host's full check (boards/schema.json with
jsonschema, and host_tools/boardcheck.py's rules a schema cannot say), which refuses every broken
board naming the field; the device no longer re-checks the rules (firmware/board.py): it reads the
board file the host wrote and stamped (board.json, its SHA-256 in config.json), tested here on the VM
and, at boot, in tests/test_hal_vm.py."""
import copy
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from host_tools.boardcheck import device_bytes, device_form
from host_tools.build import compile_firmware
from tests.vm import micropython

ROOT = Path(__file__).resolve().parents[1]
BOARDS = ROOT / "boards"
FILES = sorted(p for p in BOARDS.glob("*.json") if p.name != "schema.json")

# Reads a JSON list of [path, stamp] (a stamped board file) or a config "board" section on stdin;
# prints, as JSON, "ok <name> <peripherals>" or the ConfigError text for each.
VM_CHECK = """
import sys, json
import board
from config import ConfigError
out = []
for d in json.loads(sys.stdin.read()):
    try:
        b = board.read(d[1], d[0]) if isinstance(d, list) else board.load(d)
        out.append("ok " + b.name + " " + ",".join(sorted(b.peripherals)))
    except ConfigError as e:
        out.append(str(e))
print(json.dumps(out))
"""


def load(name):
    return json.loads((BOARDS / name).read_text())


@pytest.fixture(scope="module")
def schema():
    return json.loads((BOARDS / "schema.json").read_text())


@pytest.fixture(scope="module")
def validator(schema):
    jsonschema = pytest.importorskip("jsonschema")
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.fixture(scope="module")
def fw_check(tmp_path_factory):
    bundle = compile_firmware()
    script = tmp_path_factory.mktemp("vm") / "board_check.py"
    script.write_text(VM_CHECK)

    def check(boards, cwd=None):
        p = subprocess.run([micropython(), "-X", "heapsize=256K", str(script)], input=json.dumps(boards),
                           capture_output=True, text=True, timeout=60, check=False, cwd=cwd or script.parent,
                           env=dict(os.environ, MICROPYPATH=f"{bundle}:.frozen"))
        assert p.returncode == 0, p.stdout + p.stderr
        return json.loads(p.stdout.strip().splitlines()[-1])
    return check


def test_there_is_a_board_of_each_kind_and_a_sim_twin():
    names = {p.stem for p in FILES}
    assert {"esp32-devkitc-gate", "pico-w-vending", "esp32-s3-rental", "sim-gate", "sim-vending", "sim-rental"} <= names
    for real, sim in (("esp32-devkitc-gate", "sim-gate"), ("pico-w-vending", "sim-vending"),
                      ("esp32-s3-rental", "sim-rental")):
        r, s = load(real + ".json"), load(sim + ".json")
        assert s["sim"] is True and not r.get("sim")
        assert s["peripherals"] == r["peripherals"] and s["kind"] == r["kind"] and s["mcu"] == r["mcu"]
        assert r["name"] == real and s["name"] == sim


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_board_file_valid_against_schema(validator, path):
    errors = [e.message for e in validator.iter_errors(json.loads(path.read_text()))]
    assert errors == []


def test_board_files_pass_the_host_check_and_read_on_the_vm(fw_check, tmp_path):
    """Each board file, as the host writes it (checked, documentation dropped), reads on the device."""
    items, want = [], []
    for p in FILES:
        d = json.loads(p.read_text())
        raw = device_bytes(d)
        assert json.loads(raw) == device_form(d) and b"description" not in raw
        (tmp_path / p.name).write_bytes(raw)
        items.append([str(tmp_path / p.name), hashlib.sha256(raw).hexdigest()])
        want.append(f"ok {d['name']} " + ",".join(sorted(d["peripherals"])))
    assert fw_check(items) == want


def _broken():
    """(id, board dict, text the host's first problem must contain): each fails jsonschema too."""
    gate, vend, rent = load("sim-gate.json"), load("sim-vending.json"), load("sim-rental.json")
    real = load("esp32-devkitc-gate.json")
    cases = []

    def case(cid, base, fn, want):
        d = copy.deepcopy(base)
        fn(d)
        cases.append(pytest.param(d, want, id=cid))

    case("missing-kind", gate, lambda d: d.pop("kind"), "'kind' must be gate, vending or rental, not None")
    case("unknown-kind", gate, lambda d: d.update(kind="kiosk"), "'kind' must be gate, vending or rental, not 'kiosk'")
    case("missing-mcu", gate, lambda d: d.pop("mcu"), "(top): 'mcu' is a required property")
    case("unknown-mcu", gate, lambda d: d.update(mcu="esp8266"), "mcu: 'esp8266' is not one of")
    case("bad-name", gate, lambda d: d.update(name="Sim Gate"), "name: 'Sim Gate' does not match")
    case("missing-heap", gate, lambda d: d.pop("heap_kb"), "(top): 'heap_kb' is a required property")
    case("heap-too-small", gate, lambda d: d.update(heap_kb=8), "heap_kb: 8 is less than the minimum of 16")
    case("wdt-wrong-type", gate, lambda d: d.update(wdt_ms="10s"), "wdt_ms: '10s' is not of type 'integer'")
    case("missing-journal-capacity", gate, lambda d: d.update(journal={}), "journal: 'capacity' is a required property")
    case("flash-two-regions", real, lambda d: d["flash"].update(start=0, len=65536), "flash: {'label': 'journal', 'start': 0, 'len': 65536} is valid under each of")
    case("sim-flash-without-blocks", gate, lambda d: d.update(flash={"label": "journal"}), "flash: 'blocks' is a required property")
    case("unknown-top-field", gate, lambda d: d.update(colour="red"), "(top): Additional properties are not allowed ('colour' was unexpected)")
    case("no-peripherals", gate, lambda d: d.update(peripherals={}), "peripherals: {} should be non-empty")
    case("unknown-peripheral-type", gate, lambda d: d["peripherals"]["entry_barrier"].update(type="teleporter"),
         "peripherals/entry_barrier/type: 'teleporter' is not one of")
    case("driver-cannot-drive", gate, lambda d: d["peripherals"]["entry_barrier"].update(driver="uart"),
         "peripherals/entry_barrier/driver: 'gpio' was expected")
    case("barrier-without-pin", gate, lambda d: d["peripherals"]["entry_barrier"].pop("pin"),
         "peripherals/entry_barrier: 'pin' is a required property")
    case("pin-and-pins", gate, lambda d: d["peripherals"]["led"].update(pins=[1]), "peripherals/led: {'type': 'indicator', 'driver': 'gpio', 'pin': 13, 'pins': [1]} is valid under each of")
    case("pin-out-of-range", gate, lambda d: d["peripherals"]["entry_barrier"].update(pin=40),
         "peripherals/entry_barrier/pin: 40 is greater than the maximum of 39")
    case("pin-on-spi-flash", gate, lambda d: d["peripherals"]["entry_barrier"].update(pin=7), "peripherals/entry_barrier/pin: 7 should not be valid under {'enum': [6, 7, 8, 9, 10, 11]}")
    case("pico-radio-pin", vend, lambda d: d["peripherals"]["door_lock"].update(pin=23), "peripherals/door_lock/pin: 23 should not be valid under {'enum': [23, 24, 25]}")
    case("s3-no-such-gpio", rent, lambda d: d["peripherals"]["led"].update(pin=24), "peripherals/led/pin: 24 should not be valid under")
    case("negative-pin", gate, lambda d: d["peripherals"]["led"].update(pin=-1), "peripherals/led/pin: -1 is less than the minimum of 0")
    case("pin-wrong-type", gate, lambda d: d["peripherals"]["led"].update(pin="13"), "peripherals/led/pin: '13' is not of type 'integer'")
    case("bad-uart-pin", gate, lambda d: d["peripherals"]["entry_camera"]["uart"].update(rx=6), "peripherals/entry_camera/uart/rx: 6 should not be valid under")
    case("uart-missing-baud", gate, lambda d: d["peripherals"]["entry_camera"]["uart"].pop("baud"),
         "peripherals/entry_camera/uart: 'baud' is a required property")
    case("scanner-without-kind", gate, lambda d: d["peripherals"]["entry_camera"].pop("kind"), "peripherals/entry_camera: 'kind' is a required property")
    case("scanner-bad-kind", gate, lambda d: d["peripherals"]["entry_camera"].update(kind="barcode"),
         "peripherals/entry_camera/kind: 'barcode' is not one of ['plate', 'qr', 'rfid']")
    case("scanner-with-pin", gate, lambda d: d["peripherals"]["entry_camera"].update(pin=4), "peripherals/entry_camera: {")
    case("scale-without-sck", vend, lambda d: d["peripherals"]["scale"].pop("sck"), "peripherals/scale: 'sck' is a required property")
    case("scale-bad-calibration", vend, lambda d: d["peripherals"]["scale"].update(per_gram=0), "peripherals/scale/per_gram: 0 is less than or equal to the minimum of 0")
    case("ssd1306-without-i2c", gate, lambda d: d["peripherals"]["display"].pop("i2c"), "peripherals/display: 'i2c' is a required property")
    case("unknown-peripheral-field", gate, lambda d: d["peripherals"]["led"].update(colour="red"),
         "peripherals/led: Additional properties are not allowed ('colour' was unexpected)")
    case("bad-peripheral-name", gate, lambda d: d["peripherals"].update({"Big LED": {"type": "indicator", "driver": "gpio", "pin": 15}}),
         "peripherals: 'Big LED' does not match")
    case("rental-without-slots", rent, lambda d: d.pop("slots"), "(top): 'slots' is a required property")
    case("slots-on-a-gate", gate, lambda d: d.update(slots=2), "(top): {'name': 'sim-gate'")
    case("slot-mismatch-locks", rent, lambda d: d["peripherals"]["locks"]["pins"].pop(), "peripherals/locks/pins: [4, 5, 6, 7, 15, 16, 17] is too short")
    case("slot-mismatch-count", rent, lambda d: d.update(slots=6), "peripherals/locks/pins: [4, 5, 6, 7, 15, 16, 17, 18] is too long")
    case("group-without-slots", vend, lambda d: d["peripherals"]["door_lock"].update(pins=[15], pin=None) or
         d["peripherals"]["door_lock"].pop("pin"), "peripherals/door_lock: {")
    return cases


# Rules a JSON Schema cannot say (host_tools/boardcheck.py); jsonschema accepts these.
HOST_ONLY = [
    ("pin-used-twice", "sim-gate.json", lambda d: d["peripherals"]["led"].update(pin=26), "pin 26 already used by 'entry_barrier'"),
    ("journal-too-big", "sim-gate.json", lambda d: d["journal"].update(capacity=262144), "does not fit its flash region"),
    ("rental-without-lock-group", "sim-rental.json",
     lambda d: d["peripherals"]["locks"].update(type="relay"), "per-slot 'lock' group"),
]


BROKEN = _broken()


def _host(d):
    from host_tools.cli.common import check_board
    return check_board(d)


@pytest.mark.parametrize("d,want", BROKEN)
def test_broken_board_rejected_by_schema_and_host(validator, d, want):
    """The host's full check refuses it naming the field; the device never sees it (it reads only
    board files the host wrote and stamped)."""
    assert list(validator.iter_errors(d)), "jsonschema accepted it"
    got = _host(d)
    assert got and want in got[0], got
    from host_tools.boardcheck import BoardError
    with pytest.raises(BoardError, match="^board "):
        device_bytes(d)  # nothing is written or stamped for it


@pytest.mark.parametrize("cid,base,fn,want", HOST_ONLY, ids=[c[0] for c in HOST_ONLY])
def test_host_checks_the_rules_a_schema_cannot_say(validator, cid, base, fn, want):
    d = load(base)
    fn(d)
    assert not list(validator.iter_errors(d))  # documented in the schema's description
    got = _host(d)
    assert got and want in got[0], got


def test_the_host_check_fails_closed(monkeypatch, tmp_path):
    """The device does not re-check the rules, so the host never passes a board it could not check."""
    import builtins

    from host_tools import boardcheck
    real = builtins.__import__

    def no_jsonschema(name, *a, **kw):
        if name == "jsonschema":
            raise ImportError(name)
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_jsonschema)
    assert "jsonschema is not installed" in _host(load("sim-gate.json"))[0]
    monkeypatch.setattr(builtins, "__import__", real)
    broken = tmp_path / "schema.json"
    broken.write_text('{"type": 12}')
    assert "is not a usable schema" in boardcheck.schema_problems(load("sim-gate.json"), broken)[0]


def test_legacy_board_section_still_loads(fw_check, tmp_path):
    """A config "board" section with only name/kind (pre-board-file configs, and configs without a
    board file: config.py checks the name and kind) is a board without peripherals; a whole
    definition in it is an unchecked one."""
    assert fw_check([{"name": "sim-gate", "kind": "gate"},
                     {"name": "sim-gate", "kind": "gate", "journal": {"capacity": 32768}, "flash": {"blocks": 64}},
                     load("sim-gate.json")], cwd=tmp_path) == \
        ["ok sim-gate ", "ok sim-gate ",
         "board file board.json not found (config.json holds an unstamped board definition): it does not "
         "match what the host checked; rebuild with `edgepay build` and flash it with its config"]


# ---- the host refuses a journal over the main filesystem, which the device cannot see -------------
# (id, change to pico-w-vending, what the host says); the device cannot see its own flash layout
LAYOUT = [
    ("journal-over-fs", lambda d: d["flash"].update(start=0), "overlaps the main filesystem 'fs' 0..606208"),
    ("journal-tail-in-fs", lambda d: d["flash"].update(start=602112), "overlaps the main filesystem"),
    ("no-fs-declared", lambda d: d.pop("fs"), "needs 'fs'"),
    ("past-the-storage-area", lambda d: d["flash"].update(len=266240), "ends past the storage area (868352"),
    ("fs-on-a-partition-board", None, "'fs' is for boards whose journal is a 'start'/'len' flash region"),
]


@pytest.mark.parametrize("cid,fn,want", LAYOUT, ids=[c[0] for c in LAYOUT])
def test_journal_region_outside_the_main_filesystem(validator, cid, fn, want):
    if fn is None:
        d = load("esp32-devkitc-gate.json")
        d["fs"] = {"start": 0, "len": 65536}
    else:
        d = load("pico-w-vending.json")
        fn(d)
    assert not list(validator.iter_errors(d))  # the schema cannot say it
    got = _host(d)
    assert got and want in got[0], got


def test_pico_w_layout_fits_micropython_rp2():
    """MicroPython's RPI_PICO_W: 2 MiB flash, firmware first, then an 848 KiB storage area that
    rp2.Flash(start, len) addresses from 0. The journal takes its top, 4x its capacity; `/` the rest."""
    d = load("pico-w-vending.json")
    storage = 848 * 1024
    assert d["flash_kb"] == 2048 and d["fs"] == {"start": 0, "len": storage - d["flash"]["len"], "storage": storage}
    assert d["flash"]["start"] + d["flash"]["len"] == storage and d["flash"]["start"] % 4096 == 0
    assert d["flash"]["len"] >= 4 * d["journal"]["capacity"]
    assert _host(d) == []


def test_cli_refuses_such_boards_naming_the_field(tmp_path):
    from tests.test_cli import bad
    cases = {"twice": (load("sim-gate.json"), lambda d: d["peripherals"]["led"].update(pin=26),
                       "peripheral 'led' pin 26 already used by 'entry_barrier'"),
             "overlap": (load("pico-w-vending.json"), lambda d: d["flash"].update(start=0),
                         "overlaps the main filesystem 'fs'")}
    for name, (d, fn, want) in cases.items():
        fn(d)
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(d))
        bad("build", "--board", str(p), "--out", str(tmp_path / "out"), says=want)
        bad("--registry", str(tmp_path / "r.db"), "provision", "gate-1", "--board", str(p), "--out",
            str(tmp_path / "dev"), "--broker-dir", str(tmp_path / "b"), says=want)
        bad("flash", "--board", str(p), "--port", str(tmp_path / "no-tty"), says=want)
    assert not (tmp_path / "out").exists() and not (tmp_path / "dev").exists()
