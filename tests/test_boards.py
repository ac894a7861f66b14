"""Board definitions: every boards/*.json is valid against boards/schema.json (jsonschema) and
against firmware/board.py's boot-time check on the VM, and the two agree on broken boards."""
import copy
import json
import os
import subprocess
from pathlib import Path

import pytest

from host_tools.build import compile_firmware
from tests.vm import micropython

ROOT = Path(__file__).resolve().parents[1]
BOARDS = ROOT / "boards"
FILES = sorted(p for p in BOARDS.glob("*.json") if p.name != "schema.json")

# Reads a JSON list of board dicts on stdin; prints, as JSON, "ok" or the ConfigError text for each.
VM_CHECK = """
import sys, json
import board
from config import ConfigError
out = []
for d in json.loads(sys.stdin.read()):
    try:
        b = board.load(d)
        out.append("ok " + b.name)
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

    def check(boards):
        p = subprocess.run([micropython(), "-X", "heapsize=256K", str(script)], input=json.dumps(boards),
                           capture_output=True, text=True, timeout=60, check=False,
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


def test_board_files_valid_on_the_vm(fw_check):
    got = fw_check([json.loads(p.read_text()) for p in FILES])
    assert got == ["ok " + json.loads(p.read_text())["name"] for p in FILES]


def _broken():
    """(id, board dict, text the firmware's error must contain): each must fail both validators."""
    gate, vend, rent = load("sim-gate.json"), load("sim-vending.json"), load("sim-rental.json")
    real = load("esp32-devkitc-gate.json")
    cases = []

    def case(cid, base, fn, want):
        d = copy.deepcopy(base)
        fn(d)
        cases.append(pytest.param(d, want, id=cid))

    case("missing-kind", gate, lambda d: d.pop("kind"), "board sim-gate: needs 'kind'")
    case("unknown-kind", gate, lambda d: d.update(kind="kiosk"), "'kind' must be one of")
    case("missing-mcu", gate, lambda d: d.pop("mcu"), "needs 'mcu'")
    case("unknown-mcu", gate, lambda d: d.update(mcu="esp8266"), "'mcu' must be one of")
    case("bad-name", gate, lambda d: d.update(name="Sim Gate"), "valid 'name'")
    case("missing-heap", gate, lambda d: d.pop("heap_kb"), "needs 'heap_kb'")
    case("heap-too-small", gate, lambda d: d.update(heap_kb=8), "'heap_kb' out of range")
    case("wdt-wrong-type", gate, lambda d: d.update(wdt_ms="10s"), "'wdt_ms' has the wrong type")
    case("missing-journal-capacity", gate, lambda d: d.update(journal={}), "journal needs 'capacity'")
    case("flash-two-regions", real, lambda d: d["flash"].update(start=0, len=65536), "flash needs exactly one")
    case("sim-flash-without-blocks", gate, lambda d: d.update(flash={"label": "journal"}), "needs 'blocks'")
    case("unknown-top-field", gate, lambda d: d.update(colour="red"), "unknown field 'colour'")
    case("no-peripherals", gate, lambda d: d.update(peripherals={}), "at least one peripheral")
    case("unknown-peripheral-type", gate, lambda d: d["peripherals"]["entry_barrier"].update(type="teleporter"),
         "peripheral 'entry_barrier' unknown type 'teleporter'")
    case("driver-cannot-drive", gate, lambda d: d["peripherals"]["entry_barrier"].update(driver="uart"),
         "driver 'uart' cannot drive a barrier")
    case("barrier-without-pin", gate, lambda d: d["peripherals"]["entry_barrier"].pop("pin"),
         "board sim-gate: peripheral 'entry_barrier' needs 'pin'")
    case("pin-and-pins", gate, lambda d: d["peripherals"]["led"].update(pins=[1]), "needs 'pin' or 'pins', not both")
    case("pin-out-of-range", gate, lambda d: d["peripherals"]["entry_barrier"].update(pin=40),
         "peripheral 'entry_barrier' bad pin 'pin': 40")
    case("pin-on-spi-flash", gate, lambda d: d["peripherals"]["entry_barrier"].update(pin=7), "bad pin 'pin': 7")
    case("pico-radio-pin", vend, lambda d: d["peripherals"]["door_lock"].update(pin=23), "bad pin 'pin': 23")
    case("s3-no-such-gpio", rent, lambda d: d["peripherals"]["led"].update(pin=24), "bad pin 'pin': 24")
    case("negative-pin", gate, lambda d: d["peripherals"]["led"].update(pin=-1), "bad pin")
    case("pin-wrong-type", gate, lambda d: d["peripherals"]["led"].update(pin="13"), "bad pin")
    case("bad-uart-pin", gate, lambda d: d["peripherals"]["entry_camera"]["uart"].update(rx=6), "bad pin 'uart.rx'")
    case("uart-missing-baud", gate, lambda d: d["peripherals"]["entry_camera"]["uart"].pop("baud"),
         "peripheral 'entry_camera' uart needs 'baud'")
    case("scanner-without-kind", gate, lambda d: d["peripherals"]["entry_camera"].pop("kind"), "needs 'kind'")
    case("scanner-bad-kind", gate, lambda d: d["peripherals"]["entry_camera"].update(kind="barcode"),
         "'kind' must be one of")
    case("scanner-with-pin", gate, lambda d: d["peripherals"]["entry_camera"].update(pin=4), "takes no 'pin'")
    case("scale-without-sck", vend, lambda d: d["peripherals"]["scale"].pop("sck"), "peripheral 'scale' needs 'sck'")
    case("scale-bad-calibration", vend, lambda d: d["peripherals"]["scale"].update(per_gram=0), "'per_gram' has the wrong type")
    case("ssd1306-without-i2c", gate, lambda d: d["peripherals"]["display"].pop("i2c"), "needs 'i2c'")
    case("unknown-peripheral-field", gate, lambda d: d["peripherals"]["led"].update(colour="red"),
         "peripheral 'led' unknown field 'colour'")
    case("bad-peripheral-name", gate, lambda d: d["peripherals"].update({"Big LED": {"type": "indicator", "driver": "gpio", "pin": 15}}),
         "bad peripheral name")
    case("rental-without-slots", rent, lambda d: d.pop("slots"), "needs 'slots'")
    case("slots-on-a-gate", gate, lambda d: d.update(slots=2), "'slots' is for rental boards only")
    case("slot-mismatch-locks", rent, lambda d: d["peripherals"]["locks"]["pins"].pop(), "has 7 pins for 8 slots")
    case("slot-mismatch-count", rent, lambda d: d.update(slots=6), "has 8 pins for 6 slots")
    case("group-without-slots", vend, lambda d: d["peripherals"]["door_lock"].update(pins=[15], pin=None) or
         d["peripherals"]["door_lock"].pop("pin"), "needs 'slots'")
    return cases


# Rules only the firmware checks (a JSON Schema cannot say them); jsonschema accepts these.
FIRMWARE_ONLY = [
    ("pin-used-twice", "sim-gate.json", lambda d: d["peripherals"]["led"].update(pin=26), "pin 26 already used by 'entry_barrier'"),
    ("journal-too-big", "sim-gate.json", lambda d: d["journal"].update(capacity=262144), "does not fit its flash region"),
    ("rental-without-lock-group", "sim-rental.json",
     lambda d: d["peripherals"]["locks"].update(type="relay"), "per-slot 'lock' group"),
]


BROKEN = _broken()


@pytest.fixture(scope="module")
def fw_broken(fw_check):
    """The firmware's verdict on every broken board, in one VM run."""
    return dict(zip((p.id for p in BROKEN), fw_check([p.values[0] for p in BROKEN])))


@pytest.mark.parametrize("d,want", BROKEN)
def test_broken_board_rejected_by_both(validator, fw_broken, request, d, want):
    assert list(validator.iter_errors(d)), "jsonschema accepted it"
    got = fw_broken[request.node.callspec.id]
    assert not got.startswith("ok"), "firmware accepted it"
    assert got.startswith("board") and want in got, got


@pytest.mark.parametrize("cid,base,fn,want", FIRMWARE_ONLY, ids=[c[0] for c in FIRMWARE_ONLY])
def test_firmware_only_rules(validator, fw_check, cid, base, fn, want):
    d = load(base)
    fn(d)
    assert not list(validator.iter_errors(d))  # documented in the schema's description
    got = fw_check([d])[0]
    assert want in got, got


def test_legacy_board_section_still_loads(fw_check):
    """A config "board" section with only name/kind (pre-board-file configs) is a board without peripherals."""
    assert fw_check([{"name": "sim-gate", "kind": "gate"},
                     {"name": "sim-gate", "kind": "gate", "journal": {"capacity": 32768}, "flash": {"blocks": 64}},
                     {"name": "x", "kind": "kiosk"}]) == \
        ["ok sim-gate", "ok sim-gate", "board: needs 'name' and a 'kind' (gate|vending|rental)"]


# ---- the host refuses what the device refuses, and a journal over the main filesystem ------------
def _host(d):
    from host_tools.cli.common import check_board
    return check_board(d)


@pytest.mark.parametrize("cid,base,fn,want", FIRMWARE_ONLY, ids=[c[0] for c in FIRMWARE_ONLY])
def test_host_checks_the_firmware_only_rules(cid, base, fn, want):
    """Same rule, same words as the device at boot (board.py), so build/provision/flash refuse it."""
    d = load(base)
    fn(d)
    got = _host(d)
    assert got and want in got[0], got


@pytest.mark.parametrize("d,want", BROKEN)
def test_host_rejects_every_broken_board(d, want):
    assert _host(d), want


# (id, change to pico-w-vending, what the host says); the device cannot see its own flash layout
LAYOUT = [
    ("journal-over-fs", lambda d: d["flash"].update(start=0), "overlaps the main filesystem 'fs' 0..606208"),
    ("journal-tail-in-fs", lambda d: d["flash"].update(start=602112), "overlaps the main filesystem"),
    ("no-fs-declared", lambda d: d.pop("fs"), "needs 'fs'"),
    ("past-the-storage-area", lambda d: d["flash"].update(len=266240), "ends past the storage area (868352"),
    ("fs-on-a-partition-board", None, "'fs' is for boards whose journal is a 'start'/'len' flash region"),
]


@pytest.mark.parametrize("cid,fn,want", LAYOUT, ids=[c[0] for c in LAYOUT])
def test_journal_region_outside_the_main_filesystem(validator, fw_check, cid, fn, want):
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


def test_cli_refuses_such_boards_naming_the_field(tmp_path, fw_check):
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
    assert fw_check([cases["twice"][0]])[0].endswith(cases["twice"][2])  # the device says the same
