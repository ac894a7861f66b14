"""Webhooks (host_tools/cloud/webhooks.py, service/webhooks_api.py; issue 13 §2), on SQLite and on
PostgreSQL, against a real HTTP receiver on loopback: signed as Standard Webhooks signs, retried
with back-off under one id until the receiver takes it, failed (and kept) when it never does, each
delivery sent once even with two dispatchers racing, and the admin API that manages them."""
# ruff: noqa: F811  (`ledger` is the fixture imported from tests/test_ledger.py)
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from host_tools.cloud.webhooks import Dispatcher, Webhooks, WebhookError, sign
from tests.test_ledger import ledger  # noqa: F401 (a fresh ledger database: the fixture)
from tests.test_serve_auth import DISPLAY, Api, is_problem


class Receiver:
    """A loopback HTTP server: answers each POST with the next of `codes` (then 200), keeps them."""

    def __init__(self, codes=()):
        self.codes = list(codes)
        self.got: list[tuple[dict, str]] = []
        lock = threading.Lock()
        me = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                with lock:
                    me.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    code = me.codes.pop(0) if me.codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_signed_retried_under_one_id_until_taken(ledger):
    rx = Receiver([500, 503])
    try:
        wh = Webhooks(ledger, backoff=(0, 0, 0))
        hook, secret = wh.add(rx.url, ["command.final"])
        [did] = wh.emit("command.final", {"cti": "ab", "state": "SUCCEEDED"})
        d = Dispatcher(wh)
        for _ in range(3):
            assert d.once() == 1
        assert d.once() == 0                          # delivered: nothing more to send
        assert len(rx.got) == 3 and {h["webhook-id"] for h, _ in rx.got} == {did}
        for headers, body in rx.got:
            assert headers["webhook-signature"] == sign(secret, did, int(headers["webhook-timestamp"]), body)
            assert headers["content-type"] == "application/json"
            assert json.loads(body)["data"] == {"cti": "ab", "state": "SUCCEEDED"}
        [rec] = wh.deliveries(hook.id)
        assert (rec.state, rec.attempts, rec.last_status) == ("delivered", 3, "200")
        # a wrong secret does not make the signature
        _, body = rx.got[0]
        assert sign("whsec_" + "A" * 44, did, 1, body) != sign(secret, did, 1, body)
    finally:
        rx.close()


def test_a_receiver_that_never_answers_fails_the_delivery_and_keeps_it(ledger):
    rx = Receiver()
    dead = rx.url
    rx.close()                                         # nobody listens there now
    wh = Webhooks(ledger, backoff=(0, 0))
    hook, _ = wh.add(dead, ["command.final"])
    wh.emit("command.final", {"n": 1})
    d = Dispatcher(wh)
    while d.once():
        pass
    [rec] = wh.deliveries(hook.id)
    assert (rec.state, rec.attempts, rec.last_status) == ("failed", 3, None) and rec.last_error
    # a back-off in the future: not due yet, not sent
    wh2 = Webhooks(ledger, backoff=(3600,))
    wh2.emit("command.final", {"n": 2})
    d2 = Dispatcher(wh2)
    assert d2.once() == 1 and d2.once() == 0
    assert [x.state for x in wh2.deliveries(hook.id)] == ["pending", "failed"]
    wh.remove(hook.id)                                 # its pending delivery is failed, on record
    assert [(x.state, x.last_error) for x in wh.deliveries(hook.id)][0] == ("failed", "hook removed")


def test_a_flood_is_delivered_once_each_with_two_dispatchers_racing(ledger):
    rx = Receiver()
    try:
        wh = Webhooks(ledger)
        wh.add(rx.url, ["command.final"])
        ids = [i for n in range(60) for i in wh.emit("command.final", {"n": n})]
        stop = threading.Event()
        ts = [threading.Thread(target=Dispatcher(wh, poll_s=0.05).run, args=(stop,)) for _ in range(2)]
        for t in ts:
            t.start()
        for _ in range(200):
            if len(rx.got) >= 60 and all(d.state == "delivered" for d in wh.deliveries()):
                break
            threading.Event().wait(0.05)
        stop.set()
        for t in ts:
            t.join(5)
        got = [h["webhook-id"] for h, _ in rx.got]
        assert sorted(got) == sorted(ids)              # every one, none twice
    finally:
        rx.close()


def test_bad_hooks_are_refused_in_words(ledger):
    wh = Webhooks(ledger)
    for url, events, says in [("ftp://x/y", ["command.final"], "bad url"), ("http://a b", ["command.final"], "bad url"),
                              ("https://ok.example/h", [], "no events"),
                              ("https://ok.example/h", ["session.lost"], "unknown event")]:
        with pytest.raises(WebhookError, match=says):
            wh.add(url, events)
    with pytest.raises(WebhookError, match="no webhook"):
        wh.remove("wh-000000000000")
    assert wh.emit("command.final", {"n": 1}) == []    # no hook: nothing recorded


def test_api_manages_hooks_and_a_command_emits_its_final_state(ledger_url):
    rx = Receiver()
    api = Api(ledger_url, webhooks=True)
    try:
        admin, op = api.user("ada", "admin"), api.user("otto", "operator")
        st, h, _ = api.call("/v1/webhooks", "POST", {"url": rx.url, "events": ["command.final"]}, admin)
        assert st == 201 and h["secret"].startswith("whsec_") and h["id"].startswith("wh-")
        assert is_problem(api.call("/v1/webhooks", "POST", {"url": rx.url, "events": ["command.final"]}, op),
                          403, "forbidden")
        assert is_problem(api.call("/v1/webhooks", "POST", {"url": "gopher://x", "events": ["command.final"]},
                                   admin), 422, "invalid")
        assert [x["id"] for x in api.call("/v1/webhooks", token=admin)[1]] == [h["id"]]
        assert "secret" not in api.call("/v1/webhooks", token=admin)[1][0]
        assert api.call("/v1/devices/lot1-gate-1/commands", "POST", DISPLAY, op)[0] == 200
        assert api.hooks is not None and Dispatcher(api.hooks).once() == 1
        [(headers, body)] = rx.got
        ev = json.loads(body)
        assert ev["type"] == "command.final" and ev["data"]["state"] == "SUCCEEDED" and ev["data"]["by"] == "otto"
        assert headers["webhook-signature"] == sign(h["secret"], headers["webhook-id"],
                                                    int(headers["webhook-timestamp"]), body)
        [d] = api.call(f"/v1/webhooks/{h['id']}/deliveries", token=admin)[1]
        assert (d["state"], d["attempts"], d["event"]) == ("delivered", 1, "command.final")
        assert api.call(f"/v1/webhooks/{h['id']}", "DELETE", token=admin)[0] == 200
        assert is_problem(api.call(f"/v1/webhooks/{h['id']}", "DELETE", token=admin), 404, "not-found")
        assert is_problem(api.call("/v1/webhooks/wh-x/deliveries", token=admin), 404, "not-found")
        trail = [e for e in api.acc.audit() if e["action"].startswith("webhook.")]
        assert {e["action"] for e in trail} == {"webhook.add", "webhook.remove"}
        assert all(h["secret"] not in json.dumps(e) for e in api.acc.audit())
    finally:
        api.close()
        rx.close()
