"""The HAL on the real MicroPython VM: a sim board (boards/sim-*.json) runs the agent with a tiny
test app that wires its peripherals together and exposes them through a signed `hw` command,
driven from the host through SimPeripherals over the line-JSON link, with a real Mosquitto."""
import hashlib
import json
import os
import subprocess
import time
from types import SimpleNamespace

import pytest

from host_tools.boardcheck import device_bytes
from host_tools.build import compile_firmware
from host_tools.cloud.commands import State
from host_tools.cloud.registry import Registry, RegistryError
from host_tools.sim.peripherals import SimPeripherals
from host_tools.sim.provision import BOARDS, provision_sim
from tests.agentkit import Watcher, cloud
from tests.vm import micropython

# The test app: gets the HAL the agent built from the board (its context's hw), wires inputs to
# outputs and lets the cloud drive any actuator: hw {1: name, 2: "open"|"close"|"lock"|"unlock"|"on"|"off"}.
HALAPP = '''
import asyncio

def setup(ctx):
    p = ctx.hw
    show = p.display.show
    kind = ctx.cfg["board"]["kind"]

    @ctx.on_command("hw")
    def hw(args):
        d = p.get(args[1])
        getattr(d, args[2])()
        return {"state": d.state}

    if kind == "gate":
        p.on("entry_loop", lambda v: p.led.set(v))
        p.on("entry_camera", lambda s: show("plate " + s))
    elif kind == "vending":
        p.on("door", lambda v: p.led.set(v))
        p.on("rfid", lambda s: show("tag " + s))
        p.on("scale", lambda g: show("%d g" % g))
        async def qr():
            while True:
                show("qr " + await p.qr.read())
        asyncio.create_task(qr())
    else:
        p.on("slots", lambda i, v: p.locks[i].lock() if v else None)  # an item back in: lock its slot
        p.on("rfid", lambda s: show("tag " + s))
        p.on("qr", lambda s: show("qr " + s))
'''


@pytest.fixture
def env(broker, tmp_path):
    reg = Registry()
    w = Watcher(broker, reg)
    c = cloud(broker, reg)
    made = []

    def board(device, board_file, periph=True, **kw):
        sp = SimPeripherals() if periph else None
        b = provision_sim(broker, reg, tmp_path, device, peripherals=sp, board_file=board_file,
                          app="halapp", **kw)
        (b.dir / "halapp.py").write_text(HALAPP)
        made.append((b, sp))
        return b, sp

    yield SimpleNamespace(broker=broker, reg=reg, w=w, c=c, board=board, tmp=tmp_path)
    for b, sp in made:
        b.kill()
        if sp:
            sp.close()
    c.close()
    w.close()


def trusted(env, device):
    env.w.expect(lambda t, m, r: t == f"v1/dev/{device}/up/status" and m.get("online") is True, 15, "online")
    assert env.c.sync_time(device)


def hw(env, device, name, action):
    r = env.c.send(device, "hw", {1: name, 2: action}, timeout=10)
    assert r.state is State.SUCCEEDED, (r.state, r.code)
    return r.data


