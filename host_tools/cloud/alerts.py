"""Alerts (issue 13 §4, §2 "alert raised" webhook): rules evaluated every `every_s`, each with a
start delay and a resolve delay, so a condition that comes and goes raises nothing and an alert
that is raised does not flap: it is raised once its condition has held for start_s, and resolved
once the condition has been clear for resolve_s.

    offline             presence says an active device is offline (since when it went: presence.py)
    backlog             the device's heartbeats report jdepth > 0 continuously (since the first
                        heartbeat after its last jdepth 0: host_tools/cloud/heartbeats.py)
    charge_mismatch     a session-service flag charge_mismatch or fee_mismatch in the last
                        flag_window_s (session_store.py svc_flags)
    reauth_refused      a flag reauth_refused or offline_refused in the last flag_window_s
    update_rolled_back  the device's latest firmware-campaign state is rolled_back (ota_action.py)
    offline_budget      the device's last heartbeat reports an offline budget used (SPEC §4 18
                        off_amt, 19 off_n: charged and opened offline, not yet re-authorised) of
                        at least offline_budget_amt_ratio (0.8) of the total_cap or
                        offline_budget_n_ratio (0.8) of the max_sessions of the policy the cloud
                        last sent it (session_store.py svc_policies); no policy known, no alert

Alerts are rows (alerts: id, device, kind, raised_at, resolved_at, detail) in the registry's
database (schema component `alerts`) with a unique index on the open alert of a (device, kind):
several `serve` instances evaluating at once raise it once, and resolve it once (a conditional
UPDATE); only the instance whose write took sends the `alert.raised` / `alert.resolved` webhook.
When each condition was first seen (and first seen clear) is kept in alert_watch, shared too.
"""
from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from host_tools.cloud.heartbeats import Heartbeats, offline_budget
from host_tools.cloud.ledger_db import Database, where_prefixes
from host_tools.cloud.ota_action import OtaProgress
from host_tools.cloud.presence import Presence
from host_tools.cloud.session_store import SessionStore

log = logging.getLogger("edgepay.alerts")

ALERTS_VERSION = 1
KINDS = ("offline", "backlog", "charge_mismatch", "reauth_refused", "update_rolled_back", "offline_budget")
RATIOS = {"offline_budget_amt_ratio": "budget_amt_ratio", "offline_budget_n_ratio": "budget_n_ratio"}  # [alerts] key -> Rules
FLAG_KINDS = {"charge_mismatch": ("charge_mismatch", "fee_mismatch"),
              "reauth_refused": ("reauth_refused", "offline_refused")}
# (start_s, resolve_s) by kind
DELAYS: dict[str, tuple[float, float]] = {"offline": (600, 120), "backlog": (900, 300), "charge_mismatch": (0, 0),
                                          "reauth_refused": (0, 0), "update_rolled_back": (0, 0),
                                          "offline_budget": (0, 0)}


class AlertError(ValueError):
    """A bad rule setting or query: what is wrong, in words."""


@dataclass
class Rules:
    delays: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DELAYS))
    flag_window_s: float = 86400.0
    every_s: float = 30.0
    budget_amt_ratio: float = 0.8   # offline_budget: off_amt >= this share of the policy's total_cap
    budget_n_ratio: float = 0.8     # ... or off_n >= this share of its max_sessions

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "Rules":
        """[alerts] keys: every_s, flag_window_s, <kind>_start_s, <kind>_resolve_s (seconds >= 0),
        offline_budget_amt_ratio and offline_budget_n_ratio (a fraction above 0, at most 1)."""
        r = cls()
        for key, v in cfg.items():
            if key in RATIOS:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                    raise AlertError(f"[alerts] {key} is a fraction of the policy's cap: above 0, at most 1")
                setattr(r, RATIOS[key], float(v))
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise AlertError(f"[alerts] {key} is a number of seconds, 0 or more")
            if key in ("every_s", "flag_window_s"):
                if v <= 0:
                    raise AlertError(f"[alerts] {key} is a number of seconds above 0")
                setattr(r, key, float(v))
                continue
            kind, which = next(((k, w) for k in KINDS for w in ("start_s", "resolve_s") if key == f"{k}_{w}"),
                               (None, None))
            if kind is None:
                raise AlertError(f"[alerts] unknown key {key!r}: every_s, flag_window_s, {', '.join(RATIOS)} or "
                                 f"<kind>_start_s / <kind>_resolve_s, kind one of {', '.join(KINDS)}")
            s, z = r.delays[kind]
            r.delays[kind] = (float(v), z) if which == "start_s" else (s, float(v))
        return r


