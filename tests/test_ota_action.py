"""The firmware update Action (host_tools/cloud/ota_action.py) under the rollout engine, on SQLite
and PostgreSQL, real Mosquitto: stand-in devices answer the signed `ota` command and publish signed
`ota` events, and each outcome maps as SPEC §10 says (confirmed; failed with its why; rolled_back;
a refused command; a `downgrade` from a device already on the release, which is current; a silent device timed out by the engine and sent `ota_abort`); events that do not
verify or name another release decide nothing; a halt reaches a device mid-download; a runner
restarted mid-campaign still sees its devices' outcomes."""
from __future__ import annotations

import os
import threading
import time

import pytest

from host_tools.cloud.commands import CommandClient
from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.ota_action import OtaAction, OtaProgress
from host_tools.cloud.registry import Registry
from host_tools.cloud.rollout import Rollouts
from host_tools.cloud.rollout_store import RolloutStore
from tests.conftest import USERS
from tests.otastandin import StandIn, write_release

V, SEQ = "1.4.0", 7


def later(dev_box: list, *events: tuple, code: str = "ok", data: dict | None = None, gap: float = 0.05):
    """A script: answer `code` (data), then publish `events` ((st, extra), ...) from another thread."""
    def script(cmd):
        if cmd["name"] != "ota":
            return "ok", {"st": "aborted"}
        def go():
            for st, extra in events:
                time.sleep(gap)
                dev_box[0].event(st, *extra.pop("_as", (V, SEQ)), **extra)
        if events:
            threading.Thread(target=go, daemon=True).start()
        return code, data if data is not None else ({"st": "downloading"} if code == "ok" else None)
    return script


CONFIRMING = (("signature_verified", {}), ("downloading", {"n": 0, "of": 10}), ("downloading", {"n": 5, "of": 10}),
              ("downloaded", {}), ("installing", {}), ("installed", {}), ("confirmed", {}))


@pytest.fixture
def rig(broker, tmp_path, ledger_url):
    reg = Registry(ledger_url)
    store = RolloutStore.open(ledger_url)
    client = CommandClient(reg, BrokerSettings("127.0.0.1", broker.cloud_port, "cloud", USERS["cloud"])).connect()
    _, m, signed = write_release(tmp_path / "rel", os.urandom(5000), version=V, seq=SEQ)
    devs: dict[str, StandIn] = {}

    def device(name: str, make_script) -> StandIn:
        key = os.urandom(32)
        reg.add(name, key, "gate", "sim-gate")
        box: list = []
        d = StandIn(broker.cloud_port, name, key, user="cloud", password=USERS["cloud"], script=make_script(box))
        box.append(d)
        devs[name] = d
        return d

    def engine() -> tuple[Rollouts, OtaAction]:
        act = OtaAction(client, OtaProgress(store.db))
        return Rollouts(store, {"ota": act}), act
    yield device, engine, OtaAction.spec(signed, m, "sim-gate-1.4.0"), store
    for d in devs.values():
        d.close()
    client.close()
    store.close()
    reg.close()


