"""The session service after a re-provisioning (issue 15 §1, SPEC §6 "Chains and re-provisioning"):
a revoked device re-provisioned at key version R onto a fresh board (seq from 1 again, session ids
again s-1, s-2, ...) has its requests and sessions keyed by the chain DEVICE~R, as its records are
in the ledger: its auth_req seq 1 is answered (not seq_reuse against the old board's answers), its
session s-1 opens and settles under DEVICE~R on its own order, the old board's s-1 is untouched and
the provider charged each order exactly once. A recovered board (its seq goes on) stays under the
device id; a device never re-provisioned is not looked up. Real Mosquitto, the ScriptedProvider, a
real IngestWorker; the registry, ledger and session store on SQLite and on PostgreSQL."""
from __future__ import annotations

import time

import pytest

from host_tools.cloud.ingest import IngestWorker
from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.payafter import OrderState, ScriptedProvider
from host_tools.cloud.registry import Registry
from host_tools.cloud.session_store import SessionStore
from host_tools.cloud.sessions import SessionService
from host_tools.protocol import make_kid
from tests.sessionkit import CLOUD, T_PARK, FakeDevice, wait_for
from tests.test_ledger import DeviceChain

N = 3  # sessions of the old board


class _Flashed:
    """A registry stand-in for FakeDevice: the fresh board's id and key are in the registry already."""
    def add(self, *a, **kw) -> None:
        pass


@pytest.fixture
def rig(broker, ledger_url):
    class Rig:
        pass
    r = Rig()
    r.broker = broker
    r.registry = Registry(ledger_url)
    r.ledger = open_ledger(ledger_url)
    r.provider = ScriptedProvider()
    settings = BrokerSettings("127.0.0.1", broker.cloud_port, *CLOUD)
    # the store on the ledger's database, as `edgepay serve` has it: the service reads chains there
    r.svc = SessionService(r.registry, r.provider, settings, store=SessionStore(r.ledger)).start()
    r.worker = IngestWorker(r.registry, open_ledger(ledger_url), settings, on_commit=r.svc.on_commit).start()
    r.devices = []

    def device(name: str) -> FakeDevice:
        d = FakeDevice(broker, r.registry, name, "gate")
        r.devices.append(d)
        r.svc.set_tariff(name, T_PARK)
        d.wait("set_tariff", None)
        return d
    r.device = device
    yield r
    for d in r.devices:
        d.close()
        assert not d.bad, d.bad
    r.worker.stop()
    r.svc.stop()
    r.worker.ledger.close()
    r.ledger.close()
    r.registry.close()


def session(r, d: FakeDevice, sid: str, payer: str, stay: int, chain: str | None = None) -> int:
    """entry (granted), sess_open, exit (granted), sess_close; settled: the fee."""
    chain = chain or d.id
    now = int(time.time())
    t0 = now - stay
    n = len(d.cmds("auth", sid))
    d.entries = {**getattr(d, "entries", {}), sid: d.auth_req("entry", sid, payer, t0=t0, slot=1)}
    a = d.wait("auth", sid, n + 1)[n]
    assert a[2] is True and a[3] == f"{chain}:{sid}", a
    d.record("sess_open", sid=sid, payer=payer, t0=t0, slot=1, auth=a[3])
    from host_tools.cloud import fees
    fee = fees.parking(T_PARK, t0, now)
    d.auth_req("exit", sid, payer, t0=t0, amount=fee, cur="EUR", auth=a[3], iat=now)
    b = d.wait("auth", sid, n + 2)[n + 1]
    assert b[2] is True and b[4] == fee, b
    d.record("sess_close", sid=sid, payer=payer, t0=t0, slot=1, auth=a[3], amount=fee, cur="EUR", t1=now,
             lines=[["park", 1, fee]])
    wait_for(lambda: r.svc.session(chain, sid).closed and r.svc.settle_status(chain, sid)["status"] == "settled",
             what=f"{chain}/{sid} closed by its record and settled")
    return fee


def completes(provider: ScriptedProvider, order_no: str) -> int:
    return sum(1 for t in provider.history(order_no) if t.op == "complete")


def reprovision(r, name: str) -> bytes:
    import os
    r.registry.set_status(name, "revoked")
    assert r.svc.device_revoked(name) == []          # nothing open: nothing flagged
    key = os.urandom(32)
    assert r.registry.reprovision(name, key, "gate", "sim").key_version == 2
    return key


