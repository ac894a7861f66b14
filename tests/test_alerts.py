"""Alerts (host_tools/cloud/alerts.py, service/alerts_api.py; issue 13 §4, §2 "alert raised"), on
SQLite and on PostgreSQL, time driven by the evaluator's `now`: each rule raised only once its
condition held for the start delay and resolved only once it was clear for the resolve delay (a
blip raises nothing, a condition back within the resolve delay keeps the alert), raised once with
two evaluators racing, the signed webhook for raised and resolved, the [alerts] config, and the
API's list with its refusals (unauthenticated, a device outside the caller's sites)."""
from __future__ import annotations

import json
import threading

import pytest

from host_tools.cloud.alerts import AlertError, Alerts, Evaluator, Rules, Sources
from host_tools.cloud.heartbeats import Heartbeats
from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.ota_action import OtaProgress, Progress
from host_tools.cloud.presence import Presence
from host_tools.cloud.registry import Registry
from host_tools.cloud.session_model import Flag
from host_tools.cloud.session_store import SessionStore
from host_tools.cloud.webhooks import Dispatcher, Webhooks, sign
from tests.test_presence import PresenceApi
from tests.test_serve_auth import is_problem
from tests.test_webhooks import Receiver

T = 1_796_280_000.0
RULES = {"offline_start_s": 600, "offline_resolve_s": 120, "backlog_start_s": 900, "backlog_resolve_s": 300,
         "charge_mismatch_resolve_s": 60, "flag_window_s": 3600}


def _kinds(batch) -> list[tuple[str, str]]:
    return sorted((a.device, a.kind) for a in batch)


def _registry(url: str, devices) -> Registry:
    reg = Registry(url)
    reg.add_many([(d, bytes(32), "gate", "sim-gate") for d in devices])
    return reg


def test_each_rule_raises_after_its_start_delay_and_resolves_after_its_resolve_delay(ledger_url):
    reg = _registry(ledger_url, [f"gate-{i}" for i in range(1, 9)] + ["vend-1", "vend-2", "gate-old"])
    reg.set_status("gate-old", "decommissioned")
    ledger = reg.db
    pr, hb, ss, ota = Presence(ledger), Heartbeats(ledger), SessionStore(ledger), OtaProgress(ledger)
    al = Alerts(ledger)
    ev = Evaluator(al, Sources(ledger, ledger, ledger), Rules.from_config(RULES))
    # offline: gone at T; a blip (offline 5 min, back) raises nothing
    pr.mark("gate-1", True, T - 3600)
    pr.mark("gate-1", False, T)
    pr.mark("gate-2", False, T)
    pr.mark("gate-old", False, T)                                 # not active: never an alert
    assert ev.evaluate(T + 60) == ([], [])
    pr.mark("gate-2", True, T + 300)
    assert ev.evaluate(T + 599) == ([], [])
    raised, _ = ev.evaluate(T + 600)
    assert _kinds(raised) == [("gate-1", "offline")] and raised[0].detail == {"since": T}
    assert ev.evaluate(T + 700) == ([], [])                       # raised once, not again
    # back online, off again within the resolve delay: the alert stays; then clear for 120 s: resolved
    pr.mark("gate-1", True, T + 1000)
    assert ev.evaluate(T + 1000) == ([], [])
    pr.mark("gate-1", False, T + 1060)
    assert ev.evaluate(T + 1100) == ([], [])
    pr.mark("gate-1", True, T + 1200)
    assert ev.evaluate(T + 1200) == ([], []) and ev.evaluate(T + 1319) == ([], [])
    _, resolved = ev.evaluate(T + 1320)
    assert _kinds(resolved) == [("gate-1", "offline")] and resolved[0].resolved_at == T + 1320
    # backlog: jdepth > 0 continuously since the first heartbeat after the last jdepth 0
    hb.add("vend-1", int(T), jdepth=0)
    for i in range(1, 20):
        hb.add("vend-1", int(T) + 60 * i, jdepth=i)                # backlog since T + 60
    hb.add("vend-2", int(T) + 60, jdepth=3)                        # one heartbeat, then clear
    hb.add("vend-2", int(T) + 120, jdepth=0)
    assert [k for k in _kinds(ev.evaluate(T + 959)[0]) if k[1] == "backlog"] == []
    raised, _ = ev.evaluate(T + 960)
    assert _kinds(raised) == [("vend-1", "backlog")] and raised[0].detail == {"jdepth": 19}
    hb.add("vend-1", int(T) + 2000, jdepth=0)
    assert ev.evaluate(T + 2000) == ([], []) and ev.evaluate(T + 2299) == ([], [])
    assert _kinds(ev.evaluate(T + 2300)[1]) == [("vend-1", "backlog")]
    # flags: a charge mismatch (and a fee mismatch: the same kind) and a refused reauthorisation,
    # raised at once (start 0); resolved once out of the window plus the resolve delay
    ss.add_flag(Flag("charge_mismatch", "gate-3", "s1", "charged 500, the closed session costs 400", at=T + 2400))
    ss.add_flag(Flag("fee_mismatch", "gate-3", "s2", "fee", at=T + 2410))
    ss.add_flag(Flag("reauth_refused", "gate-4", "s3", "no tariff for the device", at=T + 2400))
    ss.add_flag(Flag("payer_mismatch", "gate-5", "s4", "not an alert rule", at=T + 2400))
    ss.add_flag(Flag("charge_mismatch", "gate-6", "s5", "too old", at=T - 7200))
    raised, _ = ev.evaluate(T + 2420)
    assert _kinds(raised) == [("gate-3", "charge_mismatch"), ("gate-4", "reauth_refused")]
    cm = next(a for a in raised if a.kind == "charge_mismatch")
    assert cm.detail["n"] == 2 and cm.detail["flag"] == "fee_mismatch"
    assert _kinds(ev.evaluate(T + 2400 + 3601)[1]) == [("gate-4", "reauth_refused")]   # resolve 0 s
    assert ev.evaluate(T + 2410 + 3601) == ([], [])          # first seen clear: the 60 s start now
    assert ev.evaluate(T + 2410 + 3601 + 59) == ([], [])
    assert _kinds(ev.evaluate(T + 2410 + 3601 + 60)[1]) == [("gate-3", "charge_mismatch")]
    # update rolled back: the device's latest campaign state; a later confirmed one resolves it
    ota.put("c1", "gate-7", Progress("rolled_back", why="boot_failed", at=T + 9000))
    ota.put("c1", "gate-8", Progress("confirmed", at=T + 9000))
    raised, _ = ev.evaluate(T + 9001)
    assert _kinds(raised) == [("gate-7", "update_rolled_back")]
    assert raised[0].detail == {"campaign": "c1", "why": "boot_failed"}
    ota.put("c2", "gate-7", Progress("confirmed", at=T + 9100))
    assert _kinds(ev.evaluate(T + 9101)[1]) == [("gate-7", "update_rolled_back")]
    # all on record: newest first, filtered
    assert [a.kind for a in al.list(device="gate-7")] == ["update_rolled_back"]
    assert len(al.list(state="resolved")) == 5 and al.list(state="open") == []
    assert [a.device for a in al.list(kind="offline")] == ["gate-1"]
    reg.close()


