"""bench/ota.py's pieces run (issue 12 §5): its MQTT packet split on bytes cut anywhere, and each
figure once on a small rig (one board per figure, a 2-board campaign): plausible numbers, and a
drop or a power cut mid-download fetching at most the one chunk in flight again (SPEC §10)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.append(str(BENCH))  # for its `from _kit import ...`
_spec = importlib.util.spec_from_file_location("bench_ota", BENCH / "ota.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_ota"] = bench  # its dataclasses look their module up there
_spec.loader.exec_module(bench)


def _publish(topic: str, payload: bytes, qos: int = 0, pid: int = 7) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic.encode() + (pid.to_bytes(2, "big") if qos else b"") + payload
    n, rl = len(body), bytearray()
    while True:
        b, n = n & 127, n >> 7
        rl.append(b | (128 if n else 0))
        if not n:
            break
    return bytes([0x30 | qos << 1]) + bytes(rl) + body


def test_packets_split_wherever_tcp_cuts_the_stream():
    pkts = [_publish("v1/dev/g-1/up/ota", b"r" * 20), _publish("v1/dev/g-1/dn/ota", b"c" * 1600),
            b"\x40\x02\x00\x07", _publish("v1/dev/g-1/up/evt", b"e" * 90, qos=1), b"\xc0\x00"]
    stream = b"".join(pkts)
    for step in (1, 3, 200, len(stream)):
        buf, got = bytearray(), []
        for k in range(0, len(stream), step):
            buf += stream[k:k + step]
            got += bench.split_packets(buf)
        assert got == pkts and not buf, step
    parsed = [bench.parse_packet(p, True) for p in pkts]
    assert [p.type for p in parsed] == [3, 3, 4, 3, 12]
    assert [p.size for p in parsed] == [len(p) for p in pkts]
    assert parsed[1].topic == "v1/dev/g-1/dn/ota" and parsed[1].payload == b"c" * 1600
    assert parsed[2].pid == 7 and parsed[3].pid == 7 and parsed[3].payload == b"e" * 90


@pytest.fixture
def rig(tmp_path):
    r = bench.Rig(tmp_path)
    yield r
    r.close()


def test_each_figure_runs_on_a_small_rig(rig):
    v = bench.measure_verify()
    assert 0 < v["verify_ms"] < 1000
    w = bench.measure_wire(rig)
    assert 1.0 < w["wire_ratio"] < 1.5
    assert sum(w["wire_breakdown"].values()) == w["wire_bytes"] > w["payload_bytes"] == rig.m.size
    assert w["resent_chunks_clean"] == 0
    for got in (bench.measure_drop(rig), bench.measure_power_cut(rig)):
        assert got["refused"] == 0 and 0 <= got["resent"] <= 1, got
    h = bench.measure_heap(rig)
    assert h["heap_samples"] >= 1 and 0 < h["idle_heap_kb"] < h["download_heap_kb"] < 64
    assert 0 < h["updater_code_kb"] < h["code_kb"]
    c = bench.measure_campaign(rig, 2, deadline_s=120)
    assert c["campaign_state"] == "done" and c["campaign_confirmed"] == 2 == c["campaign_on_ota_0"], c
    assert c["campaign_s"] is not None and c["campaign_s"] > 0
    out = {**v, **w, "download_heap_kb": h["download_heap_kb"], "campaign_s": c["campaign_s"],
           "resent_chunks_after_drop": {"tcp_drop": 0, "power_cut": 1}}
    assert set(bench.within(out)) == set(bench.GOALS)