def test_gate_barrier_loop_camera_display(env):
    b, sp = env.board("gate1", "sim-gate")
    b.start()
    sp.wait_connected(10)
    assert sp.board == "sim-gate"
    # the hello carries every output in its boot state
    assert sp.outputs["entry_barrier"] == "closed" and sp.outputs["exit_barrier"] == "closed"
    assert sp.outputs["led"] == "off" and sp.outputs["display"] == ""
    trusted(env, "gate1")
    # barrier follows the (signed) command
    assert hw(env, "gate1", "entry_barrier", "open") == {"state": "open"}
    sp.wait_output("entry_barrier", "open", 3)
    assert sp.outputs["exit_barrier"] == "closed"
    hw(env, "gate1", "entry_barrier", "close")
    sp.wait_output("entry_barrier", "closed", 3)
    b.wait_for(r"ACT entry_barrier open", 2)
    b.wait_for(r"ACT entry_barrier closed", 2)
    # vehicle loop seen (the app lights the LED while the loop is occupied)
    sp.set_input("entry_loop", 1)
    sp.wait_output("led", "on", 3)
    b.wait_for(r"IN entry_loop 1", 2)
    sp.set_input("entry_loop", 0)
    sp.wait_output("led", "off", 3)
    # plate delivered
    sp.scan("entry_camera", "AB123CD")
    sp.wait_output("display", "plate AB123CD", 3)
    b.wait_for(r"SCAN entry_camera AB123CD", 2)
    # the agent's built-in display command reaches the board's display too
    assert env.c.send("gate1", "display", {1: "Welcome"}).state is State.SUCCEEDED
    sp.wait_output("display", "Welcome", 3)
    assert sp.display() == "Welcome"
    assert [m["v"] for m in sp.history("entry_barrier") if m["t"] == "out"] == ["open", "closed"]


def test_vending_scale_scanners_door_lock(env):
    b, sp = env.board("vend1", "sim-vending")
    b.start()
    sp.wait_connected(10)
    assert sp.outputs["door_lock"] == "locked"
    sp.set_scale("scale", 1250)
    sp.wait_output("display", "1250 g", 3)
    sp.set_scale("scale", -3)
    sp.wait_output("display", "-3 g", 3)
    sp.scan("qr", "PAY-42")  # the app reads this one with `await p.qr.read()`
    sp.wait_output("display", "qr PAY-42", 3)
    sp.tag("rfid", "04A2B3C4D5")
    sp.wait_output("display", "tag 04A2B3C4D5", 3)
    sp.set_input("door", 1)
    sp.wait_output("led", "on", 3)
    trusted(env, "vend1")
    assert hw(env, "vend1", "door_lock", "unlock") == {"state": "unlocked"}
    sp.wait_output("door_lock", "unlocked", 3)
    hw(env, "vend1", "buzzer", "on")
    sp.wait_output("buzzer", "on", 3)
    # an unknown peripheral is refused by the command, nothing actuates
    r = env.c.send("vend1", "hw", {1: "teleporter", 2: "open"}, timeout=10)
    assert r.state is not State.SUCCEEDED


def test_rental_locks_per_slot(env):
    b, sp = env.board("rent1", "sim-rental")
    b.start()
    sp.wait_connected(10)
    assert [sp.outputs[f"locks.{i}"] for i in range(8)] == ["locked"] * 8
    trusted(env, "rent1")
    hw(env, "rent1", "locks.5", "unlock")
    sp.wait_output("locks.5", "unlocked", 3)
    assert [sp.outputs[f"locks.{i}"] for i in range(8)] == ["locked"] * 5 + ["unlocked"] + ["locked"] * 2
    hw(env, "rent1", "locks.2", "unlock")
    sp.wait_output("locks.2", "unlocked", 3)
    # an item returned into slot 5: the app locks that slot only
    sp.set_input("slots.5", 1)
    sp.wait_output("locks.5", "locked", 3)
    b.wait_for(r"IN slots.5 1", 2)
    assert sp.outputs["locks.2"] == "unlocked"
    sp.tag("rfid", "E200341201")
    sp.wait_output("display", "tag E200341201", 3)
    sp.scan("qr", "RENT-7")
    sp.wait_output("display", "qr RENT-7", 3)


