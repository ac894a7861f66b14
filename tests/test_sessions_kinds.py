"""The session service (host_tools/cloud/sessions.py) for vending and rental, and under failure:
duplicate requests, provider timeouts, settle retries, forged requests, polling the ledger,
on_commit; a revoked device. The rig is tests/sessionkit.py."""
# ruff: noqa: F811  (`env` is the fixture imported from tests/sessionkit.py)
from __future__ import annotations

import time

from host_tools.cloud.payafter import OrderState, ProviderTimeout
from host_tools.protocol import build_mac0, encode_payload, seal, topic
from tests.sessionkit import T_PARK, T_RENT, T_VEND, env, settled, wait_for  # noqa: F401 (env: the fixture)


# ---- vending / rental ----------------------------------------------------------------------------
def test_vend_settles_from_the_lines(env):
    d = env.device("vend-1", "vending", T_VEND)
    env.svc.bind("QR-77", "acct-77")
    d.auth_req("vend", "v1", "QR-77")
    a, = d.wait("auth", "v1")
    assert a[2] is True and a[4] == 150 * 5
    d.auth_req("entry", "v2", "QR-77")               # not a vending purpose
    assert d.wait("auth", "v2")[0][5] == "bad purpose"
    d.record("sess_close", sid="v1", payer="QR-77", t0=1_700_000_000, auth="vend-1:v1", amount=395, cur="GBP",
             t1=1_700_000_030, lines=[["A1", 2, 150], ["B2", 1, 95]])
    st = settled(env, "vend-1", "v1")
    assert (st["status"], st["charged"]) == ("settled", 395)
    assert env.provider.get("vend-1:v1").lines == (("A1", 2, 150), ("B2", 1, 95))
    # a device that priced a line wrong: flagged, the price list's amount is charged
    d.auth_req("vend", "v3", "QR-77")
    d.wait("auth", "v3")
    d.record("sess_close", sid="v3", payer="QR-77", t0=1_700_000_000, auth="vend-1:v3", amount=100, cur="GBP",
             t1=1_700_000_030, lines=[["B2", 1, 100]])
    st = settled(env, "vend-1", "v3")
    assert (st["status"], st["charged"], st["flags"]) == ("settled_flagged", 95, ["fee_mismatch"])


def test_rental_return_converts(env):
    d = env.device("rent-1", "rental", T_RENT)
    env.svc.bind("TAG-9", "acct-9")
    now = int(time.time())
    t0 = now - 360000
    d.auth_req("rent", "r1", "TAG-9", t0=t0)
    assert d.wait("auth", "r1")[0][4] == 2500        # the purchase price
    d.auth_req("return", "r1", "TAG-9", t0=t0, amount=2500, cur="USD", iat=now)
    assert d.wait("auth", "r1", 2)[1][2] is True
    o = env.provider.get("rent-1:r1")
    assert (o.amount, o.lines) == (2500, (("purchase", 1, 2500),))
    assert env.svc.flags() == []


# ---- idempotency, failures -----------------------------------------------------------------------
def test_duplicate_auth_req_one_order_same_answer(env):
    d = env.device("gate-1")
    env.svc.bind("SH-DUP", "acct-dup")
    env.provider.latency_s = 0.05                    # duplicates overlap the first decision
    raw = d.auth_req("entry", "s8", "SH-DUP")
    for _ in range(3):
        d.publish(raw)                               # QoS1 redelivery: the same bytes
    answers = d.wait("auth", "s8", 4)
    assert all(a == answers[0] for a in answers) and answers[0][2] is True
    assert len(env.provider.orders()) == 1
    assert [c.op for c in env.provider.calls if c.op in ("create", "start")] == ["create", "start"]
    assert env.svc.stats["duplicates"] == 3
    # a new request (new seq) for the same session: the same order, the same grant
    d.auth_req("entry", "s8", "SH-DUP")
    assert d.wait("auth", "s8", 5)[4] == answers[0]
    assert len(env.provider.orders()) == 1
    [o] = env.provider.orders()
    assert [h.op for h in o.history] == ["create", "start"]
    # the same seq with other content (a device bug or a forgery with the key): no answer
    seq = d.chain.seq
    d.publish(seal(d.chain.key, d.chain.kid, d.req_topic, {"type": "auth_req", "seq": seq, "sid": "s8x",
                                                             "payer": "SH-DUP", "purpose": "entry"}))
    wait_for(lambda: env.svc.refused["seq_reuse"] == 1)
    assert d.cmds("auth", "s8x") == [] and len(env.provider.orders()) == 1


def test_provider_timeout_explicit_deny_then_retry(env):
    d = env.device("gate-1")
    env.svc.bind("SH-TO", "acct-to")
    env.provider.fail_next("create", ProviderTimeout)
    d.auth_req("entry", "s9", "SH-TO")
    assert d.wait("auth", "s9") == [{1: "s9", 2: False, 5: "provider unavailable"}]
    assert env.provider.orders() == []
    d.auth_req("entry", "s9", "SH-TO")               # the device (or the user) retries
    assert d.wait("auth", "s9", 2)[1][2] is True


def test_provider_timeout_that_landed_is_swept(env):
    """start timed out after it took effect: denied; no retry comes; sweep cancels the order."""
    d = env.device("gate-1")
    env.svc.bind("SH-TL", "acct-tl")
    env.provider.fail_next("start", ProviderTimeout, applied=True)
    d.auth_req("entry", "s10", "SH-TL")
    assert d.wait("auth", "s10")[0][5] == "provider unavailable"
    assert env.provider.get("gate-1:s10").state is OrderState.DOING   # it landed
    assert env.svc.sweep(time.time())["cancelled"] == []               # not yet in doubt long enough
    out = env.svc.sweep(time.time() + env.svc.doubt_s + 1)
    assert out["cancelled"] == ["gate-1:s10"]
    assert env.provider.get("gate-1:s10").state is OrderState.REVOKED


