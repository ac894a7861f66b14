"""The firmware chunk server (host_tools/cloud/chunkserver.py, SPEC §10) on a real Mosquitto: a
stand-in device built on the host codec pulls every chunk of a release and reassembles it; every
request that does not verify or names nothing servable is counted and never answered; a flood from
one device is bounded (rate, cache, counters) and another device is still served."""
from __future__ import annotations

import hashlib
import os
import time
import tracemalloc

import pytest

from host_tools.cloud.chunkserver import ChunkServer, ReleaseStore, read_manifest, rel_of
from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.registry import Registry
from host_tools.protocol.manifest import ManifestError
from tests.conftest import USERS
from tests.otastandin import StandIn, write_release

CLOUD = ("cloud", USERS["cloud"])
SIZE, CHUNK = 10_000, 1024        # 10 chunks, the last one 784 bytes


@pytest.fixture
def rig(broker, tmp_path):
    """(registry, store, server, payload, rel, make_device)."""
    reg = Registry(tmp_path / "registry.db")
    keys = {d: os.urandom(32) for d in ("dev1", "dev2")}
    for d, k in keys.items():
        reg.add(d, k, "gate", "sim-gate")
    payload = os.urandom(SIZE)
    write_release(tmp_path / "rel", payload, chunk=CHUNK)
    store = ReleaseStore(tmp_path / "rel", cache_chunks=4)
    cs = ChunkServer.connect(reg, BrokerSettings("127.0.0.1", broker.cloud_port, *CLOUD), store)
    devs: list[StandIn] = []

    def device(name: str) -> StandIn:
        d = StandIn(broker.port, name, keys[name], password=USERS[name])
        devs.append(d)
        return d
    yield reg, store, cs, payload, rel_of(hashlib.sha256(payload).digest()), device, keys
    for d in devs:
        d.close()
    cs.close()
    reg.close()


def test_a_device_pulls_every_chunk_and_reassembles_the_payload(rig):
    reg, store, cs, payload, rel, device, _ = rig
    d = device("dev1")
    got = d.download(rel, SIZE, CHUNK)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    assert cs.counts("dev1") == {"requests": 10, "answered": 10, "refused": 0}
    assert store.cached() <= 4
    # a chunk is not numbered (SPEC §10): no seq, no iat, and no write to the registry's counter
    before = reg.next_seq("dev1")
    d.request(rel, 0)
    c = d.chunk()
    assert "seq" not in c and "iat" not in c and c["aud"] == "dev1"
    assert reg.next_seq("dev1") == before + 1


def test_a_release_as_edgepay_release_build_writes_it_is_served(rig, tmp_path):
    """The store reads the files `edgepay release build` makes (a real sim-gate bundle) and finds one
    built while it runs (the rescan on a miss)."""
    import json

    from click.testing import CliRunner

    from host_tools.cli import cli
    reg, _, cs, _, _, device, _ = rig
    keys = tmp_path / "keys"
    k = json.loads(CliRunner().invoke(cli, ["--json", "release", "keygen", "--out", str(keys)]).stdout)
    out = tmp_path / "built"
    store = ReleaseStore(out, rescan_s=0)
    assert store.releases() == []
    r = CliRunner().invoke(cli, ["--json", "release", "build", "--board", "sim-gate", "--version", "2.0.0",
                                 "--seq", "9", "--key", k["private"], "--out", str(out), "--chunk", "1536"])
    assert r.exit_code == 0, r.output
    b = json.loads(r.stdout)
    rel = bytes.fromhex(b["sha256"])[:8]
    cs.store = store
    d = device("dev1")
    got = d.download(rel, b["size"], 1536)
    assert hashlib.sha256(got).hexdigest() == b["sha256"]
    assert store.find("sim-gate-2.0.0").manifest.version == "2.0.0" and store.find(rel.hex()) is not None


