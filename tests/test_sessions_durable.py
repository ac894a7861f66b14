"""Durable session instances (SessionService(instance=...)), on SQLite and PostgreSQL, real
Mosquitto: two instances on one store answer every auth_req exactly once; requests sent while every
instance is down are queued by the broker and answered when one comes back, except those that have
expired (a late grant must not open an order for a customer who has left); the instance that comes
back later answers nothing twice; an instance killed mid-traffic (no DISCONNECT) loses no request
that it had not taken, and none that it had: it gets it again at its return, or another takes its
claim over once the claim's lease has run out; and the refusals of the settings."""
from __future__ import annotations

import threading
import time

import pytest

from host_tools.cloud.mqtt import BrokerSettings
from host_tools.cloud.payafter import ScriptedProvider
from host_tools.cloud.registry import Registry
from host_tools.cloud.session_store import SessionStore
from host_tools.cloud.sessions import SessionService
from tests.sessionkit import CLOUD, T_PARK, FakeDevice, wait_for

EXPIRY = 60


@pytest.fixture
def rig(broker, tmp_path, ledger_url):
    reg = Registry(str(tmp_path / "registry.db"))
    provider = ScriptedProvider()
    live: list[SessionService] = []

    def instance(name: str, v5: bool = True, lease: float = 30.0) -> SessionService:
        svc = SessionService(reg, provider, BrokerSettings("127.0.0.1", broker.cloud_port, *CLOUD, mqtt5=v5),
                             store=SessionStore.open(ledger_url), instance=name, auth_expiry_s=EXPIRY,
                             claim_lease_s=lease).start()
        live.append(svc)
        return svc

    def stop(svc: SessionService) -> None:
        live.remove(svc)
        svc.stop()
        svc.store.close()
    dev = FakeDevice(broker, reg, "gate-d1", "gate")
    yield instance, stop, dev, provider
    dev.close()
    for svc in list(live):
        stop(svc)
    reg.close()


def entry(dev: FakeDevice, sid: str, age: int = 0) -> None:
    now = int(time.time()) - age
    dev.auth_req("entry", sid, "SH-A1", iat=now, t0=now, slot=0)


def answered(dev: FakeDevice) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in dev.cmds("auth"):
        out[a[1]] = out.get(a[1], 0) + 1
    return out


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])  # 3.1.1: clean_session=0
def test_requests_while_every_instance_is_down_are_answered_once_when_one_returns(rig, v5):
    instance, stop, dev, provider = rig
    a = instance("a", v5)
    a.bind("SH-A1", "acct-1")
    a.set_tariff("gate-d1", T_PARK)
    dev.wait("set_tariff", None)
    b = instance("b", v5)                               # reads the binding and tariff from the store
    for k in range(6):
        entry(dev, f"on-{k}")
    wait_for(lambda: len(answered(dev)) == 6, what="six answers")
    time.sleep(0.3)
    assert answered(dev) == {f"on-{k}": 1 for k in range(6)}          # each once, by one of the two
    assert a.stats["answered_elsewhere"] + b.stats["answered_elsewhere"] == 6
    stop(a)
    stop(b)                                              # every instance down
    for k in range(3):
        entry(dev, f"off-{k}")
    entry(dev, "stale", age=EXPIRY + 30)                 # the customer left long ago
    a = instance("a", v5)                                # one comes back: the broker kept its queue
    wait_for(lambda: len(answered(dev)) == 9, what="the three queued requests answered")
    wait_for(lambda: a.stats["expired"] == 1, what="the stale one expired")
    b = instance("b", v5)                                # the other comes back: its copies are claimed
    wait_for(lambda: b.stats["answered_elsewhere"] + b.stats["expired"] == 4, what="b's queued copies")
    time.sleep(0.3)
    got = answered(dev)
    assert "stale" not in got and all(n == 1 for n in got.values()) and len(got) == 9
    assert all(x[2] for x in (dev.cmds("auth", f"off-{k}")[0] for k in range(3)))   # granted
    orders = provider.orders()
    assert sorted(o.order_no for o in orders) == sorted(f"gate-d1:{s}" for s in got)  # no order for "stale"


def test_a_killed_instance_leaves_the_rest_to_the_others(rig):
    instance, stop, dev, provider = rig
    a, b = instance("a"), instance("b")
    a.bind("SH-A1", "acct-1")                            # after b started: b reads them from the store
    a.set_tariff("gate-d1", T_PARK)
    dev.wait("set_tariff", None)
    a.cmd.mqtt.client.socket().close()                   # a dies: no DISCONNECT, its session stays
    a.cmd.mqtt.client.loop_stop()
    for k in range(5):
        entry(dev, f"k-{k}")
    wait_for(lambda: len(answered(dev)) == 5, what="b answers while a is gone")
    assert b.stats["answered_elsewhere"] == 0 and all(n == 1 for n in answered(dev).values())
    assert len(provider.orders()) == 5


def stuck_on(svc: SessionService, sid: str) -> threading.Event:
    """svc claims `sid`'s request and then hangs in its decision, as if killed there: set the event
    to let the hung worker end (it answers nothing)."""
    release, real = threading.Event(), svc._decide

    def decide(s, kind, msg):
        if msg["sid"] == sid:
            release.wait(20)
            raise RuntimeError("killed mid-answer")
        return real(s, kind, msg)
    svc._decide = decide  # type: ignore[method-assign]
    return release


def kill(svc: SessionService, release: threading.Event, stop) -> None:
    """The process dies: no DISCONNECT, no PUBACK for what it had not finished; its session stays."""
    svc.cmd.mqtt.client.socket().close()
    svc.cmd.mqtt.client.loop_stop()
    release.set()
    stop(svc)


