"""Heartbeat history (host_tools/cloud/heartbeats.py; issue 13 §4) on SQLite and PostgreSQL: full
resolution for the retention period, then one row per device and hour whose count, minimum,
maximum and mean are those of the heartbeats folded into it; idempotent, whole hours only."""
# ruff: noqa: F811  (`ledger` is the fixture imported from tests/test_ledger.py)
from __future__ import annotations

import pytest

from host_tools.cloud.heartbeats import HOUR, Heartbeats
from tests.test_ledger import ledger  # noqa: F401 (a fresh ledger database: the fixture)

T = 1_796_000_400 // HOUR * HOUR     # an hour's start


def test_downsampling_keeps_the_hours_figures_and_only_whole_hours(ledger):
    hb = Heartbeats(ledger, keep_s=2 * HOUR)
    beats = [(T + 60 * i, 30000 - 10 * i, -60 - i % 7, i % 3) for i in range(4 * 60)]   # 4 hours, one a minute
    for at, heap, rssi, jd in beats:
        hb.add("lot1-gate-1", at, heap=heap, rssi=rssi, jdepth=jd, uptime=at - T)
    hb.add("lot1-gate-1", T, heap=1, rssi=0, jdepth=9)          # the same second again: the same heartbeat
    hb.add("lot2-vend-1", T + 30, heap=20000, rssi=-70, jdepth=0)
    now = T + 4 * HOUR + 1                                       # 2 h retention: hours 0 and 1 fold
    assert hb.downsample(now) == 2 * 60 + 1 and hb.downsample(now) == 0   # idempotent
    pts = hb.history("lot1-gate-1", T, T + 4 * HOUR)
    hours = [p for p in pts if p["resolution"] == "hour"]
    assert [p["at"] for p in hours] == [T, T + HOUR] and all(p["n"] == 60 for p in hours)
    first = [b for b in beats if b[0] < T + HOUR]
    assert hours[0]["heap_min"] == min(b[1] for b in first) and hours[0]["heap_max"] == max(b[1] for b in first)
    assert hours[0]["heap_avg"] == sum(b[1] for b in first) // 60
    assert (hours[0]["rssi_min"], hours[0]["rssi_max"], hours[0]["jdepth_max"]) == (-66, -60, 2)
    raw = [p for p in pts if p["resolution"] == "full"]
    assert len(raw) == 2 * 60 and raw[0]["at"] == T + 2 * HOUR              # the rest at full resolution
    assert sum(p["n"] for p in pts) == len(beats)                           # nothing lost, nothing twice
    assert hb.history("lot2-vend-1", T, T + HOUR)[0] == {
        "at": T, "n": 1, "heap_min": 20000, "heap_max": 20000, "heap_avg": 20000, "rssi_min": -70,
        "rssi_max": -70, "jdepth_max": 0, "resolution": "hour"}
    # a late heartbeat for a folded hour is merged into it, not lost
    hb.add("lot1-gate-1", T + 59 * 60 + 30, heap=5, rssi=-99, jdepth=7)
    assert hb.downsample(now) == 1
    h0 = hb.history("lot1-gate-1", T, T + HOUR)[0]
    assert (h0["n"], h0["heap_min"], h0["rssi_min"], h0["jdepth_max"]) == (61, 5, -99, 7)


def test_last_heartbeat_and_online(ledger):
    hb = Heartbeats(ledger, keep_s=HOUR)
    hb.add("a", T + 100, heap=1, rssi=-50, jdepth=0, uptime=5)
    hb.add("a", T + 40, heap=2)                                  # an older one arriving late: not "last"
    hb.add("b", T - 600, heap=3)
    assert hb.last("a") == {"at": T + 100, "heap": 1, "rssi": -50, "jdepth": 0, "uptime": 5, "off_amt": 0, "off_n": 0}
    assert hb.last("nobody") is None
    assert hb.online(T + 160, 120) == 1 and hb.online(T + 160, 3600) == 2
    with pytest.raises(ValueError, match="an hour at least"):
        Heartbeats(ledger, keep_s=60)


def test_the_recorder_keeps_only_verified_heartbeats(ledger_url):
    import os

    from host_tools.cloud.heartbeats import Recorder
    from host_tools.cloud.registry import Registry
    from host_tools.protocol import make_kid, seal
    reg = Registry(ledger_url)
    try:
        key = os.urandom(32)
        reg.add("lot1-gate-1", key, "gate", "sim-gate")
        rec = Recorder(Heartbeats(reg.db), reg)
        t = "v1/dev/lot1-gate-1/up/hb"
        beat = {"type": "heartbeat", "seq": 9, "uptime": 60, "heap": 27000, "jdepth": 1, "clock": 1, "rssi": -58}
        rec.on_message(t, seal(key, make_kid("lot1-gate-1", 1), t, beat))
        rec.on_message(t, seal(os.urandom(32), make_kid("lot1-gate-1", 1), t, beat))          # forged
        rec.on_message("v1/dev/lot9-x/up/hb", seal(key, make_kid("lot9-x", 1), "v1/dev/lot9-x/up/hb", beat))
        rec.on_message(t, b"\xa0" * 40)                                                     # garbage
        assert rec.stats["recorded"] == 0                      # the network thread only queues
        assert rec.flush() == 4 and rec.stats == {"recorded": 1, "refused": 3, "dropped": 0}
        last = rec.hb.last("lot1-gate-1")
        assert last is not None and (last["heap"], last["rssi"], last["jdepth"], last["uptime"]) == (27000, -58, 1, 60)
        assert rec.hb.last("lot9-x") is None
        # a flood beyond the queue is counted and dropped, never held; what was queued is stored
        small = Recorder(rec.hb, reg, queue_max=1000)
        for i in range(1500):
            b = dict(beat, seq=100 + i, heap=i)
            small.on_message(t, seal(key, make_kid("lot1-gate-1", 1), t, b))
        assert small.stats["dropped"] == 500 and small.flush() == 1000 and small.stats["recorded"] == 1000
    finally:
        reg.close()