def test_every_refusal_is_counted_and_never_answered(rig, broker):
    reg, store, cs, payload, rel, device, keys = rig
    d = device("dev1")
    n = -(-SIZE // CHUNK)
    cases = [
        ("bad_mac", dict(key=os.urandom(32))),                       # forged: a key nobody has
        ("bad_mac", dict(key=keys["dev2"])),                          # another device's key, this kid
        ("bad_kid", dict(key=keys["dev2"], kid=b"dev2:1")),           # another device's key and kid
        ("unknown_rel", dict(rel=b"\x00" * 8)),
        ("past_end", dict(i=n)),
        ("past_end", dict(i=2 ** 40)),
    ]
    for k, (why, kw) in enumerate(cases, 1):
        d.request(kw.pop("rel", rel), kw.pop("i", 0), **kw)
        assert cs.wait_requests("dev1", k, 5)
        assert d.no_chunk(0.3), why
        assert cs.reasons[why] >= 1, (why, cs.reasons)
    assert cs.counts("dev1") == {"requests": len(cases), "answered": 0, "refused": len(cases)}
    # not a chunk_req at all, and garbage: refused the same way
    t = "v1/dev/dev1/up/ota"
    d.c.publish(t, b"\xa0", qos=0).wait_for_publish(5)
    from host_tools.protocol import seal
    d.c.publish(t, seal(keys["dev1"], b"dev1:1", "v1/dev/dev1/up/evt",
                        {"type": "event", "seq": 99, "code": "x"}), qos=0).wait_for_publish(5)
    assert cs.wait_requests("dev1", len(cases) + 2, 5) and d.no_chunk(0.3)
    # a device the registry does not know (the cloud user may publish anywhere): counted apart
    from tests.otastandin import StandIn
    ghost = StandIn(broker.cloud_port, "ghost", os.urandom(32), user="cloud", password=USERS["cloud"])
    try:
        ghost.request(rel, 0)
        deadline = time.monotonic() + 5
        while cs.unknown < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cs.unknown == 1 and "ghost" not in cs.stats and ghost.no_chunk(0.3)
    finally:
        ghost.close()
    # a revoked device is sent nothing
    reg.set_status("dev2", "revoked")
    cs._keys.clear()
    d2 = device("dev2")
    d2.request(rel, 0)
    assert cs.wait_requests("dev2", 1, 5) and d2.no_chunk(0.3) and cs.reasons["revoked"] == 1
    # and the well-formed request of a good device is still answered
    d.request(rel, 3)
    assert d.chunk()["data"] == payload[3 * CHUNK:4 * CHUNK]


def test_a_flood_from_one_device_is_bounded_and_another_is_still_served(rig):
    """500 requests from dev1 as fast as paho sends them: the server stays up, answers at most its
    burst plus its rate (lowered here below what this machine could answer, so the bucket is what
    bounds it), caches at most 4 chunks, keeps two devices' counters; dev2 meanwhile downloads the
    whole release, and dev1 is served again once its bucket refills."""
    reg, store, cs, payload, rel, device, _ = rig
    cs.rate, cs.burst = 100.0, 16.0
    flood, other = device("dev1"), device("dev2")
    n = -(-SIZE // CHUNK)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        t0 = time.monotonic()
        for k in range(500):
            flood.request(rel, k % n, wait=False)
        got = other.download(rel, SIZE, CHUNK)
        assert cs.wait_requests("dev1", 500, 30), cs.counts("dev1")
        took = time.monotonic() - t0
        flood.drain()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    c = cs.counts("dev1")
    assert c["requests"] == 500 and c["answered"] + c["refused"] == 500
    assert c["answered"] <= cs.burst + cs.rate * took + 1 and cs.reasons["rate"] == c["refused"] > 0
    assert store.cached() <= 4 and store.reads >= n
    assert set(cs.stats) == {"dev1", "dev2"} and len(cs._buckets) == 2
    assert grown < 2 * 1024 * 1024, grown       # no queue of requests or answers built up
    time.sleep(0.2)
    flood.drain()
    flood.request(rel, n - 1)
    assert flood.chunk()["data"] == payload[(n - 1) * CHUNK:]


def test_the_store_serves_only_payloads_that_match_their_manifest(tmp_path):
    root = tmp_path / "rel"
    good = os.urandom(3000)
    write_release(root, good, version="1.0.0", chunk=256)
    stem, _, _ = write_release(root, os.urandom(3000), version="1.0.1", chunk=256)
    (stem.parent / f"{stem.name}.bin").write_bytes(os.urandom(3000))   # not the payload it names
    (root / "junk.manifest").write_bytes(b"not a manifest")
    store = ReleaseStore(root, cache_chunks=2, rescan_s=0)
    assert [r.name for r in store.releases()] == ["sim-gate-1.0.0"]
    assert set(store.problems) == {"sim-gate-1.0.1.manifest", "junk.manifest"}
    assert "not the payload" in store.problems["sim-gate-1.0.1.manifest"]
    rel = rel_of(hashlib.sha256(good).digest())
    r = store.get(rel)
    assert r is not None and r.chunks == 12 and r.signed == (root / "sim-gate-1.0.0.manifest").read_bytes()
    assert b"".join(store.chunk(rel, i) or b"" for i in range(12)) == good
    assert store.chunk(rel, 12) is None and store.chunk(rel, -1) is None and store.chunk(b"x" * 8, 0) is None
    assert store.cached() == 2
    # a payload removed: no longer served (from its next read on), and named at the next scan
    (root / "sim-gate-1.0.0.bin").unlink()
    assert store.chunk(rel, 5) is None and store.get(rel) is None
    assert "sim-gate-1.0.0.manifest" in store.problems and store.cached() == 0
    # put back, changed: judged again
    write_release(root, good, version="1.0.0", chunk=512)
    assert store.get(rel) is not None and store.get(rel).chunks == 6
    with pytest.raises(ManifestError):
        read_manifest(b"\xd2\x84\x40\xa0\x40\x40")


def test_edgepay_serve_runs_the_chunk_server_as_a_part(broker, tmp_path, monkeypatch):
    """`edgepay serve --only chunks`: the part answers from [store] releases, in its share group."""
    from host_tools.service.config import load
    from host_tools.service.run import Service
    reg = Registry(tmp_path / "registry.db")
    key = os.urandom(32)
    reg.add("dev1", key, "gate", "sim-gate")
    reg.close()
    payload = os.urandom(4000)
    write_release(tmp_path / "releases", payload, chunk=512)
    cfg = tmp_path / "edgepay.toml"
    cfg.write_text(f'[broker]\nport = {broker.cloud_port}\npassword_env = "TEST_MQTT_PW"\n'
                   f'[store]\nregistry = "{tmp_path / "registry.db"}"\nreleases = "{tmp_path / "releases"}"\n'
                   f'[parts]\nchunks_group = "chunks-t"\n')
    monkeypatch.setenv("TEST_MQTT_PW", USERS["cloud"])
    svc = Service(load(cfg), only=["chunks"]).start()
    d = StandIn(broker.port, "dev1", key, password=USERS["dev1"])
    try:
        assert svc.chunks is not None and svc.client is None and not svc.not_ready()
        got = d.download(rel_of(hashlib.sha256(payload).digest()), len(payload), 512)
        assert got == payload and svc.chunks.counts("dev1")["answered"] == 8
    finally:
        d.close()
        svc.stop()