def claimed(svc: SessionService, dev: FakeDevice) -> str | None:
    return svc.store.holder(dev.id, dev.chain.seq)


def test_an_instance_killed_mid_answer_gets_the_request_again_and_answers_it(rig):
    """The request is acknowledged to the broker only once it is answered: the one instance,
    killed after it claimed a request and before it answered, gets it again when it comes back."""
    instance, stop, dev, provider = rig
    a = instance("a")
    a.bind("SH-A1", "acct-1")
    a.set_tariff("gate-d1", T_PARK)
    dev.wait("set_tariff", None)
    release = stuck_on(a, "mid")
    entry(dev, "mid")
    wait_for(lambda: claimed(a, dev) == "a", what="a claims the request")
    kill(a, release, stop)
    assert answered(dev) == {}
    a = instance("a")                                    # back: the broker resends the unacknowledged request
    wait_for(lambda: answered(dev) == {"mid": 1}, what="a answers it on its return")
    assert dev.cmds("auth", "mid")[0][2] is True and len(provider.orders()) == 1


def test_a_claim_whose_holder_dies_is_taken_over_after_its_lease(rig):
    """Two instances; the one that claimed a request is killed before answering and stays away:
    the other takes the claim over once the lease has run and answers, once; the first, back
    later, gets its copy again and answers nothing twice."""
    instance, stop, dev, provider = rig
    a, b = instance("a", lease=1.0), instance("b", lease=1.0)
    a.bind("SH-A1", "acct-1")
    a.set_tariff("gate-d1", T_PARK)
    dev.wait("set_tariff", None)
    release = stuck_on(a, "mid")
    real_b = b.handle
    b.handle = lambda *args: (time.sleep(0.5), real_b(*args))[1]   # a claims first  # type: ignore[method-assign]
    entry(dev, "mid")
    wait_for(lambda: claimed(a, dev) == "a", what="a claims the request")
    kill(a, release, stop)
    wait_for(lambda: answered(dev) == {"mid": 1}, what="b takes it over and answers")
    assert b.stats["answered_elsewhere"] == 1 and b.stats["taken_over"] == 1 and claimed(b, dev) == "b"
    a = instance("a", lease=1.0)                         # a's unacknowledged copy comes back to it
    wait_for(lambda: a.stats["answered_elsewhere"] == 1, what="a sees b's claim")
    time.sleep(1.5)                                      # past a's own watch of b's claim
    assert answered(dev) == {"mid": 1} and a.stats["taken_over"] == 0 and len(provider.orders()) == 1


def test_a_settled_session_is_told_once_whichever_instance_settles_it(rig):
    """Both instances settle the same close (each polls the ledger); on_settled fires once."""
    from host_tools.cloud import fees
    from host_tools.cloud.session_model import CloseRecord
    instance, stop, dev, provider = rig
    told: list[dict] = []
    a, b = instance("a"), instance("b")
    for svc in (a, b):
        svc.on_settled = told.append
    a.bind("SH-A1", "acct-1")
    a.set_tariff("gate-d1", T_PARK)
    dev.wait("set_tariff", None)
    t1 = int(time.time())
    t0 = t1 - 3700
    dev.auth_req("entry", "st-1", "SH-A1", iat=t1, t0=t0, slot=0)
    assert dev.wait("auth", "st-1")[0][2] is True
    fee = fees.parking(T_PARK, t0, t1)
    rec = CloseRecord("gate-d1", "st-1", "SH-A1", t0, t1, fee, "EUR", None, [["park", 1, fee]], "gate-d1:st-1", 9)
    assert a.settle(rec) == "settled" and b.settle(rec) == "settled" and a.settle(rec) == "settled"
    assert len(told) == 1
    assert {k: told[0][k] for k in ("device", "sid", "status", "charged", "cur")} == \
        {"device": "gate-d1", "sid": "st-1", "status": "settled", "charged": fee, "cur": "EUR"}


def test_the_settings_that_cannot_be_are_refused(broker, tmp_path):
    reg = Registry(str(tmp_path / "registry.db"))
    try:
        with pytest.raises(ValueError, match="instance or group"):
            SessionService(reg, ScriptedProvider(), BrokerSettings("127.0.0.1", broker.cloud_port, *CLOUD),
                           instance="a", group="sessions")
        with pytest.raises(ValueError, match="client_id"):
            BrokerSettings("127.0.0.1", broker.cloud_port, *CLOUD, session_s=60)
    finally:
        reg.close()


def test_expiry_spares_reauth_and_requests_without_an_instant(broker, tmp_path):
    """A reauth is old by nature (an offline session); a request with no iat, t0 or t1 cannot be
    judged, so it is answered."""
    reg = Registry(str(tmp_path / "registry.db"))
    svc = SessionService(reg, ScriptedProvider(), BrokerSettings("127.0.0.1", broker.cloud_port, *CLOUD),
                         auth_expiry_s=EXPIRY)
    try:
        old = int(time.time()) - 3600
        assert svc._expired({"purpose": "entry", "iat": old, "t0": old})
        assert svc._expired({"purpose": "exit", "t1": old})
        assert not svc._expired({"purpose": "reauth", "iat": old, "t0": old})
        assert not svc._expired({"purpose": "vend"})
        assert not svc._expired({"purpose": "exit", "t0": old})          # t0 is not an exit's instant
        assert not svc._expired({"purpose": "entry", "iat": int(time.time())})
    finally:
        svc.stop()
        reg.close()
