"""The registry's key history (SPEC §11) on both backends: a next key offered once and kept
sealed, promotion on the first message verified under it (once, whatever the concurrency), the
switch point, retired keys verify-only below it, and a v2 registry file migrated."""
from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import replace

import pytest

from host_tools.cloud.keyvault import KeyVault
from host_tools.cloud.registry import REGISTRY_VERSION, Registry, RegistryError, open_uplink
from host_tools.protocol import ProtocolError, seal, topic


@pytest.fixture
def url(ledger_url):
    return ledger_url  # conftest: SQLite, then PostgreSQL


def hb(seq: int) -> dict:
    return {"type": "heartbeat", "seq": seq, "uptime": 1, "heap": 1000, "jdepth": 0, "clock": 1}


def up(key: bytes, kid: str, seq: int, dev: str = "gate-1") -> tuple[str, bytes]:
    t = topic(dev, "heartbeat")
    return t, seal(key, kid, t, hb(seq))


def test_offer_next_is_idempotent_and_sealed(url):
    master = os.urandom(32)
    reg = Registry(url, master_key=master)
    try:
        k1 = os.urandom(32)
        reg.add("gate-1", k1, "gate", "sim-gate")
        assert reg.next_key("gate-1") is None
        v, k2 = reg.offer_next("gate-1")
        assert v == 2 and len(k2) == 32 and k2 != k1
        assert reg.offer_next("gate-1") == (2, k2)  # a resumed rotation: the same key
        blob = bytes(reg.db._read("SELECT key FROM device_keys WHERE device_id='gate-1'")[0][0])
        assert blob.startswith(b"EPK1") and k2 not in blob
        assert [(k.version, k.state) for k in reg.keys("gate-1")] == [(1, "current"), (2, "next")]
        assert reg.get("gate-1").key == k1  # still current
        reg.set_status("gate-1", "revoked")
        with pytest.raises(RegistryError, match="revoked"):
            reg.offer_next("gate-1")
    finally:
        reg.close()
    with pytest.raises(RegistryError):  # the next key does not open without the master key
        Registry(url, master_key=os.urandom(32)).key_version("gate-1", 2)


def test_verify_picks_the_key_by_kid_and_promotes_once(url):
    reg = Registry(url)
    try:
        k1 = os.urandom(32)
        dev = reg.add("gate-1", k1, "gate", "sim-gate")
        reg.add("gate-2", os.urandom(32), "gate", "sim-gate")
        _, k2 = reg.offer_next("gate-1")
        # during the rotation both kids verify; the current one changes nothing
        payload, d = reg.verify_uplink(dev, *up(k1, "gate-1:1", 10))
        assert d is dev and reg.get("gate-1").key_version == 1
        # a forgery under the next kid (wrong key) promotes nothing
        with pytest.raises(ProtocolError) as e:
            reg.verify_uplink(dev, *up(os.urandom(32), "gate-1:2", 12))
        assert e.value.code == "bad_mac" and reg.get("gate-1").key_version == 1
        # another device's kid on this device's topic: bad_kid, as before
        with pytest.raises(ProtocolError) as e:
            reg.verify_uplink(dev, *up(k2, "gate-2:2", 12))
        assert e.value.code == "bad_kid"
        # the first message under the next kid: promoted, switch point at its seq
        _, d = reg.verify_uplink(dev, *up(k2, "gate-1:2", 12))
        assert (d.key_version, d.key, d.switch_seq) == (2, k2, 12)
        keys = reg.keys("gate-1")
        assert [(k.version, k.state, k.switch_seq) for k in keys] == [(1, "retired", 12), (2, "current", None)]
        # a lower seq under the new kid (another topic, overtaken) lowers the switch point
        _, d = reg.verify_uplink(d, *up(k2, "gate-1:2", 11))
        assert d.switch_seq == 11 and reg.get("gate-1").switch_seq == 11
        # the old kid: below the switch point (a journaled record resent) verifies...
        reg.verify_uplink(d, *up(k1, "gate-1:1", 10))
        # ...at or above it is refused, whether the caller's device is fresh or stale
        for stale in (d, replace(dev, read_at=0.0)):  # read before the switch, over key_fresh_s ago
            with pytest.raises(ProtocolError) as e:
                reg.verify_uplink(stale, *up(k1, "gate-1:1", 11))
            assert e.value.code == "bad_kid"
        # a stale device (read before the switch) still verifies the new kid, and is refreshed
        _, fresh = reg.verify_uplink(dev, *up(k2, "gate-1:2", 13))
        assert fresh.key_version == 2
        reg.key_fresh_s = 0.0  # every device given is read again: a cache of the old key is not trusted
        with pytest.raises(ProtocolError):
            reg.verify_uplink(dev, *up(k1, "gate-1:1", 16))
        reg.key_fresh_s = 30.0
        assert fresh.key_version == 2
        # open_uplink (the queue's and the watch's helper) refreshes its cache
        cache = {"gate-1": dev}
        assert open_uplink(reg, cache, *up(k2, "gate-1:2", 14))[2] is None and cache["gate-1"].key_version == 2
        assert open_uplink(reg, cache, *up(k1, "gate-1:1", 15))[2] == "bad_kid"
        # a second rotation: version 3, key 1 stays retired at its point
        v, k3 = reg.offer_next("gate-1")
        assert v == 3
        reg.verify_uplink(reg.get("gate-1"), *up(k3, "gate-1:3", 20))
        assert [(k.version, k.state, k.switch_seq) for k in reg.keys("gate-1")] == \
            [(1, "retired", 11), (2, "retired", 20), (3, "current", None)]
        reg.verify_uplink(reg.get("gate-1"), *up(k1, "gate-1:1", 5))
        reg.verify_uplink(reg.get("gate-1"), *up(k2, "gate-1:2", 19))
    finally:
        reg.close()


