"""A firmware campaign over 20 VM boards on a real broker (issue 12 §4): the rollout engine with the
OTA action and the chunk server, three boards of the first cohort getting a release whose
self-test fails on them. Each of those three rolls back by itself and says so; the campaign halts
at its threshold; every board not started keeps its old firmware and keeps serving."""
from __future__ import annotations

import threading
import time

from host_tools.cloud.chunkserver import ChunkServer, ReleaseStore
from host_tools.cloud.ota_action import OtaAction, OtaProgress
from host_tools.cloud.rollout import Rollouts
from host_tools.cloud.rollout_store import HALTED, RolloutStore
from host_tools.sim.board import Resetter
from tests.agentkit import AgentRig
from tests.otakit import Releases, ota_events

N = 20
BAD = ("g-01", "g-02", "g-03")


def test_a_campaign_halts_at_its_threshold_and_the_rest_keep_their_firmware(broker, tmp_path):
    rig = AgentRig(broker, tmp_path, serve_time=True)
    rel = Releases(tmp_path / "rel")
    boards = [rig.board(f"g-{i:02d}", ota=rel.config()) for i in range(1, N + 1)]
    for b in boards:
        b.start()
    store = RolloutStore.open(f"sqlite:///{tmp_path / 'rollouts.db'}")
    cs = ChunkServer(rig.reg, rig.c.mqtt, ReleaseStore(rel.dir))
    resetter = Resetter(boards)
    stop = threading.Event()
    try:
        for b in boards:
            b.wait_for(r"\bonline\b", 60)
        # the release's self-test fails on three boards (as a release that cannot drive their hardware)
        bad = rel.patched("bad3", {"agent.py": ("        return self.journal_error is None and",
                                                f"        return self.device not in {BAD!r} and")})
        r = rel.build("sim-gate", "0.7.0", 7, root=bad)
        act = OtaAction(rig.c, OtaProgress(store.db))
        ro = Rollouts(store, {"ota": act})
        devices = [b.dir.name for b in boards]
        ro.create("fw-0.7.0", "ota", OtaAction.spec(r.signed, r.manifest, "sim-gate-0.7.0"), devices,
                  cohorts=(20, 100), rate=600, timeout_s=240, abort_share=0.5)
        runner = threading.Thread(target=ro.run, args=(stop,), daemon=True)
        runner.start()
        deadline = time.monotonic() + 300
        while not ro.status("fw-0.7.0").final:
            assert time.monotonic() < deadline, ro.status("fw-0.7.0")
            time.sleep(0.5)
        c = ro.status("fw-0.7.0")
        assert c.state == HALTED, c
        by = {t.device: t for t in store.targets("fw-0.7.0")}
        for d in BAD:
            assert by[d].state == "failed" and "self_test" in (by[d].reason or ""), by[d]
            e = [x for x in ota_events(rig.w, d) if x["st"] == "rolled_back"]
            assert e and e[-1]["why"] == "self_test"
        assert by["g-04"].state == "succeeded", by["g-04"]
        assert {by[d].state for d in devices[4:]} == {"skipped"}
        # every board answers; those not started still run the firmware they had
        for d in devices:
            fw = rig.c.send(d, "get_state", timeout=20).data["fw"]
            assert fw == ("0.7.0" if d == "g-04" else "0.1.0"), (d, fw)
        assert all(cs.counts(d)["requests"] == 0 for d in devices[4:])
    finally:
        stop.set()
        resetter.stop()
        cs.close()
        rig.close()
        store.close()
