"""The rollout engine (host_tools/cloud/rollout.py) on SQLite and PostgreSQL, with a scripted action
and a fake clock: cohorts, rate, timeouts, the abort threshold, pause/resume/cancel, a restart of
the cloud side mid-campaign, two runners on one database; and CommandAction on VM boards."""
from __future__ import annotations

import threading
import time

import pytest

from host_tools.cloud.rollout import CommandAction, RolloutError, Rollouts, cohort_sizes
from host_tools.cloud.rollout_store import RolloutStore


class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self):
        return self.t


class Scripted:
    """Outcomes by device: "ok", "fail", or "hang" (never answers); records every call."""

    def __init__(self, script=None, raise_on=()):
        self.script = script or {}
        self.raise_on = set(raise_on)
        self.started: list[str] = []
        self.aborted: list[str] = []
        self.done: set[str] = set()

    def start(self, c, device):
        if device in self.raise_on:
            raise OSError("broker unreachable")
        self.started.append(device)

    def poll(self, c, device):
        how = self.script.get(device, "ok")
        if how == "hang" or device in self.done or device not in self.started:  # not ours: no outcome
            return None
        self.done.add(device)
        return (True, None) if how == "ok" else (False, "self_test")

    def abort(self, c, device):
        self.aborted.append(device)


@pytest.fixture
def rig(ledger_url):
    stores = []

    def make(action, clock):
        st = RolloutStore.open(ledger_url)
        stores.append(st)
        return Rollouts(st, {"command": action}, clock=clock)
    yield make
    for st in stores:
        st.close()


DEVS = [f"d{i:02d}" for i in range(20)]


def run_until_final(ro, clock, step=1.0, limit=2000):
    for _ in range(limit):
        ro.tick()
        if all(c.final for c in ro.store.campaigns()):
            return
        clock.t += step
    raise AssertionError("campaign never reached a final state")


def test_cohorts_open_one_after_another_and_every_device_succeeds(rig):
    clock, act = Clock(), Scripted()
    ro = rig(act, clock)
    ro.create("c1", "command", {"name": "x"}, DEVS, cohorts=(5, 25, 50, 100), rate=6000, timeout_s=60)
    assert cohort_sizes((5, 25, 50, 100), 20) == [1, 5, 10, 20]
    seen = []
    for _ in range(10):
        ro.tick()
        seen.append(len(act.started))
        clock.t += 1
    # each tick finishes the started ones (poll) and opens the next cohort on the following tick
    assert seen[:4] == [1, 5, 10, 20]
    c = ro.status("c1")
    assert c.state == "done" and c.counts == {"succeeded": 20} and act.started == DEVS


def test_the_rate_bounds_starts_per_minute(rig):
    clock, act = Clock(), Scripted({d: "hang" for d in DEVS})
    ro = rig(act, clock)
    ro.create("c1", "command", {}, DEVS, cohorts=(100,), rate=6, timeout_s=3600)  # one per 10 s
    for _ in range(60):   # one simulated minute, a tick a second
        ro.tick()
        clock.t += 1
    assert len(act.started) == 6


def test_a_device_that_never_answers_times_out_and_the_campaign_still_ends(rig):
    clock, act = Clock(), Scripted({"d01": "hang"})
    ro = rig(act, clock)
    ro.create("c1", "command", {}, DEVS[:4], cohorts=(100,), rate=6000, timeout_s=30, abort_share=1.0)
    run_until_final(ro, clock)
    c = ro.status("c1")
    assert c.state == "done" and c.counts == {"succeeded": 3, "timed_out": 1}
    assert act.aborted == ["d01"]
    assert ro.store.targets("c1")[1].reason == "no outcome in 30 s"
    assert not ro.report("c1", "d01", True)   # a late success never rewrites a final state
    assert ro.status("c1").counts == {"succeeded": 3, "timed_out": 1}


def test_the_threshold_halts_it_and_the_rest_keep_what_they_had(rig):
    """20 devices, 3 of the first 5 fail their self-test: halted at the threshold; nothing past the
    second cohort ever starts; devices in flight are aborted, the pending ones skipped."""
    clock = Clock()
    act = Scripted({"d01": "fail", "d02": "fail", "d03": "fail", "d04": "hang"})
    ro = rig(act, clock)
    ro.create("c1", "command", {}, DEVS, cohorts=(5, 25, 50, 100), rate=6000, timeout_s=60,
              abort_share=0.5, min_finished=4)
    run_until_final(ro, clock)
    c = ro.status("c1")
    assert c.state == "halted" and "3 of 4 finished failed" in c.reason
    assert act.started == DEVS[:5] and act.aborted == ["d04"]
    assert c.counts == {"succeeded": 1, "failed": 3, "aborted": 1, "skipped": 15}
    with pytest.raises(RolloutError, match="halted"):
        ro.resume("c1")


