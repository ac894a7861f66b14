"""The ledger export for finance (host_tools/cloud/ledger_export.py; issue 13 §2), on SQLite and on
PostgreSQL: a period's closed sessions by site, whose totals are the ledger's, whose consecutive
periods add up to the whole, and whose CSV says what its JSON says; through the library, the CLI
(`edgepay ledger export`) and the API (GET /v1/ledger/export, a scoped account its sites only)."""
from __future__ import annotations

import csv
import io
import json

import pytest

from host_tools.cloud.ledger_export import MAX_SPAN_S, ExportError, export, parse_time
from host_tools.cloud.ledger_open import open_ledger
from tests.test_cli import bad, run
from tests.test_ledger import DeviceChain
from tests.test_serve_auth import Api, is_problem

T = 1_790_000_000       # the sessions' starts; each closes an hour after its start (DeviceChain)
H = 3600


def _fill(led) -> dict[str, DeviceChain]:
    """lot1-gate-1: 4 sessions, one a day; lot1-vend-1: 2 (one in USD); lot2-gate-1: 2; and one
    session left open (never exported)."""
    a, b, c = DeviceChain("lot1-gate-1"), DeviceChain("lot1-vend-1"), DeviceChain("lot2-gate-1")
    items = {a: [], b: [], c: []}
    for i in range(4):
        items[a] += a.session(f"a{i}", 100 * (i + 1), cur="CNY", t0=T + i * 86400)
    items[b] += b.session("b0", 650, cur="CNY", t0=T) + b.session("b1", 199, cur="USD", t0=T + 86400)
    items[c] += c.session("c0", 1000, cur="CNY", t0=T + 2 * 86400) + c.session("c1", 0, cur="CNY", t0=T + 3 * 86400)
    items[c].append(c.make("sess_open", sid="c2", payer="p", t0=T + 3 * 86400, slot=1))
    led.commit([r for d, its in items.items() for r in d.records(its)])
    return {d.device: d for d in items}


@pytest.fixture
def ledger(ledger_url):
    led = open_ledger(ledger_url)
    _fill(led)
    yield led
    led.close()


def test_the_export_is_the_ledgers_closed_sessions_and_its_totals(ledger):
    whole = export(ledger, T, T + 5 * 86400)
    assert whole.totals == ledger.totals() == {"CNY": 2650, "USD": 199}
    assert whole.as_json()["count"] == 8 and "c2" not in {s.sid for s in whole.sessions}   # open: not yet money
    assert all(type(r["amount"]) is int for r in whole.rows())
    # in order of their end; t1 as ISO 8601 UTC
    assert [s.t1 for s in whole.sessions] == sorted(s.t1 for s in whole.sessions)
    assert whole.rows()[0]["t1"].endswith("Z")


def test_consecutive_periods_add_up_to_the_whole_and_a_boundary_is_in_one(ledger):
    whole = export(ledger, T, T + 5 * 86400)
    cut = T + 86400 + H          # exactly the end of a1 and b1: they belong to the period that starts there
    first, second = export(ledger, T, cut), export(ledger, cut, T + 5 * 86400)
    assert {s.sid for s in first.sessions} == {"a0", "b0"}
    assert {s.sid for s in second.sessions} >= {"a1", "b1"}
    assert [(s.device, s.sid) for s in first.sessions + second.sessions] == [(s.device, s.sid) for s in whole.sessions]
    for cur in whole.totals:
        assert first.totals.get(cur, 0) + second.totals.get(cur, 0) == whole.totals[cur]


def test_a_site_is_a_device_id_prefix(ledger):
    lot1 = export(ledger, T, T + 5 * 86400, ["lot1-"])
    assert {s.device for s in lot1.sessions} == {"lot1-gate-1", "lot1-vend-1"}
    assert lot1.totals == {"CNY": 1650, "USD": 199}
    assert export(ledger, T, T + 5 * 86400, ["lot1-", "lot2-"]).totals == ledger.totals()
    assert export(ledger, T, T + 5 * 86400, ["lot_"]).sessions == []   # `_` is a character, not a wildcard
    assert export(ledger, T, T + 5 * 86400, ["lot3-"]).totals == {}


def test_the_csv_says_what_the_json_says(ledger):
    exp = export(ledger, T, T + 5 * 86400)
    text = exp.csv()
    assert text.startswith("device,sid,payer,t0,t1,amount,currency,") and "\r\n" in text
    rows = list(csv.DictReader(io.StringIO(text)))
    js = exp.as_json()["sessions"]
    assert [(r["device"], r["sid"], int(r["amount"]), r["currency"], r["t1"]) for r in rows] == \
        [(r["device"], r["sid"], r["amount"], r["currency"], r["t1"]) for r in js]
    by_cur: dict[str, int] = {}
    for r in rows:
        by_cur[r["currency"]] = by_cur.get(r["currency"], 0) + int(r["amount"])
    assert by_cur == exp.totals


