"""The offline budget used (issue 13 §2 device detail, §4 alert "offline budget nearly used"), on
SQLite and on PostgreSQL: a device's heartbeat reports what it charged and opened offline and the
cloud has not re-authorised yet (SPEC §4 heartbeat 18 off_amt, 19 off_n; the firmware side is
tests/test_apps_offline.py); the heartbeat recorder keeps it (absent = 0), the policy pushed to
the device is stored (PUT /v1/devices/{id}/policy, or set_policy as a command), the device detail
shows both with the fractions used, and the `offline_budget` alert is raised at 80% of the
policy's total_cap or max_sessions (configurable), resolved once back below, webhooks included."""
from __future__ import annotations

import pytest

from host_tools.cloud.alerts import AlertError, Alerts, Evaluator, Rules, Sources
from host_tools.cloud.heartbeats import Heartbeats, Recorder
from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.registry import Registry
from host_tools.cloud.session_store import SessionStore
from host_tools.service.api import make_app
from tests.httpkit import Served
from tests.test_serve_auth import BOOT, FAST, Api, FakeClient, is_problem

T = 1_796_280_000
POLICY = {1: 1, 2: "CNY", 3: 1000, 4: 2000, 5: 5, 6: 86400}   # total_cap 2000, max_sessions 5


class Hooks:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def emit(self, event: str, data: dict) -> None:
        self.sent.append((event, data))


def _budget_alerts(batch) -> list[str]:
    return sorted(a.device for a in batch if a.kind == "offline_budget")


def test_the_recorder_keeps_the_offline_budget_absent_as_zero(ledger_url):
    reg = Registry(ledger_url)
    try:
        hb = Heartbeats(reg.db)
        rec = Recorder(hb, reg)
        base = {"type": "heartbeat", "seq": 1, "uptime": 60, "heap": 30000, "jdepth": 0, "clock": 1}
        hb.add_many([rec.row("a", {**base, "off_amt": 1500, "off_n": 3}, T)])
        hb.add_many([rec.row("b", base, T)])
        assert (hb.last("a") or {})["off_amt"] == 1500 and (hb.last("a") or {})["off_n"] == 3
        assert {k: (hb.last("b") or {})[k] for k in ("off_amt", "off_n")} == {"off_amt": 0, "off_n": 0}
        hb.add_many([rec.row("a", base, T + 60)])        # re-authorised: the fields are gone, so 0
        assert {k: (hb.last("a") or {})[k] for k in ("off_amt", "off_n")} == {"off_amt": 0, "off_n": 0}
        hb.add("a", T + 30, off_amt=99)                  # an older one arriving late changes nothing
        assert (hb.last("a") or {})["off_amt"] == 0
    finally:
        reg.close()


def test_a_version_1_heartbeats_table_gains_the_offline_budget(ledger_url):
    reg = Registry(ledger_url)
    try:
        db = reg.db
        big = db.bigint

        def old(cur) -> None:   # hb_last as version 1 made it, one row in it
            cur.execute("CREATE TABLE schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
                        if not db._columns(cur, "schema_version") else "SELECT 1")
            cur.execute(f"CREATE TABLE hb_last (device TEXT PRIMARY KEY, at {big} NOT NULL, heap {big}, "
                        f"rssi {big}, jdepth {big}, uptime {big})")
            cur.execute(db._sql("INSERT INTO hb_last (device, at, heap) VALUES (?,?,?)"), ("a", T, 5))
            cur.execute(db._sql("INSERT INTO schema_version (component, version) VALUES (?, ?)"), ("heartbeats", 1))
        db._write(old)
        hb = Heartbeats(db)
        assert db.schema_version("heartbeats") == 2
        assert hb.last("a") == {"at": T, "heap": 5, "rssi": None, "jdepth": None, "uptime": None,
                                "off_amt": 0, "off_n": 0}
        hb.add("a", T + 60, heap=6, off_amt=10, off_n=1)
        assert ((hb.last("a") or {})["off_amt"], (hb.last("a") or {})["off_n"]) == (10, 1)
    finally:
        reg.close()


