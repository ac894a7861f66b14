"""Ingest survives a switch of its PostgreSQL ledger to a streaming replica (docs/scaling.md).

A primary and a hot standby made from it with pg_basebackup (physical streaming replication),
synchronous (`synchronous_standby_names = '*'`: a COMMIT returns once the standby has flushed it,
so nothing ingest acknowledged exists on the primary alone). Ingest's conninfo names both servers
with `target_session_attrs=read-write` (libpq tries them in turn and keeps the one that takes
writes). Devices journal records; the primary is stopped `-m immediate` (a crash: no shutdown
checkpoint) while records are still coming; the standby is promoted; the devices resend what was
not acknowledged (their retry timer). Then the ledger on the promoted standby holds exactly every
record every device sent, chained, none twice, and every device has its acks.
"""
from __future__ import annotations

import os
import pwd
import time

import pytest

from host_tools.cloud.ingest import IngestWorker
from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.registry import Registry
from tests.test_ingest import CLOUD, FakeDevice, assert_ledger_is_exactly, wait_for


@pytest.fixture
def pair():
    try:
        import psycopg  # noqa: F401
        from host_tools.pgserver import PgServer, PgUnavailable
    except ImportError:
        pytest.skip("psycopg is not installed")
    try:
        primary = PgServer(fast=False).start()
    except PgUnavailable as e:
        pytest.skip(str(e))
    standby = PgServer(fast=False)
    try:
        if standby._run_as:
            pw = pwd.getpwnam(standby._run_as)
            os.chmod(standby.dir, 0o755)
            os.chown(standby.dir, pw.pw_uid, pw.pw_gid)
        url = primary.new_database("failover")
        dbname = url.rsplit("dbname=", 1)[1]
        p = primary._run([str(primary.bin / "pg_basebackup"), "-h", str(primary.sock), "-p", str(primary.port),
                          "-U", primary.superuser, "-D", str(standby.data), "-R", "-X", "stream",
                          "--checkpoint=fast"], timeout=120)
        assert p.returncode == 0, p.stdout.decode(errors="replace")
        standby.start()
        import psycopg
        with psycopg.connect(primary.conninfo, autocommit=True) as c:
            c.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            c.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 30
            while True:
                row = c.execute("SELECT sync_state FROM pg_stat_replication").fetchone()
                if row and row[0] == "sync":
                    break
                assert time.monotonic() < deadline, f"the standby never became synchronous: {row}"
                time.sleep(0.1)
        both = (f"host={primary.sock},{standby.sock} port={primary.port},{standby.port} "
                f"user={primary.superuser} dbname={dbname} target_session_attrs=read-write connect_timeout=2")
        yield primary, standby, both
    finally:
        standby.close()
        primary.close()


def test_ingest_survives_a_switch_to_the_streaming_replica(broker, pair, tmp_path):
    primary, standby, url = pair
    registry = Registry(str(tmp_path / "registry.db"))
    ledger = open_ledger(url)
    w = IngestWorker(registry, ledger, BrokerSettings("127.0.0.1", broker.cloud_port, *CLOUD)).start()
    devs = []
    for i in range(3):
        name = f"pgf{i}"
        broker.add_user(name, f"{name}-pw")
        devs.append(FakeDevice(broker, registry, name, broker.users[name]))
    try:
        for d in devs:
            for k in range(10):
                d.send(d.chain.session(f"a{k}", 5 * k + 1))
        wait_for(lambda: all(d.all_acked() for d in devs), timeout=30,
                 tick=lambda: [d.retry() for d in devs], what="the first records acked on the primary")
        before = sum(len(d.chain.sent) for d in devs)
        for d in devs:  # more records in flight as the primary dies
            for k in range(10):
                d.send(d.chain.session(f"b{k}", 5 * k + 2))
        in_flight = sum(len(d.unacked) for d in devs)
        p = primary._run([str(primary.bin / "pg_ctl"), "-D", str(primary.data), "-m", "immediate", "stop"])
        assert p.returncode == 0, p.stdout.decode(errors="replace")
        primary.started = False
        t = time.monotonic()
        p = standby._run([str(standby.bin / "pg_ctl"), "-D", str(standby.data), "-w", "promote"])
        assert p.returncode == 0, p.stdout.decode(errors="replace")
        promoted_s = time.monotonic() - t
        for d in devs:
            for k in range(5):
                d.send(d.chain.session(f"c{k}", 5 * k + 3))
        wait_for(lambda: all(d.all_acked() for d in devs), timeout=60,
                 tick=lambda: [d.retry() for d in devs], every=1.0, what="every record acked after the switch")
        switched_s = time.monotonic() - t
        checker = open_ledger(url)  # the promoted standby: the only server that takes writes now
        try:
            assert_ledger_is_exactly(checker, devs)
            assert checker.rejects() == []
        finally:
            checker.close()
        assert not any(d.violations for d in devs)
        print(f"{before} records acked before the crash, {in_flight} unacknowledged at it, {sum(len(d.chain.sent) for d in devs)} in all; "
              f"promoted in {promoted_s:.1f} s, every record acked {switched_s:.1f} s after the crash")
    finally:
        for d in devs:
            d.close()
        w.stop()
        ledger.close()
        registry.close()