@dataclass(frozen=True)
class Alert:
    id: str
    device: str
    kind: str
    raised_at: float
    resolved_at: float | None
    detail: dict

    def to_json(self) -> dict:
        return {"id": self.id, "device": self.device, "kind": self.kind, "raised_at": self.raised_at,
                "resolved_at": self.resolved_at, "state": "open" if self.resolved_at is None else "resolved",
                "detail": self.detail}


def _schema(db: Database) -> list[str]:
    return [
        """CREATE TABLE IF NOT EXISTS alerts (
            id TEXT PRIMARY KEY, device TEXT NOT NULL, kind TEXT NOT NULL, raised_at DOUBLE PRECISION NOT NULL,
            resolved_at DOUBLE PRECISION, detail TEXT NOT NULL)""",
        # one open alert per device and kind, whoever raises it
        "CREATE UNIQUE INDEX IF NOT EXISTS alerts_open ON alerts (device, kind) WHERE resolved_at IS NULL",
        "CREATE INDEX IF NOT EXISTS alerts_device ON alerts (device, id)",
        """CREATE TABLE IF NOT EXISTS alert_watch (
            device TEXT NOT NULL, kind TEXT NOT NULL, cond_since DOUBLE PRECISION,
            clear_since DOUBLE PRECISION, PRIMARY KEY (device, kind))""",
    ]


_COLS = "id, device, kind, raised_at, resolved_at, detail"


def _alert(r: tuple) -> Alert:
    return Alert(r[0], r[1], r[2], float(r[3]), None if r[4] is None else float(r[4]), json.loads(r[5]))


class Alerts:
    """The alert rows and the watch (when each condition was first seen) on one connection."""

    def __init__(self, db: Database):
        self.db = db
        db.ensure_schema("alerts", _schema(db), ALERTS_VERSION)

    def list(self, *, state: str | None = None, device: str | None = None, kind: str | None = None,
             prefixes: tuple[str, ...] | None = None, before: str | None = None, limit: int = 100) -> list[Alert]:
        """Newest first (ids are time-ordered), paged by `before` (the last id of a page)."""
        where: list[str] = ["1=1"]
        args: list[Any] = []
        if state == "open":
            where.append("resolved_at IS NULL")
        elif state == "resolved":
            where.append("resolved_at IS NOT NULL")
        for col, v in (("device", device), ("kind", kind)):
            if v is not None:
                where.append(f"{col} = ?")
                args.append(v)
        if before is not None:
            where.append("id < ?")
            args.append(before)
        if not where_prefixes(where, args, "device", prefixes):
            return []
        rows = self.db._read(f"SELECT {_COLS} FROM alerts WHERE " + " AND ".join(where) + " ORDER BY id DESC LIMIT ?",
                             (*args, int(limit)))
        return [_alert(r) for r in rows]

    def open_now(self) -> dict[tuple[str, str], Alert]:
        return {(a.device, a.kind): a for a in
                (_alert(r) for r in self.db._read(f"SELECT {_COLS} FROM alerts WHERE resolved_at IS NULL"))}

    def watches(self) -> dict[tuple[str, str], tuple[float | None, float | None]]:
        return {(r[0], r[1]): (r[2], r[3]) for r in
                self.db._read("SELECT device, kind, cond_since, clear_since FROM alert_watch")}

    def raise_(self, device: str, kind: str, at: float, detail: dict) -> Alert | None:
        """The new alert, or None when (device, kind) already has an open one (another instance's)."""
        a = Alert(f"al-{int(at * 1000):014d}-{secrets.token_hex(4)}", device, kind, at, None, detail)
        db = self.db

        def run(cur: Any) -> int:
            cur.execute(db._sql(f"INSERT INTO alerts ({_COLS}) VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING"),
                        (a.id, device, kind, at, None, json.dumps(detail, sort_keys=True, default=str)))
            return cur.rowcount
        return a if db._write(run) == 1 else None

    def resolve(self, a: Alert, at: float) -> Alert | None:
        """The alert resolved at `at`, or None when another instance resolved it first."""
        db = self.db

        def run(cur: Any) -> int:
            cur.execute(db._sql("UPDATE alerts SET resolved_at=? WHERE id=? AND resolved_at IS NULL"), (at, a.id))
            n = cur.rowcount
            cur.execute(db._sql("DELETE FROM alert_watch WHERE device=? AND kind=?"), (a.device, a.kind))
            return n
        return Alert(a.id, a.device, a.kind, a.raised_at, at, a.detail) if db._write(run) == 1 else None

    def watch(self, device: str, kind: str, *, cond: float | None = None, clear: float | None = None,
              unclear: bool = False, drop: bool = False) -> None:
        """Record when a condition was first seen (kept if known), first seen clear (kept if known),
        seen again (unclear) or is gone before anything was raised (drop)."""
        db = self.db

        def run(cur: Any) -> None:
            if drop:
                cur.execute(db._sql("DELETE FROM alert_watch WHERE device=? AND kind=?"), (device, kind))
            elif unclear:
                cur.execute(db._sql("UPDATE alert_watch SET clear_since=NULL WHERE device=? AND kind=?"), (device, kind))
            elif clear is not None:
                cur.execute(db._sql("INSERT INTO alert_watch (device, kind, cond_since, clear_since) VALUES (?,?,?,?) "
                                    "ON CONFLICT (device, kind) DO UPDATE SET clear_since=excluded.clear_since "
                                    "WHERE alert_watch.clear_since IS NULL"), (device, kind, None, clear))
            else:
                cur.execute(db._sql("INSERT INTO alert_watch (device, kind, cond_since, clear_since) VALUES (?,?,?,?) "
                                    "ON CONFLICT (device, kind) DO NOTHING"), (device, kind, cond, None))
        db._write(run)