def test_offline_budget_alert_raises_at_80_percent_and_resolves_below(ledger_url):
    reg = Registry(ledger_url)
    reg.add_many([(d, bytes(32), "vending", "sim-vending") for d in ("v-amt", "v-n", "v-low", "v-nopol", "v-old")])
    reg.set_status("v-old", "decommissioned")
    db = reg.db
    hb, ss, hooks = Heartbeats(db), SessionStore(db), Hooks()
    ev = Evaluator(Alerts(db), Sources(db, db), Rules(), webhooks=hooks)
    try:
        for d in ("v-amt", "v-n", "v-low", "v-old"):
            ss.save_policy(d, POLICY, T)
        hb.add("v-amt", T, off_amt=1599, off_n=1)        # 79.95% of 2000: not yet
        hb.add("v-n", T, off_amt=100, off_n=3)           # 60% of 5 sessions
        hb.add("v-low", T, off_amt=500, off_n=1)
        hb.add("v-nopol", T, off_amt=10 ** 9, off_n=99)  # no policy known: the cloud cannot tell
        hb.add("v-old", T, off_amt=2000, off_n=5)        # not active: never an alert
        assert _budget_alerts(ev.evaluate(T + 1)[0]) == []
        hb.add("v-amt", T + 60, off_amt=1600, off_n=1)   # 80%: raised
        hb.add("v-n", T + 60, off_amt=100, off_n=4)      # 4 of 5 sessions: raised
        raised, _ = ev.evaluate(T + 61)
        assert _budget_alerts(raised) == ["v-amt", "v-n"]
        amt = next(a for a in raised if a.device == "v-amt")
        assert amt.detail == {"off_amt": 1600, "off_n": 1, "policy_version": 1, "cur": "CNY", "total_cap": 2000,
                              "max_sessions": 5, "amt_used": 0.8, "n_used": 0.2}
        assert [(e, d["device"]) for e, d in hooks.sent] == [("alert.raised", "v-amt"), ("alert.raised", "v-n")]
        assert ev.evaluate(T + 120) == ([], [])         # raised once
        # re-authorised: the next heartbeat carries neither field (0); resolved (resolve delay 0)
        hb.add("v-amt", T + 180)
        _, resolved = ev.evaluate(T + 181)
        assert _budget_alerts(resolved) == ["v-amt"] and hooks.sent[-1][0] == "alert.resolved"
        # a larger policy pushed: v-n's 4 sessions are 40% of 10, so it resolves too
        ss.save_policy("v-n", {**POLICY, 1: 2, 5: 10}, T + 200)
        assert _budget_alerts(ev.evaluate(T + 201)[1]) == ["v-n"]
        # the thresholds are [alerts] settings: at 25%, v-low's 500 of 2000 is raised
        ev.rules = Rules.from_config({"offline_budget_amt_ratio": 0.25, "offline_budget_n_ratio": 1})
        assert _budget_alerts(ev.evaluate(T + 300)[0]) == ["v-low"]
    finally:
        reg.close()


def test_offline_budget_settings_are_checked_in_words(tmp_path):
    from host_tools.service.config import ConfigError, load
    r = Rules.from_config({"offline_budget_amt_ratio": 0.5, "offline_budget_start_s": 60})
    assert (r.budget_amt_ratio, r.budget_n_ratio, r.delays["offline_budget"]) == (0.5, 0.8, (60.0, 0.0))
    for bad in (0, 1.5, -0.1, True, "0.8"):
        with pytest.raises(AlertError, match="fraction"):
            Rules.from_config({"offline_budget_n_ratio": bad})
    p = tmp_path / "c.toml"
    p.write_text("[alerts]\noffline_budget_amt_ratio = 0.9\noffline_budget_resolve_s = 300\n")
    assert load(p, env={}).alerts == {"offline_budget_amt_ratio": 0.9, "offline_budget_resolve_s": 300}
    p.write_text("[alerts]\noffline_budget_amt_ratio = 2\n")
    with pytest.raises(ConfigError, match="fraction"):
        load(p, env={})