def test_pause_stops_starts_resume_goes_on_cancel_ends_it(rig):
    clock, act = Clock(), Scripted({d: "hang" for d in DEVS[2:]})
    ro = rig(act, clock)
    ro.create("c1", "command", {}, DEVS, cohorts=(10, 100), rate=6000, timeout_s=3600)
    ro.tick()
    clock.t += 1
    assert ro.pause("c1").state == "paused"
    for _ in range(5):
        ro.tick()
        clock.t += 1
    assert len(act.started) == 2 and ro.status("c1").counts == {"succeeded": 2, "pending": 18}
    assert ro.resume("c1").state == "running"
    ro.tick()
    assert len(act.started) == 20
    c = ro.cancel("c1")
    assert c.state == "cancelled" and c.counts == {"succeeded": 2, "aborted": 18}
    assert sorted(act.aborted) == DEVS[2:]
    with pytest.raises(RolloutError, match="cancelled"):
        ro.pause("c1")


def test_a_restart_of_the_cloud_side_goes_on_where_it_was(rig):
    """The runner stops mid-campaign; a new one on the same database finishes it. The devices the old
    runner had in flight have no outcome the new one can see: they time out (a final state, never
    lost, never started twice); the next cohort opens after them."""
    clock = Clock()
    act1 = Scripted({"d05": "hang"})
    ro1 = rig(act1, clock)
    ro1.create("c1", "command", {}, DEVS[:10], cohorts=(20, 60, 100), rate=6000, timeout_s=20, abort_share=1.0)
    for _ in range(2):
        ro1.tick()
        clock.t += 1
    assert act1.started == DEVS[:6]
    act2 = Scripted()
    ro2 = rig(act2, clock)     # the restarted cloud side: a new store connection, a new action
    run_until_final(ro2, clock)
    c = ro2.status("c1")
    assert c.state == "done" and c.counts == {"succeeded": 6, "timed_out": 4}
    assert act2.started == DEVS[6:10]    # never a device started twice


def test_two_runners_on_one_database_never_start_a_device_twice(rig):
    clock = Clock()
    acts = [Scripted({d: "hang" for d in DEVS}), Scripted({d: "hang" for d in DEVS})]
    ros = [rig(a, clock) for a in acts]
    ros[0].create("c1", "command", {}, DEVS, cohorts=(100,), rate=60000, timeout_s=3600)
    threads = [threading.Thread(target=lambda r=r: [r.tick() for _ in range(20)]) for r in ros]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    both = acts[0].started + acts[1].started
    assert sorted(both) == DEVS   # each once, whichever runner took it


def test_a_start_that_raises_fails_that_device_only(rig):
    clock, act = Clock(), Scripted(raise_on={"d00"})
    ro = rig(act, clock)
    ro.create("c1", "command", {}, DEVS[:5], cohorts=(100,), rate=6000, timeout_s=60, abort_share=1.0)
    run_until_final(ro, clock)
    c = ro.status("c1")
    assert c.counts == {"failed": 1, "succeeded": 4}
    assert "broker unreachable" in ro.store.targets("c1")[0].reason


@pytest.mark.parametrize("kw, says", [
    ({"cohorts": (50, 25, 100)}, "rising"), ({"cohorts": (5, 50)}, "ending at 100"),
    ({"cohorts": (0, 100)}, "rising"), ({"rate": 0}, "rate"), ({"timeout_s": 0}, "timeout"),
    ({"abort_share": 0}, "abort_share"), ({"abort_share": 1.5}, "abort_share"), ({"min_finished": 0}, "min_finished"),
])
def test_bad_parameters_are_refused_and_nothing_is_stored(rig, kw, says):
    ro = rig(Scripted(), Clock())
    with pytest.raises(RolloutError, match=says):
        ro.create("c1", "command", {}, DEVS, **kw)
    assert ro.store.campaigns() == []


