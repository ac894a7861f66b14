"""The session service's durable state, in the ledger's database (SQLite or PostgreSQL).

    store = SessionStore.open("sqlite:///var/lib/edgepay/ledger.db")   # or "postgresql://..."
    svc = SessionService(registry, provider, BrokerSettings(host, port, user, pw), store=store)

The store rides on a `Database` (host_tools/cloud/ledger_db.py: a ledger backend), so it has the
same dialects, locking and schema versioning as the ledger; `SessionStore(ledger)` shares an open
ledger's connection, `SessionStore.open(url)` opens its own. Every write is its own committed
transaction, made before the service answers (or after the provider call it records), so a
service stopped at any point and started again on the same database goes on where it was: the
provider's orders are idempotent by order number (`device:sid`), so a decision re-run after a
crash finds the order the lost one made.

Tables (schema component "sessions", version 1):
    svc_bindings  ident PRIMARY KEY, account            plate / QR / tag -> pay-after account
    svc_tariffs   device PRIMARY KEY, args (JSON pairs), sent_at: the tariff each device was sent
    svc_policies  device PRIMARY KEY, args (JSON pairs), sent_at: the offline risk policy (set_policy)
                  each device was last sent, for its offline budget (alerts.py offline_budget)
    svc_limits    device PRIMARY KEY, amount            per-device order limits
    svc_sessions  (device, sid) PRIMARY KEY, every SessionState field (limit is `lim`)
    svc_answers   (device, seq) PRIMARY KEY, digest, name, args, at: answered auth_req (idempotency)
    svc_pending   (device, sid) PRIMARY KEY, rec (JSON): closed sessions still to be charged
    svc_items     item PRIMARY KEY, device, sid          rented item tag -> its open rental
    svc_links     (device, sid) PRIMARY KEY, rental_device, rental_sid: a return at another station
    svc_flags     (device, sid, kind) PRIMARY KEY, detail, amounts, at: recorded once
    svc_claims    (device, seq) PRIMARY KEY, instance, at: which instance answers an auth_req
                  (instances that each receive every request: SessionService(instance=...))
    svc_boards    (device, epoch) PRIMARY KEY, chain, at: the board that holds a re-provisioned
                  device's id since key version `epoch` (R), judged once (chains.board_chain): its
                  requests and sessions are keyed by `chain` (DEVICE, or DEVICE~R for a fresh board)
                  (version 2; a version-1 database gets the table at its next open)
Money columns are integers (BIGINT on PostgreSQL), never floats. The `device` of a session, an
answer, a claim, a settlement, an item, a link or a flag is its chain: the device id, or DEVICE~R
for a fresh board after a re-provisioning (svc_boards; SPEC §6); of a tariff, policy or limit, the
device id.
"""
from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import Any

from host_tools.cloud.ledger_db import Database
from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.session_model import CloseRecord, Flag, SessionState

STORE_VERSION = 2   # 2: svc_boards

# SessionState field -> column ("limit" is an SQL keyword)
_SESSION_FIELDS = tuple(f.name for f in fields(SessionState))
_SESSION_COLS = tuple("lim" if f == "limit" else f for f in _SESSION_FIELDS)
_FLAG_FIELDS = tuple(f.name for f in fields(Flag))
_INTS = {"t0", "limit", "qr_amount", "device_amount", "cloud_amount", "charged", "answers"}