def test_exit_complete_timeout_grants_and_settles_later(env):
    d = env.device("gate-1")
    env.svc.bind("SH-P", "acct-p")
    now = int(time.time())
    t0 = now - 1000
    d.auth_req("entry", "s11", "SH-P", t0=t0)
    d.wait("auth", "s11")
    env.provider.fail_next("complete", ProviderTimeout)
    d.auth_req("exit", "s11", "SH-P", t0=t0, amount=250, cur="EUR", iat=now)
    assert d.wait("auth", "s11", 2)[1][2] is True    # the DOING order guarantees the money
    assert env.provider.get("gate-1:s11").state is OrderState.DOING
    assert env.svc.settle_status("gate-1", "s11")["status"] == "pending"
    d.record("sess_close", sid="s11", payer="SH-P", t0=t0, auth="gate-1:s11", amount=250, cur="EUR", t1=now)
    assert settled(env, "gate-1", "s11")["charged"] == 250


def test_settle_retried_by_sweep(env):
    d = env.device("gate-1")
    env.svc.bind("SH-R", "acct-r")
    t0 = int(time.time()) - 1000
    d.auth_req("entry", "s12", "SH-R", t0=t0)
    d.wait("auth", "s12")
    env.provider.fail_next("complete", ProviderTimeout)
    d.record("sess_close", sid="s12", payer="SH-R", t0=t0, auth="gate-1:s12", amount=250, cur="EUR", t1=t0 + 1000)
    wait_for(lambda: env.svc.settle_status("gate-1", "s12")["status"] == "pending")
    assert env.svc.sweep()["retried"] == 1
    assert env.svc.settle_status("gate-1", "s12")["status"] == "settled"
    assert env.svc.sweep()["retried"] == 0


def test_forged_and_misplaced_requests_are_refused(env):
    d = env.device("gate-1")
    env.svc.bind("SH-X", "acct-x")
    msg = {"type": "auth_req", "seq": 99, "sid": "sx", "payer": "SH-X", "purpose": "entry"}
    d.publish(seal(bytes(32), d.chain.kid, d.req_topic, msg))                     # wrong key
    d.publish(build_mac0(d.chain.key, d.chain.kid, topic("gate-1", "status"),     # another topic's MAC
                         encode_payload(msg, d.req_topic)))
    d.auth_req("entry", "sy", "SH-X")
    d.wait("auth", "sy")
    assert d.cmds("auth", "sx") == []
    assert env.svc.refused["bad_mac"] == 2
    assert [o.order_no for o in env.provider.orders()] == ["gate-1:sy"]


def test_a_revoked_device_is_granted_nothing_and_its_open_sessions_are_flagged(env):
    """issue 15 §3: after `device revoke`, an authentic auth_req gets no grant (refused, counted),
    and device_revoked() flags each of its open sessions for an operator."""
    d = env.device("gate-1")
    env.svc.bind("SH-R1", "acct-r")
    d.auth_req("entry", "s1", "SH-R1", t0=int(time.time()) - 60, slot=1)
    d.wait("auth", "s1")
    env.registry.set_status("gate-1", "revoked")
    d.auth_req("entry", "s2", "SH-R1", t0=int(time.time()), slot=2)
    wait_for(lambda: env.svc.refused["device_revoked"] == 1, what="refused")
    assert d.cmds("auth", "s2") == []
    [s] = env.svc.device_revoked("gate-1")
    assert s.sid == "s1"
    assert [(f.kind, f.sid) for f in env.svc.flags("gate-1")] == [("device_revoked", "s1")]
    assert env.svc.device_revoked("gate-1") and len(env.svc.flags("gate-1")) == 1   # flagged once


def test_settle_by_polling_the_ledger(env, tmp_path):
    """Without on_commit (e.g. after a restart): settle_ledger finds the closed sessions."""
    d = env.device("gate-1")
    env.svc.bind("SH-L", "acct-l")
    t0 = int(time.time()) - 1000
    d.auth_req("entry", "s13", "SH-L", t0=t0)
    d.wait("auth", "s13")
    env.worker.on_commit = None
    d.record("sess_close", sid="s13", payer="SH-L", t0=t0, auth="gate-1:s13", amount=250, cur="EUR", t1=t0 + 1000)
    wait_for(lambda: any(s.state == "closed" for s in env.ledger.sessions("gate-1")))
    assert env.provider.get("gate-1:s13").state is OrderState.DOING
    assert env.svc.settle_ledger(env.ledger) == 1
    assert env.svc.settle_status("gate-1", "s13")["status"] == "settled"
    assert env.svc.settle_ledger(env.ledger) == 0


def test_on_commit_gets_committed_records_once_and_cannot_break_ingest(env):
    """IngestWorker.on_commit: newly committed records only (a resent duplicate is not passed
    again); a failing callback is counted and the records stay committed and acked."""
    d = env.device("gate-1")
    seen = []

    def boom(records):
        seen.extend((r.device, r.seq, r.type_name) for r in records)
        raise RuntimeError("consumer down")
    env.worker.on_commit = boom
    raw = d.record("sess_open", sid="c1", payer="SH-C", t0=1_700_000_000)
    wait_for(lambda: env.ledger.count("gate-1") == 1)
    wait_for(lambda: any(c.get("upto") == d.chain.seq for c in d.commands), what="ack")
    d.publish(raw, d.chain.topic)                   # a duplicate: acked again, not passed again
    wait_for(lambda: env.worker.stats["duplicates"] == 1)
    assert seen == [("gate-1", d.chain.seq, "sess_open")]
    assert env.worker.stats["errors"] == 1