def test_two_evaluators_racing_raise_and_resolve_once_and_the_webhooks_say_so(ledger_url):
    rx = Receiver()
    _registry(ledger_url, [f"gate-{i:02d}" for i in range(30)]).close()
    dbs = [open_ledger(ledger_url), open_ledger(ledger_url)]   # two instances: two connections
    try:
        ledger = dbs[0]
        pr, al, wh = Presence(ledger), Alerts(ledger), Webhooks(ledger, backoff=(0,))
        hook, secret = wh.add(rx.url, ["alert.raised", "alert.resolved"])
        for i in range(30):
            pr.mark(f"gate-{i:02d}", False, T)
        rules = Rules.from_config({"offline_start_s": 60, "offline_resolve_s": 0})
        evs = [Evaluator(Alerts(db), Sources(db), rules, Webhooks(db, backoff=(0,))) for db in dbs]
        got: list[tuple[list, list]] = []
        lock = threading.Lock()

        def race(ev: Evaluator, now: float) -> None:
            out = ev.evaluate(now)
            with lock:
                got.append(out)
        for now, change in ((T + 60, None), (T + 120, True)):
            if change:
                for i in range(30):
                    pr.mark(f"gate-{i:02d}", True, now - 1)
            ts = [threading.Thread(target=race, args=(ev, now)) for ev in evs]
            for t in ts:
                t.start()
            for t in ts:
                t.join(10)
        raised = [a for r, _ in got for a in r]
        resolved = [a for _, z in got for a in z]
        assert len(raised) == 30 and len({a.device for a in raised}) == 30
        assert len(resolved) == 30 and len(al.list(limit=1000)) == 30
        # the open alert's unique key, whatever the evaluators saw: a second raise is refused
        first = al.raise_("gate-00", "offline", T + 200, {})
        assert first is not None and Alerts(dbs[1]).raise_("gate-00", "offline", T + 201, {}) is None
        assert al.resolve(first, T + 300) is not None and Alerts(dbs[1]).resolve(first, T + 301) is None
        d = Dispatcher(wh)
        while d.once():
            pass
        events = [json.loads(body) for _, body in rx.got]
        assert sorted(e["type"] for e in events) == ["alert.raised"] * 30 + ["alert.resolved"] * 30
        ev0 = next(e for e in events if e["type"] == "alert.resolved")
        assert ev0["data"]["state"] == "resolved" and ev0["data"]["kind"] == "offline"
        assert ev0["data"]["resolved_at"] == T + 120 and ev0["data"]["raised_at"] == T + 60
        for headers, body in rx.got:
            assert headers["webhook-signature"] == sign(secret, headers["webhook-id"],
                                                        int(headers["webhook-timestamp"]), body)
    finally:
        rx.close()
        for db in dbs:
            db.close()


