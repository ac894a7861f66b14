"""firmware/net.py, the Wi-Fi bring-up, on the real MicroPython VM.

On the VM `network` has no WLAN, so net.py must be a clean no-op there (tested from source and as
the .mpy a real board's bundle ships). Its join/backoff/rejoin logic is tested with a FakeWLAN
injected (tests/vm/net_cases.py): the radio is the one part that cannot exist here. Which bundles
carry it (real boards, not sim boards) is tested through `edgepay build`'s bundler."""
import json
import os
import subprocess

import pytest

from host_tools.bundle import build_bundle
from host_tools.cli.common import load_board
from tests.vm import VM_SCRIPTS, micropython, run_vm

FAKES = VM_SCRIPTS / "fakes"


@pytest.fixture(scope="module")
def radio():
    proc = run_vm("net_cases.py", "radio", path=(FAKES,))
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout


def test_noop_without_a_radio():
    proc = run_vm("net_cases.py", "noop")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"wlan": True, "up": True, "up_no_wifi": True, "has_network": False}
    assert proc.stdout.strip().count("\n") == 0  # nothing logged: no "wifi" lines at all


def test_noop_from_a_real_boards_compiled_bundle(tmp_path):
    """The .mpy that esp32-devkitc-gate ships, imported on the VM: detects no WLAN, does nothing."""
    b = build_bundle(load_board("esp32-devkitc-gate"), tmp_path / "b")
    assert "net.mpy" in b.sizes
    env = dict(os.environ, MICROPYPATH=f"{tmp_path / 'b' / 'bundle'}:{VM_SCRIPTS}:.frozen")
    p = subprocess.run([micropython(), "-X", "heapsize=64K", str(VM_SCRIPTS / "net_cases.py"), "noop"],
                       capture_output=True, text=True, timeout=60, env=env, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1])["up"] is True


def test_sim_boards_do_not_ship_net(tmp_path):
    for name in ("sim-gate", "sim-vending", "sim-rental"):
        assert "net.mpy" not in build_bundle(load_board(name), tmp_path / name).sizes
    for name in ("pico-w-vending", "esp32-s3-rental"):
        assert "net.mpy" in build_bundle(load_board(name), tmp_path / name).sizes


def test_joins_with_bounded_backoff(radio):
    got, _ = radio
    ok, slept, calls = got["quick"]
    assert ok and slept == [100] * 12 and calls == ["active", "disconnect", "connect site pw-123456"]
    ok, pauses, total, joins = got["never"]
    # three 5 s tries with 0.5, 1, 2 s pauses between: gives up past the 15 s budget, not forever
    assert not ok and pauses == [500, 1000, 2000] and joins == 3 and 15000 <= total <= 15000 + 5000 + 2000
    assert got["capped"] == 1500  # pauses stop doubling at `hi`


def test_rejoins_when_the_link_drops(radio):
    got, out = radio
    assert got["keep"] == ["disconnect", "connect site pw-123456"] * 2
    lost = [ln for ln in out.splitlines() if "wifi lost" in ln]
    assert [ln.split()[-2] for ln in lost] == ["20", "40"]  # doubling pauses
    assert "rssi -61" in out.split(lost[-1])[1]  # back up, RSSI reported


def test_up_sets_the_clock_only_with_tls_and_keeps_the_link(radio):
    got, _ = radio
    assert got["up_tls"] == [True, 1, True, -61]   # NTP once; keep() ran in the next event loop
    assert got["up_plain"] == [True, 0, True, -61]  # no TLS: no NTP
    assert got["no_wifi_config"] is True           # no "wifi" in config.json: nothing to do
