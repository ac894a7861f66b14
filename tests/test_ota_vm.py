"""Firmware updates end to end on the real MicroPython VM and a real Mosquitto (SPEC §10, issue 12
§4): a signed release pulled in chunks from the cloud's chunk server into the board's update slot,
verified, installed when nothing is in progress, booted as a trial by the simulated boot loader and
confirmed only once the cloud answers; refusals that write nothing; releases that fail their
self-test or crash at import roll back by themselves; money survives every step."""
from __future__ import annotations

import time

import pytest

from host_tools.cloud.chunkserver import ChunkServer, ReleaseStore
from host_tools.protocol.manifest import Manifest, sign_manifest
from host_tools.protocol.schema import SESS_CLOSE
from host_tools.sim import bootloader
from tests.otakit import Releases, ota_events, wait_state

DEV = "gate-1"


@pytest.fixture
def ota(site, tmp_path):
    """(site, releases, chunk server): the chunk server answers on the site's cloud connection."""
    rel = Releases(tmp_path / "rel")
    cs = ChunkServer(site.reg, site.c.mqtt, ReleaseStore(rel.dir))
    yield site, rel, cs
    cs.close()


def gate(site, rel, **kw):
    return site.board(DEV, "gate", ota=rel.config(), **kw)


def deploy(site, release, timeout=15.0):
    return site.cmd(DEV, "ota", {1: release.signed}, timeout=timeout)


def reboot_into(site, b, timeout=60.0):
    """The device reboots itself to install (exit 4): boot it as the simulator's world would."""
    assert b.wait(timeout) == 4, b.log()[-2000:]
    site.boot(b)


def car(b, lane, plate):
    hw = b.hw
    hw.set_input(f"{lane}_loop", 1)
    hw.scan(f"{lane}_camera", plate)
    hw.wait_output(f"{lane}_barrier", "open", 10)
    hw.set_input(f"{lane}_loop", 0)
    hw.wait_output(f"{lane}_barrier", "closed", 10)


