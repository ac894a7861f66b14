"""Presence (host_tools/cloud/presence.py; issue 13 §1 "devices online", §2 the device list's online
and firmware filters), on SQLite and on PostgreSQL: a device's signed hello and retained status and
its MQTT will, through a real Mosquitto, make it online with its firmware and then offline; a forged
or garbled one is counted and changes nothing; GET /v1/devices filters and pages on it in the
database, and /metrics reports edgepay_devices_online."""
from __future__ import annotations

import json
import os
import socket
import time

import paho.mqtt.client as paho
import pytest

from host_tools.broker import Broker
from host_tools.cloud.accounts import Accounts
from host_tools.cloud.alerts import Alerts
from host_tools.cloud.mqtt import BrokerSettings, CloudMQTT
from host_tools.cloud.presence import Presence, Tracker
from host_tools.cloud.registry import Registry
from host_tools.protocol import make_kid, seal
from host_tools.service.api import make_app
from tests.httpkit import Served
from tests.test_serve_auth import FAST, BOOT, Api, FakeClient, is_problem

DEVICES = {"ps1": "ps1-pw", "pp1": "pp1-pw"}   # one device user per backend: the retained topics differ


@pytest.fixture(scope="module")
def pbroker():
    b = Broker(users={"cloud": "cloud-pw", **DEVICES}, cloud_users=("cloud",))
    b.start()
    yield b
    b.close()


def _until(tr: Tracker, pred, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        tr.flush()
        if pred():
            return
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _hello(seq: int, fw: str) -> dict:
    return {"type": "hello", "seq": seq, "fw": fw, "board": "sim-gate", "reset": "power_on", "caps": [],
            "kind": "gate"}


def test_signed_status_hello_and_will_through_mosquitto_and_a_forged_one_refused(pbroker, ledger_url):
    dev = "ps1" if ledger_url.startswith("sqlite") else "pp1"
    reg = Registry(ledger_url)
    key, other = os.urandom(32), os.urandom(32)
    reg.add(dev, key, "gate", "sim-gate")
    reg.add("px-forged", other, "gate", "sim-gate")
    kid = make_kid(dev, 1)
    st_topic, hello_topic = f"v1/dev/{dev}/up/status", f"v1/dev/{dev}/up/hello"
    clock = [1_796_280_000.0]
    pr = Presence(reg.db)
    tr = Tracker(pr, reg, clock=lambda: clock[0])
    mq = CloudMQTT(BrokerSettings("127.0.0.1", pbroker.cloud_port, "cloud", "cloud-pw"))
    tr.subscribe(mq)
    mq.connect()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=dev)
    try:
        c.username_pw_set(dev, DEVICES[dev])
        c.will_set(st_topic, seal(key, kid, st_topic, {"type": "status", "seq": 1, "online": False}), 1, True)
        c.connect("127.0.0.1", pbroker.port, keepalive=30)
        c.loop_start()
        c.publish(hello_topic, seal(key, kid, hello_topic, _hello(2, "1.4.0")), 1).wait_for_publish(5)
        c.publish(st_topic, seal(key, kid, st_topic, {"type": "status", "seq": 3, "online": True}), 1,
                  True).wait_for_publish(5)
        _until(tr, lambda: tr.stats["recorded"] == 2, "hello and status recorded")
        assert pr.get(dev) == {"online": True, "since": clock[0], "seen": clock[0], "fw": "1.4.0"}
        assert pr.online_count() == 1
        # forged: a status for another device under the wrong key, a garbled one, a heartbeat on
        # the status topic, a device the registry does not know: each refused, none recorded
        ft = "v1/dev/px-forged/up/status"
        mq.publish(ft, seal(key, make_kid("px-forged", 1), ft, {"type": "status", "seq": 1, "online": True}))
        mq.publish(ft, b"\xa0" * 40)
        mq.publish(ft, seal(other, make_kid("px-forged", 1), ft.replace("status", "hb"),
                            {"type": "heartbeat", "seq": 2, "uptime": 1, "heap": 1, "jdepth": 0, "clock": 1}))
        nt = "v1/dev/px-nobody/up/status"
        mq.publish(nt, seal(other, make_kid("px-nobody", 1), nt, {"type": "status", "seq": 1, "online": True}))
        _until(tr, lambda: tr.stats["refused"] == 4, "four refusals")
        assert tr.stats["recorded"] == 2 and pr.get("px-forged") is None and pr.get("px-nobody") is None
        # the connection drops: the broker publishes the device's signed will
        clock[0] += 90
        sock = c.socket()
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)      # the broker sees the connection drop, with no DISCONNECT
        _until(tr, lambda: pr.get(dev) is not None and pr.get(dev)["online"] is False, "the will")  # type: ignore[index]
        assert pr.get(dev) == {"online": False, "since": clock[0], "seen": clock[0], "fw": "1.4.0"}
        # the same retained status again (a resubscribe) is the same state: `since` does not move
        clock[0] += 30
        mq.publish(st_topic, seal(key, kid, st_topic, {"type": "status", "seq": 1, "online": False}))
        _until(tr, lambda: tr.stats["recorded"] == 4, "the repeat")
        got = pr.get(dev)
        assert got is not None and got["since"] == clock[0] - 30 and got["seen"] == clock[0]
        # a flood beyond the queue is counted and dropped, never held
        small = Tracker(pr, reg, queue_max=3)
        for _ in range(5):
            small.on_message(st_topic, b"x")
        assert small.stats["dropped"] == 2 and small.flush() == 3 and small.stats["refused"] == 3
    finally:
        c.disconnect()           # before loop_stop, which otherwise waits out paho's 1 s select
        c.loop_stop()
        for t in (st_topic, "v1/dev/px-forged/up/status"):   # clear the retained messages
            mq.publish(t, b"", retain=True)
        mq.close()
        reg.close()