def test_bad_periods_and_sites_are_refused_in_words(ledger):
    for since, until, sites, says in [(T, T, None, "before it starts"), (T + 1, T, None, "before it starts"),
                                      (T, T + MAX_SPAN_S + 1, None, "at most 366 days"),
                                      (T, T + H, [""], "empty site")]:
        with pytest.raises(ExportError, match=says):
            export(ledger, since, until, sites)
    assert parse_time("2026-11-01") == parse_time("2026-11-01T00:00:00Z") == parse_time("1793491200")
    assert parse_time("2026-11-01T08:00:00+08:00") == parse_time("2026-11-01")
    for text in ("yesterday", "2026-13-01", "", "-5"):
        with pytest.raises(ExportError, match="not a time"):
            parse_time(text)


def test_cli_export_csv_json_and_refusals(tmp_path):
    db = tmp_path / "ledger.db"
    led = open_ledger(str(db))
    _fill(led)
    led.close()
    frm, to = str(T), str(T + 5 * 86400)
    out = run("ledger", "--db", str(db), "export", "--from", frm, "--to", to, "--site", "lot1-").output
    assert out.splitlines()[0].startswith("device,sid,") and len(out.splitlines()) == 1 + 6
    js = json.loads(run("ledger", "--db", str(db), "export", "--from", frm, "--to", to, "--format", "json").output)
    assert js["totals"] == {"CNY": 2650, "USD": 199} and js["count"] == 8
    f = tmp_path / "nov.csv"
    run("ledger", "--db", str(db), "export", "--from", frm, "--to", to, "--out", str(f))
    assert f.read_text().count("\n") == 9
    bad("ledger", "--db", str(db), "export", "--from", "soon", "--to", to, says="not a time")
    bad("ledger", "--db", str(db), "export", "--from", to, "--to", frm, says="before it starts")
    bad("ledger", "--db", str(tmp_path / "none.db"), "export", "--from", frm, "--to", to, says="no ledger")


def test_api_export_json_csv_scoped_and_refused(ledger_url):
    led = open_ledger(ledger_url)
    _fill(led)
    api = Api(ledger_url, ledger=led)
    try:
        viewer, lot1 = api.user("vera", "viewer"), api.user("lou", "viewer", ("lot1-",))
        q = f"/v1/ledger/export?from={T}&to={T + 5 * 86400}"
        st, body, _ = api.call(q, token=viewer)
        assert st == 200 and body["totals"] == led.totals() and body["count"] == 8
        st, text, headers = api.call(q + "&format=csv", token=viewer)
        assert st == 200 and headers.get_content_type() == "text/csv" and "attachment" in headers["Content-Disposition"]
        assert len(list(csv.DictReader(io.StringIO(text)))) == 8
        # a scoped account: its sites, by default and when it names them; another site is refused
        st, body, _ = api.call(q, token=lot1)
        assert st == 200 and {r["device"] for r in body["sessions"]} == {"lot1-gate-1", "lot1-vend-1"}
        assert api.call(q + "&site=lot1-gate", token=lot1)[1]["count"] == 4
        assert is_problem(api.call(q + "&site=lot2-", token=lot1), 403, "forbidden")
        assert is_problem(api.call(q + "&site=lot", token=lot1), 403, "forbidden")   # wider than its site
        assert is_problem(api.call(f"/v1/ledger/export?from=later&to={T}", token=viewer), 422, "invalid")
        assert is_problem(api.call(f"/v1/ledger/export?from={T}&to={T}", token=viewer), 422, "invalid")
        assert is_problem(api.call(q + "&format=xlsx", token=viewer), 422, "invalid")
        assert is_problem(api.call(q), 401, "unauthenticated")
    finally:
        api.close()
        led.close()