def run(ro: Rollouts, cid: str, limit: float = 30.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        ro.tick()
        c = ro.status(cid)
        if c.final:
            return c
        time.sleep(0.1)
    raise AssertionError(f"campaign {cid} never ended: {ro.status(cid)}")


def test_each_outcome_maps_as_the_spec_says(rig, broker):
    device, engine, spec, store = rig
    device("ok-1", lambda b: later(b, *CONFIRMING))
    device("fail-1", lambda b: later(b, ("downloading", {"n": 0, "of": 10}),
                                     ("failed", {"why": "digest_mismatch"})))
    device("rb-1", lambda b: later(b, ("installed", {}), ("rolled_back", {"why": "self_test"})))
    device("refused-1", lambda b: later(b, code="refused", data={"why": "wrong_class"}))
    device("old-1", lambda b: later(b, code="unsupported"))
    silent = device("silent-1", lambda b: (lambda cmd: None))
    # an earlier release's late report and a forged confirmation decide nothing; the real one does
    device("other-1", lambda b: later(b, ("confirmed", {"_as": ("1.3.0", 6)}), ("confirmed", {"_as": (V, 99)}),
                                              ("failed", {"why": "no_space"})))
    # a `downgrade` from a device that runs this very release (a campaign run again) is current, a
    # success; from one on a later release it stays a failure (each asked get_state once)
    def on(fw):
        return lambda b: (lambda cmd: ("refused", {"why": "downgrade"}) if cmd["name"] == "ota"
                          else ("ok", {"fw": fw}))
    current, newer = device("current-1", on(V)), device("newer-1", on("1.5.0"))
    ro, act = engine()
    names = ["ok-1", "fail-1", "rb-1", "refused-1", "old-1", "silent-1", "other-1", "current-1", "newer-1"]
    ro.create("rel-a", "ota", spec, names, cohorts=(100,), rate=6000, timeout_s=3, abort_share=1.0)
    ro.tick()                                           # every device started
    forged = StandIn(broker.cloud_port, "ok-1", os.urandom(32), user="cloud", password=USERS["cloud"])
    try:
        forged.event("failed", V, SEQ, why="forged")   # under a key that is not ok-1's
        c = run(ro, "rel-a")
    finally:
        forged.close()
    got = {t.device: (t.state, t.reason) for t in store.targets("rel-a")}
    assert got == {"ok-1": ("succeeded", None), "fail-1": ("failed", "digest_mismatch"),
                   "rb-1": ("failed", "rolled_back: self_test"), "refused-1": ("failed", "wrong_class"),
                   "old-1": ("failed", "unsupported"), "silent-1": ("timed_out", "no outcome in 3 s"),
                   "other-1": ("failed", "no_space"), "current-1": ("succeeded", None),
                   "newer-1": ("failed", "downgrade")}
    assert current.names() == newer.names() == ["ota", "get_state"]
    assert c.state == "done"
    assert act.unverified >= 1
    assert silent.wait_command("ota_abort")          # the engine's timeout aborts it on the device
    assert silent.names() == ["ota", "ota_abort"]
    prog = OtaProgress(store.db).all("rel-a")
    assert (prog["ok-1"].st, prog["ok-1"].n, prog["ok-1"].of) == ("confirmed", 5, 10)
    assert (prog["fail-1"].st, prog["fail-1"].why) == ("failed", "digest_mismatch")
    assert (prog["refused-1"].st, prog["refused-1"].why) == ("refused", "wrong_class")
    assert prog["silent-1"].st == "aborting"
    assert prog["current-1"].st == "current" and (prog["newer-1"].st, prog["newer-1"].why) == ("refused", "downgrade")
    # every device got the manifest, as bytes, in the signed command
    cmd = silent.commands[0]
    assert cmd["args"] == {1: bytes.fromhex(spec["manifest"])}
    assert act._flights == {} and act._by_device == {}   # nothing kept once final


def test_a_halt_reaches_a_device_mid_download(rig):
    """Two of three fail: the threshold halts the campaign; the third, mid-download, is sent
    ota_abort; the pending ones are skipped and never get a command."""
    device, engine, spec, store = rig
    device("h-0", lambda b: later(b, ("failed", {"why": "digest_mismatch"}), gap=0.3))
    device("h-1", lambda b: later(b, ("failed", {"why": "digest_mismatch"}), gap=0.3))
    mid = device("h-2", lambda b: later(b, ("downloading", {"n": 0, "of": 40})))
    rest = [device(f"h-{i}", lambda b: later(b, *CONFIRMING)) for i in range(3, 6)]
    ro, act = engine()
    ro.create("rel-h", "ota", spec, [f"h-{i}" for i in range(6)], cohorts=(50, 100), rate=6000, timeout_s=30,
              abort_share=0.5, min_finished=2)
    c = run(ro, "rel-h")
    assert c.state == "halted" and "2 of 2 finished failed" in c.reason
    states = {t.device: t.state for t in store.targets("rel-h")}
    assert states == {"h-0": "failed", "h-1": "failed", "h-2": "aborted", "h-3": "skipped", "h-4": "skipped",
                      "h-5": "skipped"}
    assert mid.wait_command("ota_abort")
    assert all(d.commands == [] for d in rest)
    assert OtaProgress(store.db).get("rel-h", "h-2").st == "aborting"


def test_a_restarted_runner_still_sees_its_devices_outcomes(rig):
    """The runner that started a device goes away; a new one (a new action) adopts the started
    device and its confirmed event decides it, instead of a timeout."""
    device, engine, spec, store = rig
    box: list = []
    slow = device("r-0", lambda b: (box.append(b) or (lambda cmd: ("ok", {"st": "downloading"}))))
    ro1, _ = engine()
    ro1.create("rel-r", "ota", spec, ["r-0"], cohorts=(100,), rate=6000, timeout_s=30)
    ro1.tick()
    slow.wait_command("ota")
    ro2, act2 = engine()
    ro2.tick()                              # adopts r-0
    slow.event("downloading", V, SEQ, n=3, of=10)
    slow.event("confirmed", V, SEQ)
    c = run(ro2, "rel-r", 10)
    assert c.state == "done" and c.counts == {"succeeded": 1}
    assert OtaProgress(store.db).get("rel-r", "r-0").st == "confirmed"