class PresenceApi:
    """The app with presence and alerts over a real registry, on a real uvicorn server."""

    call = Api.call
    user = Api.user

    def __init__(self, url: str) -> None:
        self.reg = Registry(url)
        self.presence = Presence(self.reg.db)
        self.alerts = Alerts(self.reg.db)
        self.acc = Accounts(self.reg.db, scrypt=FAST)
        app = make_app(self.reg, FakeClient(), token=BOOT, accounts=self.acc,  # type: ignore[arg-type]
                       cookie_secure=False, presence=self.presence, alerts=self.alerts)
        self.served = Served(app)
        self.url = self.served.url

    def close(self) -> None:
        self.served.stop()
        self.reg.close()


N = 10_000


def test_the_device_list_filters_and_pages_on_presence_in_the_database(ledger_url):
    api = PresenceApi(ledger_url)
    try:
        ids = [f"lot{i % 4}-gate-{i:05d}" for i in range(N)]
        api.reg.add_many([(d, bytes(32), "gate", "sim-gate") for d in ids])
        # every third device online on 1.4.0, every seventh seen and offline on 1.3.0, the rest never seen
        rows = [(d, True, 1000.0 + i, "1.4.0") for i, d in enumerate(ids) if i % 3 == 0]
        rows += [(d, False, 2000.0 + i, "1.3.0") for i, d in enumerate(ids) if i % 7 == 0 and i % 3]
        api.presence.mark_many(rows)
        srt = sorted(ids)
        want_on = sorted(d for i, d in enumerate(ids) if i % 3 == 0)
        viewer = api.user("vera", "viewer")
        # a full walk of online=true in pages of 1000, following the Link header
        got, path, pages, slowest = [], "/v1/devices?online=true&limit=1000", 0, 0.0
        while path:
            t0 = time.perf_counter()
            st, body, headers = api.call(path, token=viewer)
            slowest = max(slowest, time.perf_counter() - t0)
            assert st == 200
            got += body
            pages += 1
            link = headers.get("Link")
            path = link[1:link.index(">")] if link else None
        assert [d["id"] for d in got] == want_on and pages == len(want_on) // 1000 + 1
        assert all(d["online"] is True and d["fw"] == "1.4.0" for d in got)
        assert slowest < 1.0, f"a page of 1000 of {N} devices took {slowest:.3f} s"
        # online=false: offline or never seen; fw=; and the fields on the detail
        st, off, _ = api.call("/v1/devices?online=false&limit=5", token=viewer)
        assert [d["id"] for d in off] == [d for d in srt if d not in set(want_on)][:5]
        never = [d for d in off if d["online"] is None]
        assert never and all(d["since"] is None and d["fw"] is None for d in never)
        st, old, _ = api.call("/v1/devices?fw=1.3.0&limit=1000", token=viewer)
        assert st == 200 and {d["online"] for d in old} == {False} and len(old) == len(rows) - len(want_on)
        first = want_on[0]
        st, one, _ = api.call(f"/v1/devices/{first}", token=viewer)
        assert (one["online"], one["fw"]) == (True, "1.4.0") and one["since"] == 1000.0 + ids.index(first)
        st, plain, _ = api.call("/v1/devices?limit=2", token=viewer)
        assert [d["id"] for d in plain] == srt[:2] and set(plain[0]) >= {"id", "kind", "board", "status",
                                                                          "key_version", "online", "since", "fw"}
        # a scoped account sees its site's devices only, filtered the same way
        scoped = api.user("sam", "viewer", ["lot1-"])
        st, mine, _ = api.call("/v1/devices?online=true&limit=1000", token=scoped)
        assert [d["id"] for d in mine] == [d for d in want_on if d.startswith("lot1-")][:1000]
        assert is_problem(api.call(f"/v1/devices/{want_on[0]}", token=scoped), 404, "not-found")
        # refusals: no token, a bad filter value
        assert is_problem(api.call("/v1/devices?online=true"), 401, "unauthenticated")
        assert api.call("/v1/devices?online=maybe", token=viewer)[0] == 422
        # the gauge
        st, text, _ = api.call("/metrics", token=viewer)
        assert f"edgepay_devices_online {float(len(want_on))}" in text
        assert json.dumps(api.presence.get(first))
    finally:
        api.close()


