"""The simulator-only clock rate (firmware/clock.py, config "sim": {"clock_rate": n}): between time
beacons the device clock runs n x real time, so host_tools/sim/world.py can play an hour in a
minute; without it (every real board) the clock runs at real time; a bad rate stops the board
at boot with a clear message."""
import time

from host_tools.cloud.registry import Registry
from host_tools.sim.board import EXIT_CONFIG
from host_tools.sim.world import SimClock
from tests.agentkit import Watcher, cloud, provision


def _hb_after_beacon(broker, tmp_path, device, **kw):
    reg = Registry()
    w = Watcher(broker, reg)
    c = cloud(broker, reg)
    b = provision(broker, reg, tmp_path, device, **kw).start()
    try:
        w.expect(lambda t, m, r: t.endswith("/up/status") and m.get("online"), 15, "online")
        assert c.sync_time(device)
        b.wait_for("time set", 5)
        t_beacon, real0 = int(b.wait_for(r"time set (\d+)", 1).group(1)), time.monotonic()
        _, hb, _ = w.expect(lambda t, m, r: t.endswith("/up/hb") and "iat" in m, 15, "heartbeat with iat")
        return hb["iat"] - t_beacon, time.monotonic() - real0
    finally:
        b.kill()
        c.close()
        w.close()


def test_clock_rate_runs_the_device_clock_fast(broker, tmp_path):
    ahead, real = _hb_after_beacon(broker, tmp_path, "dev1", clock_rate=60)
    assert real > 1
    assert 60 * real - 90 <= ahead <= 60 * real + 5, (ahead, real)


def test_clock_runs_at_real_time_by_default(broker, tmp_path):
    ahead, real = _hb_after_beacon(broker, tmp_path, "dev2")
    assert ahead <= real + 2, (ahead, real)


def test_bad_clock_rate_stops_the_board(broker, tmp_path):
    b = provision(broker, Registry(), tmp_path, "dev1")
    import json
    cfg = json.loads((b.dir / "config.json").read_text())
    cfg["sim"] = {"clock_rate": 0}
    b.write_config(cfg)
    b.start()
    assert b.wait(10) == EXIT_CONFIG
    assert "clock_rate" in b.log()


def test_sim_clock_follows_its_rate():
    c = SimClock(1000, 50)
    time.sleep(0.1)
    assert 1004 <= c() <= 1010
    assert c.real(100) == 2.0