def test_bad_alert_settings_are_refused_in_words(tmp_path):
    from host_tools.service.config import ConfigError, load
    for cfg, says in [({"offline_start": 1}, "unknown key"), ({"offline_start_s": -1}, "0 or more"),
                      ({"every_s": 0}, "above 0"), ({"backlog_resolve_s": True}, "number of seconds"),
                      ({"budget_start_s": 5}, "unknown key")]:
        with pytest.raises(AlertError, match=says):
            Rules.from_config(cfg)
    r = Rules.from_config({"offline_start_s": 300, "every_s": 5})
    assert r.delays["offline"] == (300.0, 120.0) and r.every_s == 5.0
    p = tmp_path / "c.toml"
    p.write_text("[alerts]\nenabled = false\noffline_start_s = 300\nbacklog_resolve_s = 60\n")
    c = load(p, env={})
    assert c.alerts_on is False and c.alerts == {"offline_start_s": 300, "backlog_resolve_s": 60}
    for text, says in [("[alerts]\nofline_start_s = 1\n", "unknown key"), ("[alerts]\nenabled = 1\n", "true or false"),
                       ("[alerts]\nevery_s = -2\n", "0 or more")]:
        p.write_text(text)
        with pytest.raises(ConfigError, match=says):
            load(p, env={})


def test_the_api_lists_alerts_paged_and_scoped_and_refuses_the_rest(ledger_url):
    api = PresenceApi(ledger_url)
    try:
        api.reg.add_many([(d, bytes(32), "gate", "sim-gate") for d in ("lot1-gate-1", "lot1-gate-2", "lot2-gate-1")])
        ev = Evaluator(api.alerts, Sources(api.reg.db), Rules.from_config({"offline_start_s": 0, "offline_resolve_s": 0}))
        for d in ("lot1-gate-1", "lot1-gate-2", "lot2-gate-1"):
            api.presence.mark(d, False, T)
        ev.evaluate(T + 1)
        api.presence.mark("lot1-gate-2", True, T + 2)
        ev.evaluate(T + 3)
        viewer, scoped = api.user("vera", "viewer"), api.user("sam", "viewer", ["lot1-"])
        st, body, headers = api.call("/v1/alerts?limit=2", token=viewer)
        assert st == 200 and len(body) == 2 and "Link" in headers
        link = headers["Link"]
        st, rest, headers2 = api.call(link[1:link.index(">")], token=viewer)
        assert st == 200 and len(rest) == 1 and "Link" not in headers2
        assert sorted(a["device"] for a in body + rest) == ["lot1-gate-1", "lot1-gate-2", "lot2-gate-1"]
        st, opened, _ = api.call("/v1/alerts?state=open&kind=offline", token=viewer)
        assert sorted(a["device"] for a in opened) == ["lot1-gate-1", "lot2-gate-1"]
        st, done, _ = api.call("/v1/alerts?state=resolved", token=viewer)
        assert [(a["device"], a["resolved_at"]) for a in done] == [("lot1-gate-2", T + 3)]
        st, mine, _ = api.call("/v1/alerts", token=scoped)
        assert sorted(a["device"] for a in mine) == ["lot1-gate-1", "lot1-gate-2"]
        assert api.call("/v1/alerts?device=lot1-gate-1", token=scoped)[1][0]["kind"] == "offline"
        # refusals: no token, a device outside the caller's sites, a bad state or kind
        assert is_problem(api.call("/v1/alerts"), 401, "unauthenticated")
        assert is_problem(api.call("/v1/alerts?device=lot2-gate-1", token=scoped), 404, "not-found")
        assert api.call("/v1/alerts?state=closed", token=viewer)[0] == 422
        assert api.call("/v1/alerts?kind=budget", token=viewer)[0] == 422
    finally:
        api.close()