def test_serve_tracks_a_vm_board_online_then_offline_and_raises_the_alert(site, tmp_path, monkeypatch):
    """The wiring in `edgepay serve` (host_tools/service/run.py): a VM board's own hello and status,
    then its will when it dies, through real Mosquitto; the offline alert the api part raises."""
    from host_tools.service.config import load
    from host_tools.service.run import Service
    from tests.agentkit import CLOUD
    from tests.test_serve import call, write_config
    monkeypatch.setenv("TEST_MQTT_PW", CLOUD[1])
    monkeypatch.setenv("TEST_API_TOKEN", "t0ken")
    cfg = write_config(tmp_path, site)
    cfg.write_text(cfg.read_text() + "[alerts]\nevery_s = 0.2\noffline_start_s = 0\noffline_resolve_s = 0\n")
    svc = Service(load(cfg)).start()
    try:
        b = site.board("gate-1", "gate")
        u = svc.url

        def wait(path: str, pred, what: str):
            deadline = time.monotonic() + 10
            while True:
                st, body = call(u + path, token="t0ken")
                if st == 200 and pred(body):
                    return body
                assert time.monotonic() < deadline, f"{what}: {st} {body}"
                time.sleep(0.1)
        [d] = wait("/v1/devices?online=true", lambda x: len(x) == 1, "online")
        assert d["id"] == "gate-1" and d["fw"] and d["since"]
        assert "edgepay_devices_online 1.0" in call(u + "/metrics", token="t0ken")[1]
        b.kill()                                      # no DISCONNECT: the broker sends the signed will
        wait("/v1/devices?online=false", lambda x: [y["id"] for y in x] == ["gate-1"], "offline")
        [a] = wait("/v1/alerts?state=open", lambda x: len(x) == 1, "the offline alert")
        assert (a["device"], a["kind"]) == ("gate-1", "offline")
    finally:
        svc.stop()