def test_api_sessions_query_paged_and_scoped_and_flags(ledger_url):
    from host_tools.cloud.session_model import Flag
    from host_tools.cloud.session_store import SessionStore
    led = open_ledger(ledger_url)
    _fill(led)
    SessionStore(led).add_flag(Flag("charge_mismatch", "lot2-gate-1", "c0", "charged 1500, costs 1000",
                                    device_amount=1000, cloud_amount=1000, charged=1500, cur="CNY", at=1.0))
    api = Api(ledger_url, ledger=led)
    try:
        viewer, lot1 = api.user("vera", "viewer"), api.user("lou", "viewer", ("lot1-",))
        st, rows, _ = api.call("/v1/sessions", token=viewer)
        assert st == 200 and len(rows) == 9 and rows[0]["sid"] in ("a3", "c1", "c2")    # newest start first
        assert [r["t0"] for r in rows] == sorted((r["t0"] for r in rows), reverse=True)
        # pages of 2, following the Link header, give every session once, in the same order
        seen, url = [], "/v1/sessions?limit=2"
        while url:
            st, page, headers = api.call(url, token=viewer)
            seen += [(r["device"], r["sid"]) for r in page]
            link = headers.get("Link")
            url = link[1:link.index(">")] if link else None
        assert seen == [(r["device"], r["sid"]) for r in rows]
        assert [r["sid"] for r in api.call("/v1/sessions?payer=payer-1&device=lot1-vend-1", token=viewer)[1]] == ["b1", "b0"]
        assert {r["sid"] for r in api.call("/v1/sessions?state=open", token=viewer)[1]} == {"c2"}
        assert {r["sid"] for r in api.call(f"/v1/sessions?from={T + 86400}&to={T + 2 * 86400}", token=viewer)[1]} == {"a1", "b1"}
        assert all(type(r["amount"]) is int for r in rows if r["state"] == "closed")
        # a scoped account: its sites only, another site's device is as good as absent
        assert {r["device"] for r in api.call("/v1/sessions", token=lot1)[1]} == {"lot1-gate-1", "lot1-vend-1"}
        assert api.call("/v1/sessions?device=lot2-gate-1", token=lot1)[1] == []
        for q, kind in (("state=gone", "invalid"), ("from=soon", "invalid"), ("before=x/y", "invalid"),
                        ("limit=0", "invalid")):
            assert is_problem(api.call(f"/v1/sessions?{q}", token=viewer), 422, kind), q
        assert is_problem(api.call("/v1/sessions"), 401, "unauthenticated")
        # flags
        [f] = api.call("/v1/flags", token=viewer)[1]
        assert (f["kind"], f["device"], f["charged"], f["cloud_amount"]) == ("charge_mismatch", "lot2-gate-1", 1500, 1000)
        assert api.call("/v1/flags?kind=fee_mismatch", token=viewer)[1] == []
        assert api.call("/v1/flags", token=lot1)[1] == []
    finally:
        api.close()
        led.close()


def test_api_offline_sessions_say_where_their_reauthorisation_stands(ledger_url):
    """GET /v1/sessions?offline=true (issue 13 §4 "offline sessions awaiting reauthorisation"):
    only sessions the device opened offline, each with `reauth` from the session service's state:
    granted (an order opened), refused (flagged reauth_refused) or awaiting; offline=false the rest;
    the filter rides the Link of a full page."""
    from host_tools.cloud.session_model import Flag, SessionState
    from host_tools.cloud.session_store import SessionStore
    led = open_ledger(ledger_url)
    _fill(led)
    d = DeviceChain("lot1-gate-9")
    items = [d.make("sess_open", sid=f"o{i}", payer=f"p{i}", t0=T + 10 * 86400 + i, slot=1, offline=True)
             for i in range(3)]
    led.commit(d.records(items))
    st = SessionStore(led)
    st.save_session(SessionState("lot1-gate-9", "o0", "gate", payer="p0", order_no="lot1-gate-9:o0", status="authorized"))
    st.add_flag(Flag("reauth_refused", "lot1-gate-9", "o1", "payer has no pay-after binding", at=1.0))
    api = Api(ledger_url, ledger=led)
    try:
        viewer = api.user("vera", "viewer")
        s, rows, _ = api.call("/v1/sessions?offline=true", token=viewer)
        assert s == 200 and {r["sid"]: r["reauth"] for r in rows} == {"o0": "granted", "o1": "refused", "o2": "awaiting"}
        assert all(r["offline"] is True and r["state"] == "open" for r in rows)
        others = api.call("/v1/sessions?offline=false", token=viewer)[1]
        assert len(others) == 9 and not any(r["sid"].startswith("o") for r in others) and "reauth" not in others[0]
        _, page, headers = api.call("/v1/sessions?offline=true&limit=2", token=viewer)
        assert len(page) == 2 and "offline=true" in headers["Link"]
        assert is_problem(api.call("/v1/sessions?offline=maybe", token=viewer), 422, "invalid")
    finally:
        api.close()
        led.close()