def test_a_fresh_board_s_requests_and_sessions_are_its_chain_s(rig):
    r = rig
    r.svc.bind("SH-OLD", "acct-old")
    r.svc.bind("SH-NEW", "acct-new")
    old = r.device("gate-1")
    fees_old = [session(r, old, f"s-{i}", "SH-OLD", 3700 + 3600 * (i - 1)) for i in range(1, N + 1)]
    assert fees_old == [500, 750, 1000] and old.chain.seq == 4 * N   # seqs 1..4N answered and recorded
    before = {f"s-{i}": r.svc.settle_status("gate-1", f"s-{i}") for i in range(1, N + 1)}
    answer_1 = r.svc.store.answer("gate-1", 1)
    old.close()                                      # stolen: it never connects again
    r.devices.remove(old)
    key = reprovision(r, "gate-1")

    fresh = FakeDevice(r.broker, _Flashed(), "gate-1", "gate")   # a replacement board, flashed with key 2
    r.devices.append(fresh)
    fresh.chain = DeviceChain("gate-1", key)
    fresh.chain.kid = make_kid("gate-1", 2)
    fee = session(r, fresh, "s-1", "SH-NEW", 2 * 3600 + 60, chain="gate-1~2")   # its auth_req seq 1, sid s-1
    assert fee == 750 and fresh.chain.seq == 4
    assert r.svc.refused["seq_reuse"] == 0 and r.svc.stats["duplicates"] == 0
    assert r.svc.store.board("gate-1", 2) == "gate-1~2"
    assert r.svc.settle_status("gate-1~2", "s-1") == {
        "status": "settled", "order_no": "gate-1~2:s-1", "order_state": "DONE", "device_amount": 750,
        "cloud_amount": 750, "charged": 750, "cur": "EUR", "flags": []}
    # its records are the ledger chain gate-1~2, its session the one the auth_req opened
    assert [(x.seq, x.sid) for x in r.ledger.records("gate-1~2")] == [(2, "s-1"), (4, "s-1")]
    assert {(s.device, s.sid, s.amount) for s in r.ledger.sessions("gate-1~2")} == {("gate-1~2", "s-1", 750)}
    s = r.svc.session("gate-1~2", "s-1")
    assert (s.payer, s.account, s.closed, s.charged) == ("SH-NEW", "acct-new", True, 750)
    # the old board's: untouched
    assert {f"s-{i}": r.svc.settle_status("gate-1", f"s-{i}") for i in range(1, N + 1)} == before
    assert r.svc.store.answer("gate-1", 1) == answer_1
    assert r.svc.session("gate-1", "s-1").account == "acct-old"
    assert r.ledger.totals("gate-1") == {"EUR": sum(fees_old)} and r.ledger.totals("gate-1~2") == {"EUR": 750}
    # the provider: each order charged exactly once, the right amount, to the right payer
    orders = {o.order_no: o for o in r.provider.orders()}
    assert sorted(orders) == ["gate-1:s-1", "gate-1:s-2", "gate-1:s-3", "gate-1~2:s-1"]
    assert all(o.state is OrderState.DONE for o in orders.values())
    assert [orders[f"gate-1:s-{i}"].amount for i in range(1, N + 1)] == fees_old
    assert (orders["gate-1~2:s-1"].amount, orders["gate-1~2:s-1"].payer) == (750, "acct-new")
    assert all(completes(r.provider, no) == 1 for no in orders)
    # the answers went to the device (topic, key 2, aud gate-1): FakeDevice verified every one
    assert all(dev == "gate-1" for dev, _, _ in r.svc.sent)
    # a QoS 1 duplicate of the fresh board's first request: its own answer again, nothing new
    fresh.publish(fresh.entries["s-1"])
    wait_for(lambda: r.svc.stats["duplicates"] == 1, what="the duplicate answered")
    assert r.svc.refused["seq_reuse"] == 0 and completes(r.provider, "gate-1~2:s-1") == 1
    # the fresh board's second session: s-2 again, its own
    fee2 = session(r, fresh, "s-2", "SH-NEW", 3700, chain="gate-1~2")
    assert r.provider.get("gate-1~2:s-2").amount == fee2 and r.provider.get("gate-1:s-2").amount == 750
    assert r.svc.flags() == [] and r.worker.stats["conflicts"] == 0 and r.worker.stats["out_of_chain"] == 0


