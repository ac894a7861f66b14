"""The device registry on both backends: refusals, and the cloud->device counter shared by many
senders (threads on separate connections, and processes) without ever reusing a number."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from host_tools.cloud.registry import REGISTRY_VERSION, Registry, RegistryError


@pytest.fixture
def url(ledger_url):
    return ledger_url  # conftest: SQLite (a sqlite:/// URL), then PostgreSQL


def test_add_get_and_refusals(url):
    reg = Registry(url)
    try:
        key = os.urandom(32)
        d = reg.add("gate-1", key, "gate", "sim-gate")
        assert reg.get("gate-1") == d and d.kid == b"gate-1:1" and reg.devices() == [d]
        for args, says in [(("gate-1", key, "gate", "b"), "already registered"), (("Bad_Id", key, "gate", "b"), "bad device id"),
                           (("g2", key[:16], "gate", "b"), "256 bits"), (("g2", key, "kiosk", "b"), "unknown device kind")]:
            with pytest.raises(RegistryError, match=says):
                reg.add(*args)
        with pytest.raises(RegistryError, match="key version"):
            reg.add("g2", key, "gate", "b", key_version=0)
        with pytest.raises(RegistryError, match="unknown device"):
            reg.get("nope")
        with pytest.raises(RegistryError, match="unknown device"):
            reg.next_seq("nope")
    finally:
        reg.close()
    again = Registry(url)   # durable: a new connection sees it, and its schema is not re-made
    try:
        assert again.get("gate-1").key == key and again.db.schema_version("registry") == REGISTRY_VERSION
    finally:
        again.close()


def test_many_senders_never_reuse_a_sequence_number(url):
    """Eight senders, each on its own connection, take 200 numbers each for one device: 1,600
    distinct numbers, exactly 1..1600."""
    setup = Registry(url)
    setup.add("gate-1", os.urandom(32), "gate", "sim-gate")
    setup.close()
    got: list[int] = []
    lock = threading.Lock()

    def sender():
        reg = Registry(url)
        try:
            mine = [reg.next_seq("gate-1") for _ in range(200)]
        finally:
            reg.close()
        with lock:
            got.extend(mine)
    ts = [threading.Thread(target=sender) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(got) == list(range(1, 1601))


def test_sender_processes_share_the_counter(url):
    """Two more processes take numbers while this one does: none is handed out twice."""
    reg = Registry(url)
    reg.add("gate-1", os.urandom(32), "gate", "sim-gate")
    code = ("import sys; from host_tools.cloud.registry import Registry; r = Registry(sys.argv[1]); "
            "print(' '.join(str(r.next_seq('gate-1')) for _ in range(150)))")
    procs = [subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) for _ in range(2)]
    mine = [reg.next_seq("gate-1") for _ in range(150)]
    theirs = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        theirs += [int(x) for x in out.split()]
    reg.close()
    assert sorted(mine + theirs) == list(range(1, 451))


def test_the_cli_takes_a_postgresql_registry(pg, tmp_path):
    """`--registry postgresql://...`: provisioning and the commands that read it share one database."""
    import json

    from click.testing import CliRunner

    from host_tools.cli import cli
    url = pg.new_database()

    def edgepay(*args):
        return CliRunner().invoke(cli, ["--json", "--registry", url, *args], catch_exceptions=False)
    for dev in ("gate-1", "gate-2"):
        r = edgepay("provision", dev, "--board", "sim-gate", "--out", str(tmp_path / dev),
                    "--broker-dir", str(tmp_path / "b"), "--device-broker", "127.0.0.1:9")
        assert r.exit_code == 0, r.output
    r = edgepay("provision", "gate-1", "--board", "sim-gate", "--out", str(tmp_path / "again"),
                "--broker-dir", str(tmp_path / "b"), "--device-broker", "127.0.0.1:9")
    assert r.exit_code == 1 and "already registered" in r.stdout
    r = edgepay("campaign", "create", "c1", "get_state", "--kind", "gate", "--db", str(tmp_path / "l.db"))
    assert r.exit_code == 0 and json.loads(r.stdout)["devices"] == 2, r.output
    assert {d.device_id for d in Registry(url).devices()} == {"gate-1", "gate-2"}


def test_revoke_and_decommission_keep_the_key_verify_only(url):
    reg = Registry(url)
    try:
        key = os.urandom(32)
        reg.add("gate-1", key, "gate", "sim-gate")
        assert reg.get("gate-1").active
        d = reg.set_status("gate-1", "revoked")
        assert d.status == "revoked" and not d.active and d.key == key   # still verifiable, for audit
        assert reg.set_status("gate-1", "decommissioned").status == "decommissioned"
        with pytest.raises(RegistryError, match="status is one of"):
            reg.set_status("gate-1", "lost")
        with pytest.raises(RegistryError, match="unknown device"):
            reg.set_status("nope", "revoked")
    finally:
        reg.close()


def test_a_registry_file_from_before_versioning_is_migrated(tmp_path):
    import sqlite3
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE devices (device_id TEXT PRIMARY KEY, key BLOB NOT NULL, key_version INTEGER NOT NULL,"
               " kind TEXT NOT NULL, board TEXT NOT NULL, dn_seq INTEGER NOT NULL DEFAULT 0)")
    db.execute("INSERT INTO devices VALUES ('gate-1', ?, 1, 'gate', 'sim-gate', 41)", (os.urandom(32),))
    db.commit()
    db.close()
    reg = Registry(path)
    try:
        assert reg.get("gate-1").status == "active" and reg.next_seq("gate-1") == 42
        assert reg.db.schema_version("registry") == REGISTRY_VERSION
    finally:
        reg.close()


def test_keys_at_rest_are_sealed_under_the_master_key(url, tmp_path):
    from host_tools.cloud.keyvault import KeyVault, write_master_key
    master = write_master_key(tmp_path / "master.key")
    key = os.urandom(32)
    reg = Registry(url, master_key=master)
    try:
        reg.add("gate-1", key, "gate", "sim-gate")
        blob = bytes(reg.db._read("SELECT key FROM devices WHERE device_id='gate-1'")[0][0])
        assert blob.startswith(b"EPK1") and key not in blob      # a copy of the database is no key
        assert reg.get("gate-1").key == key and reg.devices()[0].key == key
    finally:
        reg.close()
    for master_key, says in [(None, "sealed under a master key"), (os.urandom(32), "another master key")]:
        other = Registry(url, master_key=master_key)
        try:
            with pytest.raises(RegistryError, match=says):
                other.get("gate-1")
        finally:
            other.close()
    # a sealed key moved to another device's row does not open
    reg = Registry(url, master_key=master)
    try:
        reg.add("gate-2", os.urandom(32), "gate", "sim-gate")
        reg.db._write(lambda cur: cur.execute(reg.db._sql("UPDATE devices SET key=? WHERE device_id='gate-2'"), (blob,)))
        with pytest.raises(RegistryError, match="does not open"):
            reg.get("gate-2")
        reg.db._write(lambda cur: cur.execute(reg.db._sql("DELETE FROM devices WHERE device_id='gate-2'")))
        # rotation: everything resealed under a new master key in one transaction
        new = os.urandom(32)
        assert reg.reseal(KeyVault(new)) == 1
    finally:
        reg.close()
    rotated = Registry(url, master_key=new)
    try:
        assert rotated.get("gate-1").key == key
    finally:
        rotated.close()


def test_a_plain_registry_is_sealed_and_the_cli_does_it(tmp_path):
    import json

    from click.testing import CliRunner

    from host_tools.cli import cli
    path = tmp_path / "registry.db"
    key = os.urandom(32)
    plain = Registry(path)
    plain.add("gate-1", key, "gate", "sim-gate")
    plain.close()

    def edgepay(*args, env=None):
        r = CliRunner().invoke(cli, ["--json", "--registry", str(path), *args], catch_exceptions=False, env=env or {})
        assert "Traceback" not in r.output
        return r
    mk = tmp_path / "keys" / "master.key"
    r = edgepay("registry", "master-keygen", "--out", str(mk))
    assert r.exit_code == 0 and (mk.stat().st_mode & 0o777) == 0o600, r.output
    r = edgepay("registry", "reseal", "--new-master-key-file", str(mk))
    assert r.exit_code == 0 and json.loads(r.stdout)["resealed"] == 1, r.output
    with pytest.raises(RegistryError, match="EDGEPAY_MASTER_KEY_FILE"):
        Registry(path).get("gate-1")
    from host_tools.cloud.keyvault import read_master_key
    assert Registry(path, master_key=read_master_key(mk)).get("gate-1").key == key
    # the CLI reads the master key from the environment, as every cloud worker does
    mk2 = tmp_path / "keys" / "master2.key"
    edgepay("registry", "master-keygen", "--out", str(mk2))
    r = edgepay("registry", "reseal", "--new-master-key-file", str(mk2), env={"EDGEPAY_MASTER_KEY_FILE": str(mk)})
    assert r.exit_code == 0, r.output
    assert Registry(path, master_key=read_master_key(mk2)).get("gate-1").key == key
    r = edgepay("registry", "reseal", "--new-master-key-file", str(mk2))   # no current master key given
    assert r.exit_code == 1 and "sealed under a master key" in r.stdout
    os.chmod(mk2, 0o644)
    r = edgepay("registry", "reseal", "--new-master-key-file", str(mk2), env={"EDGEPAY_MASTER_KEY_FILE": str(mk2)})
    assert r.exit_code == 1 and "readable by others" in r.stdout


def test_device_pages_filter_and_scope_in_the_database(ledger_url):
    """page(): id order, keyset paging (after/limit), filters and site prefixes, no keys unsealed."""
    reg = Registry(ledger_url)
    ids = [f"lot{s}-{k}-{i}" for s in (1, 2) for k in ("gate", "vend") for i in range(5)]
    reg.add_many([(d, os.urandom(32), "gate" if "gate" in d else "vending", "sim-x") for d in ids])
    seen, after = [], ""
    while True:
        page = reg.page(after=after, limit=3)
        seen += [d.device_id for d in page]
        if len(page) < 3:
            break
        after = page[-1].device_id
    assert seen == sorted(ids) and not hasattr(page[0] if page else reg.page(limit=1)[0], "key")
    assert [d.device_id for d in reg.page(kind="vending", prefixes=("lot2-",))] == [f"lot2-vend-{i}" for i in range(5)]
    assert reg.page(prefixes=()) == [] and len(reg.page(prefixes=("lot1-", "lot2-g"))) == 15
    assert reg.page(prefixes=("lot_",)) == []  # a LIKE wildcard in a site is a character, not a pattern
    reg.close()
