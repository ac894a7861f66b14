"""Campaigns and their per-device states, in the ledger's database (SQLite or PostgreSQL), so a
rollout survives a restart of the cloud side (host_tools/cloud/rollout.py runs them).

Tables (schema component "rollouts", version 1):
    ro_campaigns  id PRIMARY KEY, action, spec (JSON), cohorts (JSON: percent per stage), rate
                  (starts per minute), timeout_s, abort_share, min_finished, state, reason,
                  created_at, next_start_at
    ro_targets    (campaign, device) PRIMARY KEY, pos (the rollout order), state, reason,
                  started_at, finished_at
Every write is its own committed transaction (the Database's lock serialises threads).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from host_tools.cloud.ledger_db import Database
from host_tools.cloud.ledger_open import open_ledger

STORE_VERSION = 1

# campaign states: running and paused are live; the rest are final
RUNNING, PAUSED, DONE, HALTED, CANCELLED = "running", "paused", "done", "halted", "cancelled"
# target states: pending and started are live; the rest are final
PENDING, STARTED = "pending", "started"
SUCCEEDED, FAILED, TIMED_OUT, ABORTED, SKIPPED = "succeeded", "failed", "timed_out", "aborted", "skipped"
FAILURES = (FAILED, TIMED_OUT)   # what counts towards the abort threshold
FINAL_TARGET = (SUCCEEDED, FAILED, TIMED_OUT, ABORTED, SKIPPED)


def _schema() -> list[str]:
    return [
        """CREATE TABLE IF NOT EXISTS ro_campaigns (
            id TEXT PRIMARY KEY, action TEXT NOT NULL, spec TEXT NOT NULL, cohorts TEXT NOT NULL,
            rate DOUBLE PRECISION NOT NULL, timeout_s DOUBLE PRECISION NOT NULL,
            abort_share DOUBLE PRECISION NOT NULL, min_finished INTEGER NOT NULL, state TEXT NOT NULL,
            reason TEXT, created_at DOUBLE PRECISION NOT NULL, next_start_at DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS ro_targets (
            campaign TEXT NOT NULL, device TEXT NOT NULL, pos INTEGER NOT NULL, state TEXT NOT NULL,
            reason TEXT, started_at DOUBLE PRECISION, finished_at DOUBLE PRECISION,
            PRIMARY KEY (campaign, device))""",
        "CREATE INDEX IF NOT EXISTS ro_targets_device ON ro_targets (device)",   # a device's history
    ]


@dataclass
class Campaign:
    id: str
    action: str                 # the Action's name ("command", later "ota", "rekey")
    spec: dict                  # the action's parameters (JSON)
    cohorts: list[int]          # cumulative percent of the targets per stage, ending at 100
    rate: float                 # starts per minute at most
    timeout_s: float            # a started device not finished by then is timed_out
    abort_share: float          # halt once failures / finished reaches this (0 < share <= 1)
    min_finished: int           # ...and at least this many have finished
    state: str = RUNNING
    reason: str | None = None
    created_at: float = 0.0
    next_start_at: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)  # target states (filled by status reads)

    @property
    def final(self) -> bool:
        return self.state not in (RUNNING, PAUSED)


@dataclass
class Target:
    campaign: str
    device: str
    pos: int
    state: str = PENDING
    reason: str | None = None
    started_at: float | None = None
    finished_at: float | None = None


_C_COLS = ("id", "action", "spec", "cohorts", "rate", "timeout_s", "abort_share", "min_finished",
           "state", "reason", "created_at", "next_start_at")
_T_COLS = ("campaign", "device", "pos", "state", "reason", "started_at", "finished_at")


class RolloutStore:
    def __init__(self, db: Database, *, own: bool = False):
        self.db = db
        self._own = own
        db.ensure_schema("rollouts", _schema(), STORE_VERSION)

    @classmethod
    def open(cls, url: str, **kw: Any) -> "RolloutStore":
        return cls(open_ledger(url, **kw), own=True)

    def close(self) -> None:
        if self._own:
            self.db.close()

    # ---- campaigns -------------------------------------------------------------------------
    def create(self, c: Campaign, devices: list[str]) -> None:
        """The campaign and its targets in one transaction; KeyError if the id is taken."""
        db = self.db

        def run(cur: Any) -> None:
            cur.execute(db._sql("SELECT 1 FROM ro_campaigns WHERE id=?"), (c.id,))
            if cur.fetchone() is not None:
                raise KeyError(c.id)
            cur.execute(db._sql(f"INSERT INTO ro_campaigns ({','.join(_C_COLS)}) VALUES ({db._ph(len(_C_COLS))})"),
                        (c.id, c.action, json.dumps(c.spec), json.dumps(c.cohorts), c.rate, c.timeout_s,
                         c.abort_share, c.min_finished, c.state, c.reason, c.created_at, c.next_start_at))
            for i, d in enumerate(devices):
                cur.execute(db._sql(f"INSERT INTO ro_targets ({','.join(_T_COLS)}) VALUES ({db._ph(len(_T_COLS))})"),
                            (c.id, d, i, PENDING, None, None, None))
        db._write(run)

    @staticmethod
    def _campaign(row: tuple) -> Campaign:
        v = dict(zip(_C_COLS, row))
        v["spec"], v["cohorts"] = json.loads(v["spec"]), json.loads(v["cohorts"])
        return Campaign(**v)

    def campaign(self, cid: str) -> Campaign | None:
        rows = self.db._read(f"SELECT {','.join(_C_COLS)} FROM ro_campaigns WHERE id=?", (cid,))
        if not rows:
            return None
        c = self._campaign(rows[0])
        c.counts = self.counts(cid)
        return c

    def campaigns(self, live_only: bool = False) -> list[Campaign]:
        where = f" WHERE state IN ('{RUNNING}', '{PAUSED}')" if live_only else ""
        rows = self.db._read(f"SELECT {','.join(_C_COLS)} FROM ro_campaigns{where} ORDER BY created_at, id")
        out = [self._campaign(r) for r in rows]
        for c in out:
            c.counts = self.counts(c.id)
        return out

    def set_state(self, cid: str, state: str, reason: str | None = None, *, only_from: tuple[str, ...] = ()) -> bool:
        """Move a campaign to `state` (if it is in one of `only_from`, when given); True if it moved."""
        db = self.db
        cond = f" AND state IN ({db._ph(len(only_from))})" if only_from else ""

        def run(cur: Any) -> int:
            cur.execute(db._sql(f"UPDATE ro_campaigns SET state=?, reason=? WHERE id=?{cond}"),
                        (state, reason, cid, *only_from))
            return cur.rowcount
        return bool(db._write(run))

    def set_next_start(self, cid: str, at: float) -> None:
        self.db._write(lambda cur: cur.execute(self.db._sql("UPDATE ro_campaigns SET next_start_at=? WHERE id=?"),
                                               (at, cid)))

    # ---- targets ---------------------------------------------------------------------------
    def targets(self, cid: str) -> list[Target]:
        rows = self.db._read(f"SELECT {','.join(_T_COLS)} FROM ro_targets WHERE campaign=? ORDER BY pos", (cid,))
        return [Target(*r) for r in rows]

    def device_history(self, device: str, limit: int = 50) -> list[dict]:
        """The campaigns that named `device`, newest first: its state and reason in each, and the
        release (a firmware campaign's spec) or command it carried."""
        rows = self.db._read(
            "SELECT t.campaign, c.action, c.spec, t.state, t.reason, t.started_at, t.finished_at, c.created_at "
            "FROM ro_targets t JOIN ro_campaigns c ON c.id = t.campaign WHERE t.device=? "
            f"ORDER BY c.created_at DESC LIMIT {int(limit)}", (device,))
        out = []
        for cid, action, spec, state, reason, started, finished, created in rows:
            sp = json.loads(spec)
            out.append({"campaign": cid, "action": action, "what": sp.get("release") or sp.get("name"),
                        "version": sp.get("version"), "state": state, "reason": reason, "created_at": created,
                        "started_at": started, "finished_at": finished})
        return out

    def counts(self, cid: str) -> dict[str, int]:
        rows = self.db._read("SELECT state, COUNT(*) FROM ro_targets WHERE campaign=? GROUP BY state", (cid,))
        return {s: int(n) for s, n in rows}

    def move(self, cid: str, device: str, state: str, reason: str | None, at: float, *,
             only_from: tuple[str, ...]) -> bool:
        """One target to `state` if it is in `only_from` (a late outcome never rewrites a final one)."""
        db = self.db
        col = "started_at" if state == STARTED else "finished_at"

        def run(cur: Any) -> int:
            cur.execute(db._sql(f"UPDATE ro_targets SET state=?, reason=?, {col}=? WHERE campaign=? AND device=? "
                                f"AND state IN ({db._ph(len(only_from))})"),
                        (state, reason, at, cid, device, *only_from))
            return cur.rowcount
        return bool(db._write(run))