Conditions = dict[str, dict[str, tuple[float | None, dict]]]   # kind -> device -> (onset or None, detail)


class Sources:
    """Where the rules read their conditions: the registry's database (presence, heartbeats), and
    when given the ledger's (the session service's flags) and the rollouts' (campaign states)."""

    def __init__(self, registry_db: Database, ledger_db: Database | None = None, rollouts_db: Database | None = None):
        self.db = registry_db
        Presence(registry_db)
        Heartbeats(registry_db)
        self.ledger_db = ledger_db
        self.rollouts_db = rollouts_db
        self.store = SessionStore(ledger_db) if ledger_db is not None else None  # flags, policies (its tables)
        if rollouts_db is not None:
            OtaProgress(rollouts_db)

    def conditions(self, now: float, rules: Rules) -> Conditions:
        out: Conditions = {k: {} for k in KINDS}
        # active devices only: a revoked or decommissioned one is expected to be gone
        for dev, since in self.db._read("SELECT p.device, p.since FROM presence p JOIN devices d ON "
                                        "d.device_id = p.device WHERE p.online = ? AND d.status = 'active'", (False,)):
            out["offline"][dev] = (float(since), {"since": float(since)})
        # backlog: devices whose last heartbeat has jdepth > 0, since the first heartbeat after
        # their last jdepth 0 (full-resolution rows; older ones are folded, so at most keep_s back)
        for dev, jd, onset in self.db._read(
                "SELECT l.device, l.jdepth, (SELECT MIN(r.at) FROM hb_raw r WHERE r.device = l.device AND r.at > "
                "COALESCE((SELECT MAX(z.at) FROM hb_raw z WHERE z.device = l.device AND z.jdepth = 0), -1)) "
                "FROM hb_last l JOIN devices d ON d.device_id = l.device WHERE l.jdepth > 0 AND d.status = 'active'"):
            out["backlog"][dev] = (float(onset) if onset is not None else None, {"jdepth": int(jd)})
        if self.ledger_db is not None and self.store is not None:
            db = self.ledger_db
            names = [n for ks in FLAG_KINDS.values() for n in ks]
            rows = db._read(f"SELECT device, kind, sid, detail, at FROM svc_flags WHERE at >= ? AND kind IN "
                            f"({','.join('?' * len(names))}) ORDER BY at", (now - rules.flag_window_s, *names))
            for dev, flag, sid, detail, at in rows:
                kind = next(k for k, ks in FLAG_KINDS.items() if flag in ks)
                first = out[kind].get(dev)
                n = first[1]["n"] + 1 if first else 1
                out[kind][dev] = (first[0] if first else float(at),
                                  {"n": n, "flag": flag, "sid": sid, "detail": detail})
            # offline budget: only where the cloud knows the policy it sent (the caps)
            policies = {d: a for d, (a, _) in self.store.policies().items()}
            for dev, amt, n in self.db._read(
                    "SELECT l.device, l.off_amt, l.off_n FROM hb_last l JOIN devices d ON d.device_id = l.device "
                    "WHERE (l.off_amt > 0 OR l.off_n > 0) AND d.status = 'active'"):
                pol = policies.get(dev)
                if pol is None:
                    continue
                amt, n = int(amt), int(n)
                cap, most = int(pol.get(4) or 0), int(pol.get(5) or 0)
                if (amt > 0 and amt >= rules.budget_amt_ratio * cap) or (n > 0 and n >= rules.budget_n_ratio * most):
                    out["offline_budget"][dev] = (None, offline_budget(amt, n, pol))
        if self.rollouts_db is not None:
            for dev, cid, why, at in self.rollouts_db._read(
                    "SELECT o.device, o.campaign, o.why, o.at FROM ota_progress o WHERE o.st = 'rolled_back' AND "
                    "o.at = (SELECT MAX(x.at) FROM ota_progress x WHERE x.device = o.device)"):
                out["update_rolled_back"][dev] = (float(at), {"campaign": cid, "why": why})
        return out