def test_a_recovered_board_stays_under_its_id_and_others_are_not_looked_up(rig):
    r = rig
    r.svc.bind("SH-A", "acct-a")
    d = r.device("gate-1")
    other = r.device("gate-2")
    session(r, d, "s-1", "SH-A", 3700)
    key = reprovision(r, "gate-1")
    d.chain.key, d.chain.kid = key, make_kid("gate-1", 2)   # the same board, its journal and counter kept
    fee = session(r, d, "s-2", "SH-A", 3700)                 # seq 5 on: above the old high-water mark
    assert r.svc.store.board("gate-1", 2) == "gate-1"
    assert [x.seq for x in r.ledger.records("gate-1")] == [2, 4, 6, 8] and r.ledger.records("gate-1~2") == []
    assert r.provider.get("gate-1:s-2").amount == fee and completes(r.provider, "gate-1:s-2") == 1
    session(r, other, "s-1", "SH-A", 3700)                   # key version 1: no key history read
    assert "gate-2" not in r.svc._epochs and r.svc.store.board("gate-2", 1) is None
    assert r.svc.flags() == [] and r.svc.refused["seq_reuse"] == 0


def test_a_fresh_board_judged_the_same_by_its_seq_is_corrected_by_its_first_record(rig):
    """SPEC §6's limit of rule 4: a fresh board whose counter passed the old board's mark before
    its first auth_req (heartbeats share the counter) is judged the same board; its first record
    (genesis: the ledger's chain gate-1~2) corrects that, and its requests are keyed by gate-1~2
    from then on. The session opened before the correction is under the other chain (its order
    gate-1:s-7 left open for an operator; its exit and close are in gate-1~2, on a late order,
    flagged auth_mismatch as they name gate-1:s-7): charged once."""
    r = rig
    r.svc.bind("SH-OLD", "acct-old")
    r.svc.bind("SH-NEW", "acct-new")
    old = r.device("gate-1")
    session(r, old, "s-1", "SH-OLD", 3700)            # the old board's mark: seq 4
    old.close()
    r.devices.remove(old)
    key = reprovision(r, "gate-1")
    fresh = FakeDevice(r.broker, _Flashed(), "gate-1", "gate")
    r.devices.append(fresh)
    fresh.chain = DeviceChain("gate-1", key, seq=10)  # ten heartbeats before its first customer
    fresh.chain.kid = make_kid("gate-1", 2)
    now = int(time.time())
    fresh.auth_req("entry", "s-7", "SH-NEW", t0=now - 3700, slot=1)
    assert fresh.wait("auth", "s-7")[0][3] == "gate-1:s-7"      # judged the same board (seq 11 > 4)
    assert r.svc.store.board("gate-1", 2) == "gate-1"
    fresh.record("sess_open", sid="s-7", payer="SH-NEW", t0=now - 3700, slot=1, auth="gate-1:s-7")
    wait_for(lambda: r.svc.store.board("gate-1", 2) == "gate-1~2", what="the board corrected by the ledger")
    assert [x.seq for x in r.ledger.records("gate-1~2")] == [12]
    fee = session(r, fresh, "s-8", "SH-NEW", 3700, chain="gate-1~2")    # from now on: its own chain
    assert r.provider.get("gate-1~2:s-8").amount == fee and completes(r.provider, "gate-1~2:s-8") == 1
    assert r.provider.get("gate-1:s-1").amount == 500 and completes(r.provider, "gate-1:s-1") == 1
    # s-7's exit and close, after the correction: in gate-1~2, on a late order, charged once
    from host_tools.cloud import fees
    t1 = int(time.time())
    due = fees.parking(T_PARK, now - 3700, t1)
    fresh.auth_req("exit", "s-7", "SH-NEW", t0=now - 3700, amount=due, cur="EUR", auth="gate-1:s-7", iat=t1)
    assert fresh.wait("auth", "s-7", 2)[1][3] == "gate-1~2:s-7"
    fresh.record("sess_close", sid="s-7", payer="SH-NEW", t0=now - 3700, slot=1, auth="gate-1:s-7", amount=due,
                 cur="EUR", t1=t1, lines=[["park", 1, due]])
    wait_for(lambda: (x := r.svc.session("gate-1~2", "s-7")) is not None and x.closed and x.status == "settled",
             what="s-7 settled in gate-1~2")
    assert r.provider.get("gate-1~2:s-7").amount == due and completes(r.provider, "gate-1~2:s-7") == 1
    assert r.provider.get("gate-1:s-7").state is OrderState.DOING   # the limit: an operator looks
    assert {(f.device, f.sid, f.kind) for f in r.svc.flags()} == {("gate-1~2", "s-7", "auth_mismatch")}