def _schema(blob: str, bigint: str) -> list[str]:
    return [
        "CREATE TABLE IF NOT EXISTS svc_bindings (ident TEXT PRIMARY KEY, account TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS svc_tariffs (device TEXT PRIMARY KEY, args TEXT NOT NULL, "
        "sent_at DOUBLE PRECISION NOT NULL)",
        "CREATE TABLE IF NOT EXISTS svc_policies (device TEXT PRIMARY KEY, args TEXT NOT NULL, "
        "sent_at DOUBLE PRECISION NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS svc_limits (device TEXT PRIMARY KEY, amount {bigint} NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS svc_sessions (
            device TEXT NOT NULL, sid TEXT NOT NULL, kind TEXT NOT NULL, payer TEXT, account TEXT,
            order_no TEXT, t0 {bigint}, status TEXT NOT NULL, granted BOOLEAN, lim {bigint}, cur TEXT,
            qr_amount {bigint}, device_amount {bigint}, cloud_amount {bigint}, charged {bigint},
            closed BOOLEAN NOT NULL, last_deny_at DOUBLE PRECISION, answers {bigint} NOT NULL,
            PRIMARY KEY (device, sid))""",
        f"""CREATE TABLE IF NOT EXISTS svc_answers (
            device TEXT NOT NULL, seq {bigint} NOT NULL, digest {blob} NOT NULL, name TEXT NOT NULL,
            args TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, PRIMARY KEY (device, seq))""",
        "CREATE TABLE IF NOT EXISTS svc_pending (device TEXT NOT NULL, sid TEXT NOT NULL, rec TEXT NOT NULL, "
        "PRIMARY KEY (device, sid))",
        "CREATE TABLE IF NOT EXISTS svc_items (item TEXT PRIMARY KEY, device TEXT NOT NULL, sid TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS svc_links (device TEXT NOT NULL, sid TEXT NOT NULL, "
        "rental_device TEXT NOT NULL, rental_sid TEXT NOT NULL, PRIMARY KEY (device, sid))",
        f"""CREATE TABLE IF NOT EXISTS svc_flags (
            device TEXT NOT NULL, sid TEXT NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL,
            order_no TEXT, device_amount {bigint}, cloud_amount {bigint}, charged {bigint}, cur TEXT,
            at DOUBLE PRECISION NOT NULL, PRIMARY KEY (device, sid, kind))""",
        f"""CREATE TABLE IF NOT EXISTS svc_claims (
            device TEXT NOT NULL, seq {bigint} NOT NULL, instance TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL, PRIMARY KEY (device, seq))""",
        f"""CREATE TABLE IF NOT EXISTS svc_boards (
            device TEXT NOT NULL, epoch {bigint} NOT NULL, chain TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL, PRIMARY KEY (device, epoch))""",
    ]


def _pairs(d: dict) -> str:
    """A dict with int keys (tariff, command args) as JSON that keeps the keys ints."""
    return json.dumps(sorted(d.items()))


def _unpairs(text: str) -> dict:
    return {k: v for k, v in json.loads(text)}


def _int(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, float):
        raise TypeError(f"a float in the session store: {v!r}")
    return int(v)


class SessionStore:
    """Durable state of a SessionService; see the module doc. Thread-safe (the Database's lock)."""

    def __init__(self, db: Database, *, own: bool = False):
        self.db = db
        self._own = own
        db.ensure_schema("sessions", _schema(db.blob, db.bigint), STORE_VERSION)

    @classmethod
    def open(cls, url: str, **kw: Any) -> "SessionStore":
        """A store on its own connection to the ledger database at `url` (open_ledger's forms)."""
        return cls(open_ledger(url, **kw), own=True)

    @classmethod
    def memory(cls) -> "SessionStore":
        """A private in-memory SQLite store: the state lives as long as the process (the default)."""
        return cls.open(":memory:")

    def close(self) -> None:
        if self._own:
            self.db.close()

    # ---- helpers ---------------------------------------------------------------------------
    def _upsert(self, table: str, cols: tuple[str, ...], key: tuple[str, ...], values: tuple) -> None:
        rest = [c for c in cols if c not in key]
        sets = ", ".join(f"{c}=excluded.{c}" for c in rest)
        sql = (f"INSERT INTO {table} ({','.join(cols)}) VALUES ({self.db._ph(len(cols))}) "
               f"ON CONFLICT ({','.join(key)}) " + (f"DO UPDATE SET {sets}" if rest else "DO NOTHING"))
        self.db._write(lambda cur: cur.execute(self.db._sql(sql), values))

    def _delete(self, table: str, where: str, args: tuple) -> None:
        self.db._write(lambda cur: cur.execute(self.db._sql(f"DELETE FROM {table} WHERE {where}"), args))

    # ---- configuration ---------------------------------------------------------------------
    def bindings(self) -> dict[str, str]:
        return dict(self.db._read("SELECT ident, account FROM svc_bindings"))

    def binding(self, ident: str) -> str | None:
        rows = self.db._read("SELECT account FROM svc_bindings WHERE ident=?", (ident,))
        return rows[0][0] if rows else None

    def set_binding(self, ident: str, account: str | None) -> None:
        if account is None:
            self._delete("svc_bindings", "ident=?", (ident,))
        else:
            self._upsert("svc_bindings", ("ident", "account"), ("ident",), (ident, account))

    def tariffs(self) -> dict[str, tuple[dict, float]]:
        return {d: (_unpairs(a), float(t)) for d, a, t in
                self.db._read("SELECT device, args, sent_at FROM svc_tariffs")}

    def tariff(self, device: str) -> tuple[dict, float] | None:
        rows = self.db._read("SELECT args, sent_at FROM svc_tariffs WHERE device=?", (device,))
        return (_unpairs(rows[0][0]), float(rows[0][1])) if rows else None

    def save_tariff(self, device: str, args: dict, sent_at: float) -> None:
        self._upsert("svc_tariffs", ("device", "args", "sent_at"), ("device",), (device, _pairs(args), sent_at))

    def policies(self) -> dict[str, tuple[dict, float]]:
        """device -> (the set_policy args last sent, when): SPEC §4 keys 1 version ... 6 max_duration_s."""
        return {d: (_unpairs(a), float(t)) for d, a, t in
                self.db._read("SELECT device, args, sent_at FROM svc_policies")}

    def policy(self, device: str) -> tuple[dict, float] | None:
        rows = self.db._read("SELECT args, sent_at FROM svc_policies WHERE device=?", (device,))
        return (_unpairs(rows[0][0]), float(rows[0][1])) if rows else None

    def save_policy(self, device: str, args: dict, sent_at: float) -> None:
        self._upsert("svc_policies", ("device", "args", "sent_at"), ("device",), (device, _pairs(args), sent_at))

    def limits(self) -> dict[str, int]:
        return {d: int(n) for d, n in self.db._read("SELECT device, amount FROM svc_limits")}

    def set_limit(self, device: str, limit: int | None) -> None:
        if limit is None:
            self._delete("svc_limits", "device=?", (device,))
        else:
            self._upsert("svc_limits", ("device", "amount"), ("device",), (device, limit))

    # ---- sessions --------------------------------------------------------------------------
    def save_session(self, s: SessionState) -> None:
        d = asdict(s)
        self._upsert("svc_sessions", _SESSION_COLS, ("device", "sid"), tuple(d[f] for f in _SESSION_FIELDS))

    @staticmethod
    def _session(row: tuple) -> SessionState:
        d = dict(zip(_SESSION_FIELDS, row))
        for k in _INTS:
            d[k] = _int(d[k])
        d["granted"] = None if d["granted"] is None else bool(d["granted"])
        d["closed"] = bool(d["closed"])
        d["answers"] = d["answers"] or 0
        return SessionState(**d)

    def load_session(self, device: str, sid: str) -> SessionState | None:
        rows = self.db._read(f"SELECT {','.join(_SESSION_COLS)} FROM svc_sessions WHERE device=? AND sid=?",
                             (device, sid))
        return self._session(rows[0]) if rows else None

    def sessions(self, status: str | None = None) -> list[SessionState]:
        sql = f"SELECT {','.join(_SESSION_COLS)} FROM svc_sessions"
        rows = self.db._read(sql + (" WHERE status=? ORDER BY device, sid" if status else " ORDER BY device, sid"),
                             (status,) if status else ())
        return [self._session(r) for r in rows]

    # ---- answered requests -----------------------------------------------------------------
    def answer(self, device: str, seq: int) -> tuple[bytes, tuple[str, dict]] | None:
        rows = self.db._read("SELECT digest, name, args FROM svc_answers WHERE device=? AND seq=?", (device, seq))
        if not rows:
            return None
        digest, name, args = rows[0]
        return bytes(digest), (name, _unpairs(args))

    def save_answer(self, device: str, seq: int, digest: bytes, answer: tuple[str, dict], at: float) -> None:
        self._upsert("svc_answers", ("device", "seq", "digest", "name", "args", "at"), ("device", "seq"),
                     (device, seq, digest, answer[0], _pairs(answer[1]), at))

    def prune_answers(self, before: float) -> None:
        self._delete("svc_answers", "at < ?", (before,))
        self._delete("svc_claims", "at < ?", (before,))

    def claim(self, device: str, seq: int, instance: str, at: float) -> str:
        """Take the auth_req (device, seq) for `instance` unless another took it first: the
        instance that holds it (one atomic insert decides, across processes and machines)."""
        sql = self.db._sql("INSERT INTO svc_claims (device, seq, instance, at) VALUES (?,?,?,?) "
                           "ON CONFLICT (device, seq) DO NOTHING")
        self.db._write(lambda cur: cur.execute(sql, (device, seq, instance, at)))
        return self.db._read("SELECT instance FROM svc_claims WHERE device=? AND seq=?", (device, seq))[0][0]

    def take_over(self, device: str, seq: int, holder: str, instance: str, at: float) -> bool:
        """Move the claim on (device, seq) from `holder` (gone quiet: no answer within the lease)
        to `instance`; True for the one caller whose update found `holder` still there."""
        sql = self.db._sql("UPDATE svc_claims SET instance=?, at=? WHERE device=? AND seq=? AND instance=?")

        def run(cur) -> bool:
            cur.execute(sql, (instance, at, device, seq, holder))
            return cur.rowcount == 1
        return bool(self.db._write(run))

    def holder(self, device: str, seq: int) -> str | None:
        rows = self.db._read("SELECT instance FROM svc_claims WHERE device=? AND seq=?", (device, seq))
        return rows[0][0] if rows else None

    def first(self, key: str, at: float) -> bool:
        """True for the one call that records `key` first (a once-only event, across processes)."""
        sql = self.db._sql("INSERT INTO svc_claims (device, seq, instance, at) VALUES (?,?,?,?) "
                           "ON CONFLICT (device, seq) DO NOTHING")

        def run(cur) -> bool:
            cur.execute(sql, (key, -1, "", at))
            return cur.rowcount == 1
        return bool(self.db._write(run))

    def last_answered(self, chain: str) -> int:
        """The highest seq answered under `chain` (0: none kept)."""
        rows = self.db._read("SELECT MAX(seq) FROM svc_answers WHERE device=?", (chain,))
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    # ---- boards of re-provisioned devices ---------------------------------------------------
    def board(self, device: str, epoch: int) -> str | None:
        rows = self.db._read("SELECT chain FROM svc_boards WHERE device=? AND epoch=?", (device, epoch))
        return rows[0][0] if rows else None

    def set_board(self, device: str, epoch: int, chain: str, at: float) -> str:
        """Record the board's chain unless another instance did first: the chain that holds."""
        sql = self.db._sql("INSERT INTO svc_boards (device, epoch, chain, at) VALUES (?,?,?,?) "
                           "ON CONFLICT (device, epoch) DO NOTHING")
        self.db._write(lambda cur: cur.execute(sql, (device, epoch, chain, at)))
        got = self.board(device, epoch)
        assert got is not None
        return got

    def correct_board(self, device: str, epoch: int, chain: str, at: float) -> None:
        """The ledger's records say otherwise (SessionService._board_seen): `chain` from now on."""
        self._upsert("svc_boards", ("device", "epoch", "chain", "at"), ("device", "epoch"), (device, epoch, chain, at))

    # ---- settlements to retry --------------------------------------------------------------
    def set_pending(self, device: str, sid: str, rec: CloseRecord | None) -> None:
        if rec is None:
            self._delete("svc_pending", "device=? AND sid=?", (device, sid))
        else:
            self._upsert("svc_pending", ("device", "sid", "rec"), ("device", "sid"),
                         (device, sid, json.dumps(asdict(rec))))

    def pending(self) -> list[CloseRecord]:
        return [CloseRecord(**json.loads(rec)) for rec, in
                self.db._read("SELECT rec FROM svc_pending ORDER BY device, sid")]

    # ---- rentals: items out, returns elsewhere ---------------------------------------------
    def set_item(self, item: str, device: str, sid: str) -> None:
        self._upsert("svc_items", ("item", "device", "sid"), ("item",), (item, device, sid))

    def item(self, item: str) -> tuple[str, str] | None:
        rows = self.db._read("SELECT device, sid FROM svc_items WHERE item=?", (item,))
        return (rows[0][0], rows[0][1]) if rows else None

    def drop_items(self, device: str, sid: str) -> None:
        self._delete("svc_items", "device=? AND sid=?", (device, sid))

    def set_link(self, device: str, sid: str, rental: tuple[str, str]) -> None:
        self._upsert("svc_links", ("device", "sid", "rental_device", "rental_sid"), ("device", "sid"),
                     (device, sid, *rental))

    def link(self, device: str, sid: str) -> tuple[str, str] | None:
        rows = self.db._read("SELECT rental_device, rental_sid FROM svc_links WHERE device=? AND sid=?",
                             (device, sid))
        return (rows[0][0], rows[0][1]) if rows else None

    # ---- flags -----------------------------------------------------------------------------
    def add_flag(self, f: Flag) -> None:
        """Recorded once per (device, sid, kind): a second one is ignored."""
        d = asdict(f)
        sql = (f"INSERT INTO svc_flags ({','.join(_FLAG_FIELDS)}) VALUES ({self.db._ph(len(_FLAG_FIELDS))}) "
               "ON CONFLICT (device, sid, kind) DO NOTHING")
        self.db._write(lambda cur: cur.execute(self.db._sql(sql), tuple(d[k] for k in _FLAG_FIELDS)))

    def flags(self) -> list[Flag]:
        rows = self.db._read(f"SELECT {','.join(_FLAG_FIELDS)} FROM svc_flags ORDER BY at, device, sid, kind")
        out = []
        for row in rows:
            d = dict(zip(_FLAG_FIELDS, row))
            for k in ("device_amount", "cloud_amount", "charged"):
                d[k] = _int(d[k])
            d["at"] = float(d["at"])
            out.append(Flag(**d))
        return out