def test_bad_targets_and_ids_are_refused(rig):
    ro = rig(Scripted(), Clock())
    for args, says in [(("c1", "ota", {}, DEVS), "unknown action"), (("c1", "command", {}, []), "no devices"),
                       (("c1", "command", {}, ["a", "a"]), "twice"), (("", "command", {}, DEVS), "id")]:
        with pytest.raises(RolloutError, match=says):
            ro.create(*args)
    ro.create("c1", "command", {}, DEVS)
    with pytest.raises(RolloutError, match="exists"):
        ro.create("c1", "command", {}, DEVS)
    with pytest.raises(RolloutError, match="no campaign"):
        ro.status("nope")


# ---- CommandAction on VM boards, real Mosquitto ----------------------------------------------
def test_a_command_campaign_on_vm_boards_halts_at_its_threshold(site, tmp_path):
    """Six gates, two of them registered but powered off (they never answer): a `display` rollout in
    cohorts 20/50/100 % halts after the third device; the boards past it never got the command."""
    boards = {}
    names = [f"ro-{i}" for i in range(6)]
    off = {"ro-1", "ro-3"}
    for n in names:
        b = site.board(n, "gate")
        if n in off:
            b.stop()
        boards[n] = b
    store = RolloutStore.open(f"sqlite:///{tmp_path / 'rollouts.db'}")
    try:
        ro = Rollouts(store, {"command": CommandAction(site.c)})
        ro.create("banner", "command", CommandAction.spec("display", {1: "v2 banner"}), names,
                  cohorts=(20, 50, 100), rate=600, timeout_s=4, abort_share=0.3, min_finished=3)
        deadline = time.monotonic() + 60
        while not ro.status("banner").final and time.monotonic() < deadline:
            ro.tick()
            time.sleep(0.2)
        c = ro.status("banner")
        assert c.state == "halted", (c.state, c.counts)
        states = {t.device: t.state for t in store.targets("banner")}
        assert states == {"ro-0": "succeeded", "ro-1": "timed_out", "ro-2": "succeeded",
                          "ro-3": "skipped", "ro-4": "skipped", "ro-5": "skipped"}
        assert boards["ro-0"].hw.display() == "v2 banner" and boards["ro-2"].hw.display() == "v2 banner"
        assert boards["ro-4"].hw.display() != "v2 banner" and boards["ro-5"].hw.display() != "v2 banner"
    finally:
        store.close()


def test_the_campaign_cli_creates_runs_and_reports(site, tmp_path):
    """`edgepay campaign create/run/status/pause` against VM boards: two gates, one powered off;
    a failure share of 0.5 over two finished devices halts it (exit 5), and status says why."""
    import json

    from click.testing import CliRunner

    from host_tools.cli import cli
    from tests.agentkit import CLOUD
    on = site.board("cli-0", "gate")
    site.board("cli-1", "gate").stop()
    db = str(tmp_path / "ledger.db")
    base = ["--registry", str(site.root / "registry.db"), "--broker", f"127.0.0.1:{site.broker.cloud_port}",
            "--user", CLOUD[0], "--password", CLOUD[1], "--json"]

    def edgepay(*args):
        r = CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)
        assert "Traceback" not in r.output
        return r
    r = edgepay("campaign", "create", "banner", "display", "text=hello", "--kind", "gate", "--cohorts", "100",
                "--timeout", "3", "--abort-at", "0.5", "--min-finished", "2", "--db", db)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["devices"] == 2
    r = edgepay("campaign", "create", "banner", "display", "text=x", "--device", "cli-0", "--db", db)
    assert r.exit_code == 2 and "exists" in r.stdout
    r = edgepay("campaign", "create", "b2", "displya", "--device", "cli-0", "--db", db)
    assert r.exit_code == 2 and "did you mean display" in r.stdout
    r = edgepay("campaign", "run", "--every", "0.2", "--db", db)
    assert r.exit_code == 5, r.output
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert lines[-1]["state"] == "halted"
    r = edgepay("campaign", "status", "banner", "--db", db)
    assert r.exit_code == 5
    st = json.loads(r.stdout)
    assert {t["device"]: t["state"] for t in st["targets"]} == {"cli-0": "succeeded", "cli-1": "timed_out"}
    assert "1 of 2 finished failed" in st["reason"]
    assert on.hw.display() == "hello"
    r = edgepay("campaign", "pause", "banner", "--db", db)
    assert r.exit_code == 1 and "is halted" in r.stdout
    r = edgepay("campaign", "status", "--db", str(tmp_path / "none.db"))
    assert r.exit_code == 1 and "no database" in r.stdout
