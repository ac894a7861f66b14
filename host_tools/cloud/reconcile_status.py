"""Where each device of a site stands with its money (issue 13 §4, the site view's
"reconciliation status"), from what the cloud already holds: no device export needed.

A device is
    mismatch    the ledger and the device disagree: its last journal export did not reconcile
                (`POST /v1/devices/{id}/reconcile`, kept in `recon_checks`), or records it signed
                sit in quarantine (authenticated, never committed: SPEC §6)
    flagged     the ledger and the payment provider may disagree: the session service raised a
                flag on one of its sessions (charge or fee mismatch, a refused re-authorisation...)
    pending     not yet settled: its last heartbeat reports records it holds unacknowledged (the
                ledger lags its journal), or closed sessions wait to be charged
    unknown     it never sent a heartbeat, so the cloud cannot tell what it still holds
    reconciled  none of the above: its journal is drained into the ledger, nothing is flagged
in that order (the first that applies). A re-provisioned device's fresh board keeps its records in
a chain of its own (DEVICE~R, chains.py): they count as the device's. Every count is read with one grouped query per table
over the site's devices (a site of 10,000 devices is a handful of queries, not 10,000).

The export checks live in the ledger's database (component `reconcile`, version 1):
    recon_checks  device PRIMARY KEY, at, ok, missing, extra, mismatched, journal_records
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from host_tools.cloud.chains import device_of, epoch_of
from host_tools.cloud.ledger_db import Database, where_prefixes

RECONCILE_VERSION = 1
STATUSES = ("mismatch", "flagged", "pending", "unknown", "reconciled")


class ExportChecks:
    """The last journal-export reconciliation of each device."""

    def __init__(self, db: Database):
        self.db = db
        db.ensure_schema("reconcile", [
            f"""CREATE TABLE IF NOT EXISTS recon_checks (
                device TEXT PRIMARY KEY, at {db.bigint} NOT NULL, ok INTEGER NOT NULL,
                missing {db.bigint} NOT NULL, extra {db.bigint} NOT NULL, mismatched {db.bigint} NOT NULL,
                journal_records {db.bigint} NOT NULL)"""], RECONCILE_VERSION)

    def record(self, device: str, rec: Any, journal_records: int, at: float | None = None) -> None:
        row = (device, int(at if at is not None else time.time()), 1 if rec.ok else 0, len(rec.missing),
               len(rec.extra), len(rec.mismatched), int(journal_records))

        def run(cur: Any) -> None:
            cur.execute(self.db._sql("DELETE FROM recon_checks WHERE device=?"), (device,))
            cur.execute(self.db._sql("INSERT INTO recon_checks (device, at, ok, missing, extra, mismatched, "
                                     "journal_records) VALUES (?,?,?,?,?,?,?)"), row)
        self.db._write(run)

    def by_device(self, prefixes: Sequence[str] | None) -> dict[str, dict]:
        """The last check of each device; a device's chains (DEVICE~R, checked one by one) as one:
        ok only if each is, the counts summed, the time the latest."""
        out: dict[str, dict] = {}
        for c, at, ok, mi, ex, mm, n in _grouped(self.db, "SELECT device, at, ok, missing, extra, mismatched, "
                                                  "journal_records FROM recon_checks", prefixes):
            d = out.setdefault(device_of(c), {"at": 0, "ok": True, "missing": 0, "extra": 0, "mismatched": 0,
                                               "journal_records": 0})
            d["at"], d["ok"] = max(d["at"], int(at)), d["ok"] and bool(ok)
            for k, v in (("missing", mi), ("extra", ex), ("mismatched", mm), ("journal_records", n)):
                d[k] += int(v)
        return out


def _grouped(db: Database, select: str, prefixes: Sequence[str] | None, group: str = "",
             where: tuple[str, ...] = ()) -> list[tuple]:
    """`select` over the rows whose device starts with one of `prefixes` (None: every device)."""
    w, args = list(where), []
    if not where_prefixes(w, args, "device", prefixes):
        return []
    return db._read(select + (" WHERE " + " AND ".join(w) if w else "") + group, tuple(args))


def _by_device(rows: list[tuple]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c, n in rows:
        out[device_of(c)] = out.get(device_of(c), 0) + int(n)
    return out


def site_status(devices: Sequence[str], ledger: Database, store_db: Database | None,
                heartbeats_db: Database | None, checks: ExportChecks | None,
                prefixes: Sequence[str] | None) -> list[dict]:
    """One row per device of `devices` (the site's, in the order given): its status, why, and the
    figures behind it. ledger: the ledger's database (records, heads, quarantine, sessions);
    store_db: the session service's (svc_flags, svc_pending; None: none kept); heartbeats_db: the
    registry's, where hb_last is (None: no heartbeats kept, every device is unknown)."""
    # a re-provisioned device's fresh board has a chain of its own, DEVICE~R (chains.py): its
    # counts add to the device's, and its head is the newest chain's
    heads: dict[str, tuple[int, int]] = {}
    for c, s in _grouped(ledger, "SELECT device, seq FROM heads", prefixes, where=("seq >= 0",)):
        d, e = device_of(c), epoch_of(c) or 0
        if d not in heads or e > heads[d][0]:
            heads[d] = (e, int(s))
    records = _by_device(_grouped(ledger, "SELECT device, COUNT(*) FROM records", prefixes, " GROUP BY device"))
    quarantined = _by_device(_grouped(ledger, "SELECT device, COUNT(*) FROM quarantine", prefixes, " GROUP BY device"))
    open_ = _by_device(_grouped(ledger, "SELECT device, COUNT(*) FROM sessions", prefixes, " GROUP BY device",
                                where=("state = 'open'",)))
    flags: dict[str, dict[str, int]] = {}
    charging: dict[str, int] = {}
    if store_db is not None:
        for c, kind, n in _grouped(store_db, "SELECT device, kind, COUNT(*) FROM svc_flags", prefixes,
                                   " GROUP BY device, kind"):
            f = flags.setdefault(device_of(c), {})
            f[kind] = f.get(kind, 0) + int(n)
        charging = _by_device(_grouped(store_db, "SELECT device, COUNT(*) FROM svc_pending", prefixes,
                                       " GROUP BY device"))
    hb = {}
    if heartbeats_db is not None:
        hb = {d: (int(at), None if j is None else int(j))
              for d, at, j in _grouped(heartbeats_db, "SELECT device, at, jdepth FROM hb_last", prefixes)}
    exports = checks.by_device(prefixes) if checks is not None else {}
    out = []
    for d in devices:
        ex, q, fl = exports.get(d), int(quarantined.get(d, 0)), flags.get(d, {})
        at, jdepth = hb.get(d, (None, None))
        waiting = int(charging.get(d, 0))
        if ex is not None and not ex["ok"] or q:
            why = []
            if ex is not None and not ex["ok"]:
                why.append(f"journal export: {ex['missing']} missing, {ex['mismatched']} with other bytes, "
                           f"{ex['extra']} extra")
            if q:
                why.append(f"{q} record(s) in quarantine")
            status = "mismatch"
        elif fl:
            status, why = "flagged", [", ".join(f"{k} x{n}" for k, n in sorted(fl.items()))]
        elif jdepth or waiting:
            status, why = "pending", []
            if jdepth:
                why.append(f"{jdepth} record(s) not yet acknowledged at its last heartbeat")
            if waiting:
                why.append(f"{waiting} closed session(s) waiting to be charged")
        elif at is None:
            status, why = "unknown", ["no heartbeat yet: what it holds is not known"]
        else:
            status, why = "reconciled", []
        out.append({"device": d, "status": status, "why": "; ".join(why), "records": int(records.get(d, 0)),
                    "last_seq": heads[d][1] if d in heads else None, "open_sessions": int(open_.get(d, 0)), "jdepth": jdepth,
                    "heartbeat_at": at, "quarantined": q, "flags": fl, "charging": waiting, "export": ex})
    return out


def totals(rows: Sequence[dict]) -> dict[str, int]:
    t = {s: 0 for s in STATUSES}
    for r in rows:
        t[r["status"]] += 1
    return {"devices": len(rows), **t}