class BudgetApi(Api):
    """The app with heartbeats and a ledger (the policy store) over one real database."""

    def __init__(self, url: str) -> None:   # noqa: D107 - Api's, with heartbeats and a ledger
        from host_tools.cloud.accounts import Accounts
        self.reg = Registry(url)
        for d, kind in (("lot1-vend-1", "vending"), ("lot2-vend-1", "vending")):
            self.reg.add(d, bytes(32), kind, f"sim-{kind}")
        self.ledger = open_ledger(url)
        self.hb = Heartbeats(self.reg.db)
        self.acc = Accounts(self.reg.db, scrypt=FAST)
        self.client = FakeClient()
        app = make_app(self.reg, self.client, token=BOOT, accounts=self.acc,  # type: ignore[arg-type]
                       cookie_secure=False, ledger=self.ledger, heartbeats=self.hb)
        self.served = Served(app)
        self.url = self.served.url

    def close(self) -> None:
        super().close()
        self.ledger.close()


def test_the_device_detail_shows_the_offline_budget_used_against_the_policy_pushed(ledger_url):
    api = BudgetApi(ledger_url)
    dev = "lot1-vend-1"
    try:
        viewer, op = api.user("vera", "viewer"), api.user("otto", "operator")
        st, d, _ = api.call(f"/v1/devices/{dev}", token=viewer)
        assert st == 200 and d["offline_budget"] is None                       # no heartbeat yet
        api.hb.add(dev, T, heap=30000, jdepth=0, off_amt=700, off_n=2)
        assert api.call(f"/v1/devices/{dev}", token=viewer)[1]["offline_budget"] == {"off_amt": 700, "off_n": 2}
        # the policy pushed: checked, stored, sent signed
        pol = {"version": 1, "cur": "CNY", "per_payer_cap": 500, "total_cap": 1000, "max_sessions": 4,
               "max_duration_s": 86400}
        st, out = api.call(f"/v1/devices/{dev}/policy", "PUT", {"args": pol}, token=op)[:2]
        assert (st, out["state"]) == (200, "SUCCEEDED")
        assert api.client.sent[-1] == (dev, "set_policy", {1: 1, 2: "CNY", 3: 500, 4: 1000, 5: 4, 6: 86400})
        st, got, _ = api.call(f"/v1/devices/{dev}/policy", token=viewer)
        assert st == 200 and got["args"] == {"1": 1, "2": "CNY", "3": 500, "4": 1000, "5": 4, "6": 86400}
        st, d, _ = api.call(f"/v1/devices/{dev}", token=viewer)
        assert d["offline_budget"] == {"off_amt": 700, "off_n": 2, "policy_version": 1, "cur": "CNY",
                                       "total_cap": 1000, "max_sessions": 4, "amt_used": 0.7, "n_used": 0.5}
        # refused before anything is stored or sent: a missing cap, a viewer, no such device
        n = len(api.client.sent)
        bad = {k: v for k, v in pol.items() if k != "total_cap"}
        assert api.call(f"/v1/devices/{dev}/policy", "PUT", {"args": bad}, token=op)[0] == 422
        assert is_problem(api.call(f"/v1/devices/{dev}/policy", "PUT", {"args": pol}, token=viewer), 403, "forbidden")
        assert api.call("/v1/devices/nope/policy", "PUT", {"args": pol}, token=op)[0] == 404
        assert len(api.client.sent) == n
        assert api.call("/v1/devices/lot2-vend-1/policy", token=viewer)[0] == 404   # none pushed
        # set_policy sent as a plain command is recorded too
        st, out, _ = api.call(f"/v1/devices/{dev}/commands", "POST",
                              {"name": "set_policy", "args": {**pol, "version": 2, "total_cap": 700}}, token=op)
        assert st == 200 and out["state"] == "SUCCEEDED"
        b = api.call(f"/v1/devices/{dev}", token=viewer)[1]["offline_budget"]
        assert (b["policy_version"], b["total_cap"], b["amt_used"]) == (2, 700, 1.0)
        # a scoped account outside the device's site sees nothing of it
        scoped = api.user("sam", "viewer", ["lot2-"])
        assert is_problem(api.call(f"/v1/devices/{dev}", token=scoped), 404, "not-found")
    finally:
        api.close()
