"""Webhooks for cloud services (issue 13 §2): an event (a command reached its final state, an alert
was raised or resolved: host_tools/cloud/alerts.py) is POSTed to every subscribed URL, signed,
retried with back-off until the receiver answers 2xx, and every attempt recorded.

The deliveries are rows in the registry's database (schema component `webhooks`), written when the
event happens and sent by a Dispatcher: a receiver that is down gets its events when it is back
(within the back-off's span), a restart loses none, and several `serve` instances on one PostgreSQL
share the work without sending one twice (a delivery is claimed with a conditional UPDATE: a lease).

The request, after the Standard Webhooks convention (standardwebhooks.com), so receivers can use
its libraries:

    POST <url>   Content-Type: application/json
    webhook-id: d-...            the delivery's id: the same on every retry (deduplicate on it)
    webhook-timestamp: 1796280000
    webhook-signature: v1,<base64 HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")>
    {"type": "command.final", "at": 1796280000.1, "data": {...}}

The secret (`whsec_` + base64 of 32 random bytes) is shown once when the hook is made. It is
stored as it is, because signing needs it (as a device key is needed to sign a command).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Sequence

from host_tools.cloud.ledger_db import Database

log = logging.getLogger("edgepay.webhooks")

EVENTS = ("command.final", "alert.raised", "alert.resolved", "session.settled")
WEBHOOKS_VERSION = 1
# seconds before each retry: 8 attempts over ~7 hours, then the delivery is failed (kept, listed)
BACKOFF = (5, 30, 120, 600, 1800, 3600, 7200)
LEASE_S = 60          # a claimed delivery is another instance's again after this (a crash mid-send)
TIMEOUT_S = 10
MAX_BODY = 64 * 1024


class WebhookError(ValueError):
    """A bad URL, event or id: what is wrong, in words."""


@dataclass(frozen=True)
class Hook:
    id: str
    url: str
    events: tuple[str, ...]
    created_at: float


@dataclass(frozen=True)
class Delivery:
    id: str
    hook: str
    event: str
    body: str
    attempts: int
    state: str               # pending | delivered | failed
    next_at: float
    last_status: str | None
    last_error: str | None
    created_at: float
    done_at: float | None


def sign(secret: str, delivery_id: str, ts: int, body: str) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{delivery_id}.{ts}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def _schema(db: Database) -> list[str]:
    return [
        """CREATE TABLE IF NOT EXISTS wh_hooks (
            id TEXT PRIMARY KEY, url TEXT NOT NULL, events TEXT NOT NULL, secret TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS wh_deliveries (
            id TEXT PRIMARY KEY, hook TEXT NOT NULL, event TEXT NOT NULL, body TEXT NOT NULL,
            attempts INTEGER NOT NULL, state TEXT NOT NULL, next_at DOUBLE PRECISION NOT NULL,
            last_status TEXT, last_error TEXT, created_at DOUBLE PRECISION NOT NULL,
            done_at DOUBLE PRECISION)""",
        "CREATE INDEX IF NOT EXISTS wh_due ON wh_deliveries (state, next_at)",
    ]


_D_COLS = "id, hook, event, body, attempts, state, next_at, last_status, last_error, created_at, done_at"


class Webhooks:
    """The hooks and their deliveries on one database connection (threads share it: its lock)."""

    def __init__(self, db: Database, backoff: Sequence[float] = BACKOFF):
        self.db = db
        self.backoff = tuple(backoff)
        db.ensure_schema("webhooks", _schema(db), WEBHOOKS_VERSION)

    # ---- hooks ---------------------------------------------------------------------------
    def add(self, url: str, events: Sequence[str]) -> tuple[Hook, str]:
        """A new hook: (it, its secret, shown once)."""
        if not (url.startswith("https://") or url.startswith("http://")) or len(url) > 2048 or " " in url:
            raise WebhookError(f"bad url {url[:80]!r}: an http:// or https:// URL")
        bad = [e for e in events if e not in EVENTS]
        if not events or bad:
            raise WebhookError(f"unknown event {bad[0]!r}: one of {', '.join(EVENTS)}" if bad else
                               f"no events: name one of {', '.join(EVENTS)}")
        hook = Hook("wh-" + secrets.token_hex(6), url, tuple(dict.fromkeys(events)), time.time())
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        db = self.db
        db._write(lambda cur: cur.execute(db._sql("INSERT INTO wh_hooks (id, url, events, secret, created_at) "
                                                  "VALUES (?,?,?,?,?)"),
                                          (hook.id, url, json.dumps(list(hook.events)), secret, hook.created_at)))
        return hook, secret

    def hooks(self) -> list[Hook]:
        return [Hook(r[0], r[1], tuple(json.loads(r[2])), r[3])
                for r in self.db._read("SELECT id, url, events, created_at FROM wh_hooks ORDER BY created_at, id")]

    def remove(self, hook_id: str) -> None:
        """The hook; its pending deliveries are failed (kept, so what was not sent is on record)."""
        db, now = self.db, time.time()

        def run(cur: Any) -> int:
            cur.execute(db._sql("DELETE FROM wh_hooks WHERE id=?"), (hook_id,))
            n = cur.rowcount
            cur.execute(db._sql("UPDATE wh_deliveries SET state='failed', last_error='hook removed', done_at=? "
                                "WHERE hook=? AND state='pending'"), (now, hook_id))
            return n
        if db._write(run) != 1:
            raise WebhookError(f"no webhook {hook_id!r}")

    # ---- deliveries ------------------------------------------------------------------------
    def emit(self, event: str, data: Any) -> list[str]:
        """One delivery per hook subscribed to `event`, due now; their ids."""
        assert event in EVENTS, event
        now = time.time()
        body = json.dumps({"type": event, "at": round(now, 3), "data": data}, sort_keys=True, default=str)
        if len(body) > MAX_BODY:
            raise WebhookError(f"a {event} event of {len(body)} bytes: over {MAX_BODY}")
        targets = [h.id for h in self.hooks() if event in h.events]
        ids = ["d-" + secrets.token_hex(8) for _ in targets]
        db = self.db

        def run(cur: Any) -> None:
            for did, hid in zip(ids, targets):
                cur.execute(db._sql(f"INSERT INTO wh_deliveries ({_D_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"),
                            (did, hid, event, body, 0, "pending", now, None, None, now, None))
        if ids:
            db._write(run)
        return ids

    def deliveries(self, hook_id: str | None = None, limit: int = 100) -> list[Delivery]:
        where, args = ("WHERE hook=? ", (hook_id,)) if hook_id else ("", ())
        rows = self.db._read(f"SELECT {_D_COLS} FROM wh_deliveries {where}ORDER BY created_at DESC, id DESC LIMIT ?",
                             (*args, int(limit)))
        return [Delivery(*r) for r in rows]

    def claim(self, now: float, limit: int = 20) -> list[tuple[Delivery, str, str]]:
        """Due deliveries this caller now holds for LEASE_S, with their hook's url and secret."""
        db = self.db
        rows = db._read(f"SELECT {_D_COLS} FROM wh_deliveries WHERE state='pending' AND next_at <= ? "
                        "ORDER BY next_at LIMIT ?", (now, int(limit)))
        out = []
        for r in rows:
            d = Delivery(*r)

            def take(cur: Any, d: Delivery = d) -> int:   # another instance may have taken it since
                cur.execute(db._sql("UPDATE wh_deliveries SET next_at=? WHERE id=? AND state='pending' "
                                    "AND next_at=?"), (now + LEASE_S, d.id, d.next_at))
                return cur.rowcount
            if db._write(take) != 1:
                continue
            hook = db._read("SELECT url, secret FROM wh_hooks WHERE id=?", (d.hook,))
            if hook:
                out.append((d, hook[0][0], hook[0][1]))
        return out

    def finish(self, d: Delivery, status: str | None, error: str | None, ok: bool, now: float) -> str:
        """Record an attempt: delivered, pending again after the back-off, or failed; the state."""
        attempts = d.attempts + 1
        if ok:
            state, next_at, done = "delivered", d.next_at, now
        elif attempts > len(self.backoff):
            state, next_at, done = "failed", d.next_at, now
        else:
            state, next_at, done = "pending", now + self.backoff[attempts - 1], None
        db = self.db
        db._write(lambda cur: cur.execute(db._sql(
            "UPDATE wh_deliveries SET attempts=?, state=?, next_at=?, last_status=?, last_error=?, done_at=? "
            "WHERE id=?"), (attempts, state, next_at, status, error, done, d.id)))
        return state


class Dispatcher:
    """Sends due deliveries until `stop` is set (one thread; `serve` runs it with the api part)."""

    def __init__(self, hooks: Webhooks, poll_s: float = 1.0):
        self.hooks = hooks
        self.poll_s = poll_s

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                n = self.once()
            except Exception:  # noqa: BLE001 - a database hiccup: log, wait, go on
                log.exception("webhooks: dispatch failed")
                n = 0
            if not n:
                stop.wait(self.poll_s)

    def once(self, now: float | None = None) -> int:
        """Send what is due now; how many were tried."""
        batch = self.hooks.claim(time.time() if now is None else now)
        for d, url, secret in batch:
            ts = int(time.time())
            req = urllib.request.Request(url, data=d.body.encode(), method="POST", headers={
                "Content-Type": "application/json", "User-Agent": "edgepay-webhooks/1",
                "webhook-id": d.id, "webhook-timestamp": str(ts), "webhook-signature": sign(secret, d.id, ts, d.body)})
            status = error = None
            try:
                with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
                    status = str(r.status)
            except urllib.error.HTTPError as e:
                status, error = str(e.code), f"HTTP {e.code}"
            except (urllib.error.URLError, OSError, ValueError) as e:
                error = str(getattr(e, "reason", e))[:200]
            ok = status is not None and status.startswith("2")
            state = self.hooks.finish(d, status, error, ok, time.time())
            if not ok:
                log.warning("webhook %s to %s: %s (%s)", d.id, url, error or status, state)
        return len(batch)