def test_a_release_installs_as_a_trial_is_confirmed_and_money_survives(ota):
    site, rel, cs = ota
    site.svc.bind("A12345", "acct-1")
    b = gate(site, rel)
    car(b, "entry", "A12345")                    # a parked car: a session open across the update
    site.wait_records(DEV, 1)
    r = rel.build("sim-gate", "0.2.0", 1)
    res = deploy(site, r)
    assert res.ok and res.data == {"st": "downloading"}, (res.state, res.code, res.data)
    wait_state(site.w, DEV, "installed", 90)
    reboot_into(site, b)
    assert b.booted == "ota_0"
    wait_state(site.w, DEV, "confirmed", 60)
    states = [e["st"] for e in ota_events(site.w, DEV)]
    assert states[:2] == ["signature_verified", "downloading"]
    for s in ("downloaded", "installing", "installed", "confirmed"):
        assert s in states
    assert states.index("downloaded") < states.index("installing") < states.index("installed") < states.index("confirmed")
    hellos = [m for t, m, _ in site.w.all if t.endswith("/up/hello")]
    assert hellos[-1]["fw"] == "0.2.0"
    assert site.cmd(DEV, "get_state").data["fw"] == "0.2.0"
    assert bootloader.decide(b.dir, b.flash_config())[0] == "ota_0"  # kept: the next boot too
    car(b, "exit", "A12345")                     # the car parked before the update leaves, charged
    recs = site.wait_records(DEV, 2)
    assert recs[-1].type == SESS_CLOSE and recs[-1].sid == recs[0].sid
    assert not site.svc.flags(DEV)
    n = cs.counts(DEV)
    assert n["answered"] >= -(-len(r.payload) // r.manifest.chunk)
    # the same release again is where it is; the installed seq now refuses it as a downgrade
    again = deploy(site, r)
    assert again.code == "refused" and again.data == {"why": "downgrade"}


def test_every_refusal_writes_nothing_and_the_device_keeps_serving(ota):
    site, rel, cs = ota
    b = gate(site, rel)
    good = rel.build("sim-gate", "0.3.0", 3)
    m = good.manifest
    stranger = Releases(rel.root / "stranger")

    def signed(**change):
        d = {f: getattr(m, f) for f in ("board", "kind", "version", "seq", "size", "sha256", "chunk",
                                         "journal", "format", "window", "from_version", "allow_lower")}
        d.update(change)
        return sign_manifest(rel.key, Manifest(**d))

    tampered = bytearray(good.signed)
    tampered[-1] ^= 1
    cases = {
        "bad_signature": bytes(tampered),
        "unknown_key": stranger.build("sim-gate", "0.3.0", 3).signed,
        "wrong_class": signed(kind="vending"),
        "too_large": signed(size=4 * 1024 * 1024),
        "journal_format": signed(journal=2),
        "bad_manifest": b"\xd2\x84" + b"\x00" * 8,
    }
    for why, raw in cases.items():
        res = site.cmd(DEV, "ota", {1: raw})
        assert res.code == "refused" and res.data == {"why": why}, (why, res.code, res.data)
    assert site.cmd(DEV, "ota", {1: "not bytes"}).code == "bad_args"
    assert site.cmd(DEV, "ota", {}).code == "bad_args"
    assert site.cmd(DEV, "ota_abort").data == {"st": "none"}
    assert ota_events(site.w, DEV) == []  # the results say why; no update was in hand
    assert bootloader.read_records(b.dir, b.flash_config()) == [None, None]  # no boot record written
    assert cs.counts(DEV)["requests"] == 0                                   # not one chunk asked
    assert site.cmd(DEV, "get_state").ok
    site.svc.bind("B77777", "acct-2")
    car(b, "entry", "B77777")  # still serving
    site.wait_records(DEV, 1)


def test_an_abort_mid_download_drops_the_update(ota):
    site, rel, cs = ota
    cs.delay_s = 0.3  # a slow cloud: the abort lands mid-download
    gate(site, rel)
    r = rel.build("sim-gate", "0.4.0", 4, chunk=256)
    assert deploy(site, r).ok
    wait_state(site.w, DEV, "downloading", 30)
    res = site.cmd(DEV, "ota_abort")
    assert res.ok and res.data == {"st": "aborted"}
    assert wait_state(site.w, DEV, "failed", 10)["why"] == "aborted"
    assert site.cmd(DEV, "ota_abort").data == {"st": "none"}
    assert site.cmd(DEV, "get_state").data["fw"] == "0.1.0"


@pytest.mark.parametrize("fault,why", [
    ("self_test", "self_test"),
    ("crash", "reset"),
])
def test_a_trial_that_fails_rolls_back_by_itself(ota, fault, why):
    site, rel, cs = ota
    b = gate(site, rel)
    edits = {
        "self_test": {"agent.py": ("        return self.journal_error is None and", "        return False and")},
        "crash": {"apps/gate.py": ("import asyncio\n", "import asyncio\nraise ImportError('broken release')\n")},
    }[fault]
    r = rel.build("sim-gate", "0.5.0", 5, root=rel.patched(fault, edits))
    assert deploy(site, r).ok
    wait_state(site.w, DEV, "installed", 90)
    assert b.wait(60) == 4
    b.start(reset_cause="soft")                  # the trial
    assert b.booted == "ota_0"
    assert b.wait(60) == 4                       # it reboots itself, unconfirmed
    site.boot(b)                                 # the boot loader falls back to factory
    assert b.booted == "factory"
    e = wait_state(site.w, DEV, "rolled_back", 30)
    assert e["why"] == why and e["v"] == "0.5.0"
    assert site.cmd(DEV, "get_state").data["fw"] == "0.1.0"


def test_an_install_waits_for_a_car_mid_passage_then_proceeds(ota):
    site, rel, cs = ota
    site.svc.bind("C55555", "acct-3")
    b = gate(site, rel)
    hw = b.hw
    hw.set_input("entry_loop", 1)
    hw.scan("entry_camera", "C55555")
    hw.wait_output("entry_barrier", "open", 10)      # the car is under the barrier: mid-passage
    assert deploy(site, rel.build("sim-gate", "0.6.0", 6)).ok
    e = wait_state(site.w, DEV, "deferred", 60)
    assert e["why"] == "busy"
    time.sleep(2)
    states = [x["st"] for x in ota_events(site.w, DEV)]
    assert "installing" not in states and b.running   # a gate mid-passage never reboots
    hw.set_input("entry_loop", 0)                      # it has passed: the barrier closes
    hw.wait_output("entry_barrier", "closed", 10)
    wait_state(site.w, DEV, "installed", 30)
    reboot_into(site, b)
    wait_state(site.w, DEV, "confirmed", 60)
    recs = site.wait_records(DEV, 1)                   # the entry's record, journaled before the update
    assert recs[0].payer == "C55555"