def test_host_restart_device_reconnects_and_device_reboot_gets_inputs(env):
    b, sp = env.board("gate2", "sim-gate")
    b.start()
    sp.wait_connected(10)
    sp.set_input("entry_loop", 1)
    sp.wait_output("led", "on", 3)
    port = sp.port
    mark = len(b.lines)
    sp.close()  # the host simulator goes away...
    b.wait_for(r"sim down", 5, start=mark)
    time.sleep(0.3)
    sp2 = SimPeripherals(port=port)  # ...and comes back on the same port
    try:
        sp2.wait_connected(5)
        b.wait_for(r"sim up 2", 3, start=mark)
        assert sp2.outputs["led"] == "on"  # the device's snapshot: state kept across the outage
        sp2.scan("entry_camera", "ZZ999")
        sp2.wait_output("display", "plate ZZ999", 3)
        # the device reboots: the host replays the inputs it holds (the car is still on the loop)
        sp2.set_input("entry_loop", 1)
        b.kill()
        b.restart()
        sp2.wait_connected(15, after=1)
        sp2.wait_output("led", "on", 5)
        b.wait_for(r"IN entry_loop 1", 2)
    finally:
        sp2.close()


def test_bad_link_input_is_refused_and_the_link_survives(env):
    b, sp = env.board("gate3", "sim-gate")
    b.start()
    sp.wait_connected(10)
    sp.send_raw(b"not json\n")
    sp.send_raw(b'{"t":"in","n":"teleporter","v":1}\n')          # no such peripheral
    sp.send_raw(b'{"t":"scan","n":"entry_loop","v":"X"}\n')       # not a scanner
    sp.send_raw(b'{"t":"in","n":"entry_loop","v":"yes"}\n')       # not 0|1
    sp.send_raw(b'{"t":"scan","n":"entry_camera","v":"' + b"A" * 600 + b'"}\n')  # longer than the buffer
    sp.scan("entry_camera", "OK1")
    sp.wait_output("display", "plate OK1", 3)
    # the console is read on its own thread: the display may come back over the link first
    b.wait_for("sim bad line", 5)
    deadline = time.monotonic() + 5
    while b.log().count("sim refused") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    log = b.log()
    assert log.count("sim refused") == 3
    assert "IN entry_loop" not in log and "AAAA" not in log
    assert b.running


def test_detached_sim_board_runs_without_a_host(env):
    """No SimPeripherals: the sim HAL only logs its actuations."""
    b, _ = env.board("gate4", "sim-gate", periph=False)
    b.start()
    trusted(env, "gate4")
    hw(env, "gate4", "exit_barrier", "open")
    b.wait_for(r"ACT exit_barrier open", 3)
    assert "sim up" not in b.log()


def test_wrong_board_file_is_refused_by_the_host(env, tmp_path):
    """The host checks a board in full before it reaches a device (host_tools/boardcheck.py): a
    broken one is refused there, naming the field, before anything is registered or written."""
    d = json.loads((BOARDS / "sim-gate.json").read_text())
    del d["peripherals"]["entry_barrier"]["pin"]
    bad = tmp_path / "bad-gate.json"
    bad.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"board sim-gate: peripherals/entry_barrier: .*'pin'"):
        env.board("gate5", bad)
    d = json.loads((BOARDS / "sim-rental.json").read_text())
    d["peripherals"]["slots"]["pins"] = d["peripherals"]["slots"]["pins"][:7]
    bad.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"board sim-rental: .*slots"):
        env.board("rent5", bad)
    assert not (tmp_path / "gate5").exists() and not (tmp_path / "rent5").exists()
    with pytest.raises(RegistryError):
        env.reg.get("gate5")


def _stamped_gate(env, device):
    """A sim gate as the host provisions it: board.json, and the config's stamp of it."""
    b, sp = env.board(device, "sim-gate")
    cfg = json.loads((b.dir / "config.json").read_text())
    raw = (b.dir / "board.json").read_bytes()
    assert cfg["board"] == {"name": "sim-gate", "kind": "gate", "sha256": hashlib.sha256(raw).hexdigest()}
    assert b"description" not in raw and b"note" not in raw  # documentation stays on the host
    return b, sp, cfg, raw


def _refused(b, sp, why):
    b.start()
    assert b.wait(10) == 3 and b.exit_reason() == "config"
    want = (f"config error: board file board.json {why}: it does not match what the host checked; "
            "rebuild with `edgepay build`")
    assert want in b.log(), b.log()
    assert "ACT" not in b.log() and not sp.connected