class Evaluator:
    """One pass of every rule at `now` (evaluate), or a thread of them every rules.every_s (run).
    Raised and resolved alerts are emitted as webhooks when `webhooks` is given."""

    def __init__(self, alerts: Alerts, sources: Sources, rules: Rules | None = None, webhooks: Any = None,
                 clock: Callable[[], float] = time.time):
        self.alerts = alerts
        self.sources = sources
        self.rules = rules or Rules()
        self.webhooks = webhooks
        self.clock = clock

    def evaluate(self, now: float | None = None) -> tuple[list[Alert], list[Alert]]:
        """(raised, resolved) by this pass."""
        now = self.clock() if now is None else now
        conds = self.sources.conditions(now, self.rules)
        open_ = self.alerts.open_now()
        watch = self.alerts.watches()
        raised: list[Alert] = []
        resolved: list[Alert] = []
        for kind, devs in conds.items():
            start_s, _ = self.rules.delays[kind]
            for dev, (onset, detail) in devs.items():
                key = (dev, kind)
                w = watch.get(key)
                if key in open_:
                    if w is not None and w[1] is not None:
                        self.alerts.watch(dev, kind, unclear=True)   # back before the resolve delay
                    continue
                seen = w[0] if w is not None and w[0] is not None else None
                if w is None:
                    self.alerts.watch(dev, kind, cond=now)
                since = onset if onset is not None else (seen if seen is not None else now)
                if now - since >= start_s:
                    a = self.alerts.raise_(dev, kind, now, detail)
                    if a is not None:
                        raised.append(a)
        for key, a in open_.items():
            dev, kind = key
            if dev in conds.get(kind, {}):
                continue
            w = watch.get(key)
            clear = w[1] if w is not None and w[1] is not None else None
            if clear is None:
                self.alerts.watch(dev, kind, clear=now)
                clear = now
            if now - clear >= self.rules.delays[kind][1]:
                r = self.alerts.resolve(a, now)
                if r is not None:
                    resolved.append(r)
        for key in watch:   # a condition gone before it was raised starts again from nothing
            if key not in open_ and key[0] not in conds.get(key[1], {}):
                self.alerts.watch(*key, drop=True)
        for event, batch in (("alert.raised", raised), ("alert.resolved", resolved)):
            for a in batch:
                log.info("%s: %s %s %s", event, a.device, a.kind, a.id)
                if self.webhooks is not None:
                    try:
                        self.webhooks.emit(event, a.to_json())
                    except Exception:  # noqa: BLE001 - the alert is recorded; its event is logged lost
                        log.exception("webhooks: %s of %s not recorded", event, a.id)
        return raised, resolved

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.evaluate()
            except Exception:  # noqa: BLE001 - a database hiccup: the next turn tries again
                log.exception("alerts: evaluation failed")
            stop.wait(self.rules.every_s)