def test_concurrent_workers_promote_once(url):
    setup = Registry(url)
    dev = setup.add("gate-1", os.urandom(32), "gate", "sim-gate")
    _, k2 = setup.offer_next("gate-1")
    setup.close()
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def worker(seq: int) -> None:
        reg = Registry(url)
        try:
            barrier.wait()
            r = reg.promote("gate-1", 2, seq)
            with lock:
                results.append(r)
        finally:
            reg.close()
    threads = [threading.Thread(target=worker, args=(100 + i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 5 + [True]
    reg = Registry(url)
    try:
        assert [(k.version, k.state, k.switch_seq) for k in reg.keys("gate-1")] == [(1, "retired", 100), (2, "current", None)]
        assert reg.get("gate-1").key == k2 and dev.key_version == 1
    finally:
        reg.close()


def test_reseal_covers_the_key_history(url):
    m1, m2 = os.urandom(32), os.urandom(32)
    reg = Registry(url, master_key=m1)
    try:
        k1 = os.urandom(32)
        reg.add("gate-1", k1, "gate", "sim-gate")
        _, k2 = reg.offer_next("gate-1")
        reg.promote("gate-1", 2, 7)
        _, k3 = reg.offer_next("gate-1")
        reg.reseal(KeyVault(m2))
    finally:
        reg.close()
    reg = Registry(url, master_key=m2)
    try:
        assert [k.key for k in reg.keys("gate-1")] == [k1, k2, k3]
    finally:
        reg.close()


def test_a_v2_registry_file_is_migrated(tmp_path):
    path = tmp_path / "v2.db"
    key = os.urandom(32)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE devices (device_id TEXT PRIMARY KEY, key BLOB NOT NULL, key_version INTEGER NOT NULL,"
               " kind TEXT NOT NULL, board TEXT NOT NULL, dn_seq INTEGER NOT NULL DEFAULT 0,"
               " status TEXT NOT NULL DEFAULT 'active')")
    db.execute("CREATE TABLE schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES ('registry', 2)")
    db.execute("INSERT INTO devices VALUES ('gate-1', ?, 1, 'gate', 'sim-gate', 41, 'active')", (key,))
    db.commit()
    db.close()
    reg = Registry(path)
    try:
        assert reg.db.schema_version("registry") == REGISTRY_VERSION == 3
        assert reg.get("gate-1").key == key and reg.next_seq("gate-1") == 42
        assert [(k.version, k.state) for k in reg.keys("gate-1")] == [(1, "current")]
        v, k2 = reg.offer_next("gate-1")
        _, d = reg.verify_uplink(reg.get("gate-1"), *up(k2, "gate-1:2", 3))
        assert d.key_version == 2
    finally:
        reg.close()