# (id, what is done to the stamped board on its flash, what the device says)
TAMPER = [
    ("edited", lambda dr, cfg, raw: (dr / "board.json").write_bytes(raw.replace(b'"pin":26', b'"pin":27')),
     "differs from its stamp (config.json board 'sha256')"),
    ("truncated", lambda dr, cfg, raw: (dr / "board.json").write_bytes(raw[:-1]),
     "differs from its stamp (config.json board 'sha256')"),
    ("deleted", lambda dr, cfg, raw: (dr / "board.json").unlink(), "not found"),
    ("unstamped", lambda dr, cfg, raw: _config(dr, cfg, board={"name": "sim-gate", "kind": "gate"}),
     "has no stamp (config.json board 'sha256')"),
    ("inline-definition", lambda dr, cfg, raw: _config(dr, cfg, board=json.loads(raw)),
     "not found (config.json holds an unstamped board definition)"),
    ("garbage-json", lambda dr, cfg, raw: _restamp(dr, cfg, b'{"name": "sim-gate", "kind": "ga'),
     "is not valid JSON"),
    ("not-a-board", lambda dr, cfg, raw: _restamp(dr, cfg, b'["sim-gate", "gate"]'), "is not a board definition"),
]


def _config(dr, cfg, **changes):
    (dr / "config.json").write_text(json.dumps(dict(cfg, **changes)))


def _restamp(dr, cfg, data):
    """A board file that is not one the host writes, stamped by hand: the stamp matches, the rest must not pass."""
    (dr / "board.json").write_bytes(data)
    _config(dr, cfg, board=dict(cfg["board"], sha256=hashlib.sha256(data).hexdigest()))


@pytest.mark.parametrize("cid,change,why", TAMPER, ids=[t[0] for t in TAMPER])
def test_board_file_not_the_one_the_host_checked_stops_at_boot(env, cid, change, why):
    """The device checks only the host's stamp (firmware/board.py): a board file that is not byte for
    byte the one the host checked, or has no stamp, or is not a board, stops it at boot (exit 3)."""
    b, sp, cfg, raw = _stamped_gate(env, f"gate-{cid}")
    change(b.dir, cfg, raw)
    _refused(b, sp, why)


RAM_PROBE = """
import gc, sys, json, asyncio
import board, hal, hal.io, hal.sim, hal.display
gc.collect()
a0 = gc.mem_alloc()
b = board.read(sys.argv[2], sys.argv[1])
gc.collect()
a1 = gc.mem_alloc()
p = hal.build(b, sim={"port": 9})
gc.collect()
a2 = gc.mem_alloc()
print(json.dumps({"board": a1 - a0, "hal": a2 - a1}))
"""


def test_hal_ram_cost_on_the_vm(tmp_path):
    """Data the HAL costs on a board (code is frozen there): the parsed board and its peripherals."""
    bundle = compile_firmware()
    probe = tmp_path / "probe.py"
    probe.write_text(RAM_PROBE)
    out = {}
    for name in ("sim-gate", "sim-vending", "sim-rental"):
        raw = device_bytes(json.loads((BOARDS / f"{name}.json").read_text()))
        (tmp_path / f"{name}.json").write_bytes(raw)
        p = subprocess.run([micropython(), "-X", "heapsize=256K", str(probe), str(tmp_path / f"{name}.json"),
                            hashlib.sha256(raw).hexdigest()],
                           capture_output=True, text=True, timeout=30, check=False,
                           env=dict(os.environ, MICROPYPATH=f"{bundle}:.frozen"))
        assert p.returncode == 0, p.stdout + p.stderr
        out[name] = json.loads(p.stdout.strip().splitlines()[-1])
    print("HAL RAM", out)
    for name, r in out.items():
        assert r["hal"] < 8 * 1024, (name, r)
        assert r["board"] < 8 * 1024, (name, r)
