"""The pay-after provider state machine (host_tools/cloud/payafter.py, ScriptedProvider)."""
from __future__ import annotations

import dataclasses
import threading

import pytest

from host_tools.cloud.payafter import (MODE_CREDIT, MODE_DEPOSIT, BadRequest, IllegalTransition,
                                       LimitExceeded, OrderConflict, OrderNotFound, OrderState,
                                       PayAfterProvider, PayerRefused, ProviderTimeout,
                                       ProviderUnavailable, ScriptedProvider)

S = OrderState


class Clock:
    def __init__(self, t=1_700_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def p(clock):
    return ScriptedProvider(clock=clock)


def new(p, no="o1", payer="acct-1", limit=5000, cur="EUR", expires_s=600, **kw):
    return p.create(no, payer, "gate-1", kw.pop("sid", "s1"), limit, cur, expires_s)


def to_state(p, state, no="o1"):
    """An order `no` driven to `state` by legal calls."""
    new(p, no)
    if state is S.CREATED:
        return
    if state is S.EXPIRED:
        p.expire(p.clock() + 601)
        return
    if state is S.REVOKED:
        p.cancel(no)
        return
    p.start(no)
    if state is S.DONE:
        p.complete(no, 1200, "EUR", [["park", 1, 1200]], "gate-2", 1_700_003_600)


def test_is_a_provider(p):
    assert isinstance(p, PayAfterProvider)


def test_happy_path_and_history(p, clock):
    o = new(p)
    assert (o.state, o.mode, o.limit, o.expires_at) == (S.CREATED, MODE_CREDIT, 5000, clock.t + 600)
    clock.t += 5
    assert p.start("o1").state is S.DOING
    clock.t += 3600
    o = p.complete("o1", 1200, "EUR", [["park", 1, 1200]], "gate-2", 1_700_003_600)
    assert (o.state, o.amount, o.lines, o.end_device, o.t1) == (
        S.DONE, 1200, (("park", 1, 1200),), "gate-2", 1_700_003_600)
    assert [(h.frm, h.to, h.op) for h in p.history("o1")] == [
        (None, S.CREATED, "create"), (S.CREATED, S.DOING, "start"), (S.DOING, S.DONE, "complete")]
    assert [h.at for h in o.history] == [1_700_000_000.0, 1_700_000_005.0, 1_700_003_605.0]


# every (state, operation): legal -> the new state; idempotent retry -> unchanged; else raises
LEGAL = {
    (S.CREATED, "start"): S.DOING,
    (S.CREATED, "cancel"): S.REVOKED,
    (S.DOING, "complete"): S.DONE,
    (S.DOING, "cancel"): S.REVOKED,
}
RETRY = {(S.DOING, "start"), (S.REVOKED, "cancel"), (S.DONE, "complete")}
OPS = {
    "start": lambda p: p.start("o1"),
    "cancel": lambda p: p.cancel("o1"),
    "complete": lambda p: p.complete("o1", 1200, "EUR", [["park", 1, 1200]], "gate-2", 1_700_003_600),
}


@pytest.mark.parametrize("state", list(S))
@pytest.mark.parametrize("op", sorted(OPS))
def test_transition_table(p, state, op):
    to_state(p, state)
    before = p.get("o1")
    assert before.state is state
    if (state, op) in LEGAL:
        after = OPS[op](p)
        assert after.state is LEGAL[(state, op)]
        assert len(after.history) == len(before.history) + 1
    elif (state, op) in RETRY:
        assert OPS[op](p) == before                      # idempotent: nothing changes
        assert p.get("o1") == before
    else:
        with pytest.raises(IllegalTransition):
            OPS[op](p)
        assert p.get("o1") == before                     # an error never changes state


def test_complete_retry_with_other_amount_is_illegal(p):
    to_state(p, S.DONE)
    before = p.get("o1")
    with pytest.raises(IllegalTransition):
        p.complete("o1", 1300, "EUR", [["park", 1, 1300]])
    assert p.get("o1") == before


@pytest.mark.parametrize("state", [S.CREATED, S.DOING, S.DONE, S.REVOKED])
def test_expire_only_touches_created(p, clock, state):
    to_state(p, state)
    before = p.get("o1")
    expired = p.expire(clock.t + 10_000)
    if state is S.CREATED:
        assert [o.state for o in expired] == [S.EXPIRED]
    else:
        assert expired == [] and p.get("o1") == before


def test_expiry_boundary(p, clock):
    new(p, expires_s=600)
    assert p.expire(clock.t + 599) == []
    [o] = p.expire(clock.t + 600)
    assert o.state is S.EXPIRED and o.history[-1].op == "expire"
    assert p.expire(clock.t + 5000) == []               # once
    with pytest.raises(IllegalTransition):
        p.start("o1")


def test_create_idempotent(p, clock):
    a = new(p)
    clock.t += 10
    b = new(p)
    assert a == b and len(p.orders()) == 1
    p.start("o1")
    assert new(p).state is S.DOING                       # the same order, as it is now


@pytest.mark.parametrize("change", [dict(payer="acct-2"), dict(limit=5001), dict(cur="USD"),
                                    dict(expires_s=601), dict(sid="s2")])
def test_create_conflict(p, change):
    a = new(p)
    with pytest.raises(OrderConflict):
        new(p, **change)
    assert p.orders() == [a]


def test_limits_and_currency(p):
    to_state(p, S.DOING)
    with pytest.raises(LimitExceeded):
        p.complete("o1", 5001, "EUR")
    with pytest.raises(BadRequest):
        p.complete("o1", 100, "USD")
    assert p.get("o1").state is S.DOING
    assert p.complete("o1", 5000, "EUR").amount == 5000   # = limit is allowed


@pytest.mark.parametrize("bad", [12.5, -1, True, "100", None])
def test_money_is_int_minor_units(p, bad):
    with pytest.raises(BadRequest):
        new(p, limit=bad)
    to_state(p, S.DOING)
    with pytest.raises(BadRequest):
        p.complete("o1", bad, "EUR")
    assert p.get("o1").state is S.DOING


def test_bad_lines_and_currency(p):
    with pytest.raises(BadRequest):
        new(p, cur="eur")
    to_state(p, S.DOING)
    with pytest.raises(BadRequest):
        p.complete("o1", 100, "EUR", [["cola", 1, 1.5]])


def test_unknown_order(p):
    for op in (lambda: p.get("nope"), lambda: p.start("nope"), lambda: p.cancel("nope"),
               lambda: p.complete("nope", 1, "EUR")):
        with pytest.raises(OrderNotFound):
            op()


def test_refused_payers_and_credit(p):
    p.refuse("acct-bad")
    with pytest.raises(PayerRefused):
        new(p, payer="acct-bad")
    p.set_credit("acct-1", 3000)
    with pytest.raises(PayerRefused):
        new(p, limit=3001)
    assert p.orders() == []
    assert new(p, limit=3000).state is S.CREATED
    p.allow("acct-bad")
    assert new(p, no="o2", payer="acct-bad").state is S.CREATED
    q = ScriptedProvider(default_credit=100)
    with pytest.raises(PayerRefused):
        q.create("x", "anyone", "d", "s", 101, "EUR", 60)


def test_refusal_does_not_break_idempotency(p):
    """An order that exists is returned even if the payer was refused since (it was trusted then)."""
    a = new(p)
    p.refuse("acct-1")
    assert new(p) == a


def test_deposit_mode(p):
    p.set_deposit("acct-1")
    assert new(p).mode == MODE_DEPOSIT


def test_scripted_timeout_not_applied(p):
    p.fail_next("create", ProviderTimeout)
    with pytest.raises(ProviderTimeout) as e:
        new(p)
    assert e.value.transient
    assert p.orders() == []
    assert new(p).state is S.CREATED


def test_scripted_timeout_applied_then_retry(p):
    p.fail_next("start", ProviderTimeout, applied=True)
    new(p)
    with pytest.raises(ProviderTimeout):
        p.start("o1")
    assert p.get("o1").state is S.DOING                  # it landed
    assert p.start("o1").state is S.DOING                # the retry is idempotent
    assert [c.outcome for c in p.calls if c.op == "start"] == ["provider_timeout", "ok"]


def test_scripted_failure_per_order_and_any(p):
    p.fail_next("*", ProviderUnavailable, order_no="o2")
    new(p)
    p.start("o1")
    with pytest.raises(ProviderUnavailable):
        new(p, no="o2")
    new(p, no="o2")


def test_latency(p):
    import time
    p.latency_s = 0.05
    t = time.monotonic()
    new(p)
    assert time.monotonic() - t >= 0.05


def test_threads_one_order(p):
    """Many threads creating and starting the same order: one order, one history."""
    errors = []

    def go():
        try:
            new(p)
            p.start("o1")
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    ts = [threading.Thread(target=go) for _ in range(16)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errors
    assert len(p.orders()) == 1
    assert [h.op for h in p.history("o1")] == ["create", "start"]


def test_snapshots_are_immutable(p):
    o = new(p)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.state = S.DONE  # type: ignore[misc]
    p.start("o1")
    assert o.state is S.CREATED
