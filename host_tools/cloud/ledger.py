"""The money ledger: every session record (SPEC §6) a device sent, chained, exactly once.

Two backends, one behaviour, one interface (`Ledger`):

- `SqliteLedger` (host_tools/cloud/ledger_sqlite.py): embedded default, WAL mode, writers
  serialised with BEGIN IMMEDIATE (safe across threads and processes on one machine).
- `PgLedger` (host_tools/cloud/ledger_pg.py): PostgreSQL via psycopg 3, the scale-out backend:
  N ingest workers on N machines share one ledger; the per-device head row is locked with
  SELECT ... FOR UPDATE (devices in sorted order, so two batches never deadlock).

    ledger = open_ledger("sqlite:///var/lib/edgepay/ledger.db")   # ledger_open.py; or a path, or "postgresql://..."
    results = ledger.commit([rec, ...])     # one transaction; per record an Outcome
    ledger.head("gate-001") -> Head(seq, hash) | None

Schema (both backends; BLOB is BYTEA on PostgreSQL):

    records  (device, seq) PRIMARY KEY, type, sid, payer, amount, currency, t0, t1, slot, offline,
             auth, reason, lines (JSON text), hash (16 B), prev (16 B), raw (the signed envelope),
             committed_at, item (a rental's item tag, schema version 2); UNIQUE (device, hash)
    heads    device PRIMARY KEY, seq, hash: the last committed record of each device's chain
    sessions (device, sid) PRIMARY KEY, state ('open' | 'closed'), payer, slot, t0, t1, amount,
             currency, offline, auth, reason, lines, open_seq, last_seq, close_seq
    rejects  (device, seq, kind, digest) PRIMARY KEY, raw, detail, at: authenticated records
             that were refused (same seq with other bytes, out of chain), kept for disputes
    quarantine (device, digest) PRIMARY KEY, seq, raw, hash, prev, reason, detail, at; UNIQUE
             (device, seq): authenticated records that cannot be committed (SPEC §6 Quarantine),
             kept byte for byte; seq/hash/prev NULL for one that cannot be placed in the chain
    schema_version  component, version: migrations run on open (host_tools/cloud/ledger_db.py)

The types live in ledger_model.py, the connection layer and the schema in ledger_db.py; every name
is importable from here as before.

Commit rules, per device, in seq order inside one transaction, with the head row locked:
- seq already stored with the same bytes: DUPLICATE (nothing written; the caller acks again);
- seq already stored with other bytes: CONFLICT (refused, never overwritten; kept in rejects);
- seq <= head seq but not stored, or prev = the hash of a stored record other than the head (or
  the genesis hash when a head exists): OUT_OF_CHAIN (a fork; refused, kept in rejects);
- seq > head seq and prev = head hash (16 zero bytes for a device's first record): COMMITTED;
- otherwise GAP: the predecessor has not arrived (yet); nothing written, the caller holds the
  record or asks the device to resend.
A record carrying `quarantine` (a reason: the codec refused a field, or an earlier commit of it
failed) follows the same rules, but where it would be COMMITTED it is QUARANTINED: its bytes go
to `quarantine`, not `records` or `sessions`, and the head moves to it (seq, its payload hash), so
the device's next record still links. Its bytes again: QUARANTINED_DUPLICATE (acked again).

One record never fails a batch (SPEC §6 Quarantine): if the batch's transaction fails with an
error that one record's data can cause (`_record_error`: a value a column cannot hold, a
constraint or rule refusing the row), it is retried device by device, and a failing device record
by record; a record that fails alone is quarantined with reason `commit_error`. Any other error
(connection, lock, disk, crash) fails the batch as before, and so does one that every device of a
batch of several meets: then the database is at fault, not a record; nothing is quarantined.
The chain hash of a record is SHA-256(payload bytes)[:16], the payload being the bstr inside its
envelope. Money is integer minor units everywhere; totals are Python ints, never floats.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from abc import abstractmethod
from typing import Any, Iterable, Mapping, Sequence

from host_tools.protocol import SESS_OPEN, SESS_UPDATE
from host_tools.cloud.ledger_db import (LEDGER_VERSION, RECORD_COLS, SESSION_COLS, Database, where_prefixes,
                                        _schema)
from host_tools.cloud.ledger_model import (GENESIS, RECORD_TYPES, TYPE_NUMBERS, CommitResult, Head,
                                           LedgerError, Outcome, Reconciliation, Record, Result,
                                           Session, _int, chain_hash)

__all__ = ["GENESIS", "RECORD_TYPES", "TYPE_NUMBERS", "RECORD_COLS", "SESSION_COLS", "CommitResult",
           "Head", "Ledger", "LedgerError", "Outcome", "Reconciliation", "Record", "Result", "Session",
           "chain_hash", "_int", "_schema"]

log = logging.getLogger("edgepay.ledger")


class Ledger(Database):
    """The shared logic; a backend supplies the connection, its placeholder and its locking.

    A Ledger object may be shared by threads (calls are serialised by a lock); for parallel
    writers open one Ledger per thread or process: the database does the rest.
    """

    def _create_schema(self) -> None:
        """Backends call this once connected: create the tables, migrate an older file."""
        self.ensure_schema("ledger", _schema(self.blob, self.bigint), LEDGER_VERSION)

    # ---- backend hooks ------------------------------------------------------------------
    @abstractmethod
    def _lock_heads(self, cur: Any, devices: Sequence[str]) -> dict[str, Head | None]:
        """Inside the write transaction: lock the head rows of `devices` (sorted) and return them."""

    @abstractmethod
    def clear(self) -> None:
        """Delete everything (tests and benches)."""

    def _now(self) -> float:
        import time
        return time.time()

    def _record_error(self, e: BaseException) -> bool:
        """Could this error come from one record's data (a value a column cannot hold, a constraint
        or rule refusing the row)? Only then is the record isolated and quarantined; anything else
        (the connection, a lock, a full disk, a crash, a bug) fails the batch as it always did.
        Backends add their driver's data and integrity errors."""
        return isinstance(e, (OverflowError, ValueError, TypeError, UnicodeError))

    # ---- writing ------------------------------------------------------------------------
    def commit(self, records: Iterable[Record]) -> CommitResult:
        """Commit a batch in one transaction (see the module doc for the rules); a record that
        fails the transaction is isolated and quarantined, the others committed."""
        batch = sorted(records, key=lambda r: (r.device, r.seq))
        if not batch:
            return CommitResult([], {})
        try:
            return self._commit_batch(batch)
        except BaseException as e:
            if not self._record_error(e):
                raise
            log.warning("ledger batch of %d failed (%s: %s): isolating the record at fault",
                        len(batch), type(e).__name__, e)
            return self._commit_isolating(batch, e)

    def _commit_isolating(self, batch: list[Record], error: BaseException) -> CommitResult:
        devices = sorted({r.device for r in batch})
        out = CommitResult([], {})
        failed: list[list[Record]] = []
        for dev in devices:  # one transaction a device
            recs = [r for r in batch if r.device == dev]
            try:
                part = self._commit_batch(recs)
            except BaseException as e:
                if not self._record_error(e):
                    raise
                failed.append(recs)
                continue
            out.results.extend(part.results)
            out.heads.update(part.heads)
        if len(devices) > 1 and len(failed) == len(devices):
            raise error  # every device fails: the database's fault, not one record's
        for recs in failed:  # one transaction a record
            try:
                part = self._commit_one_by_one(recs)
            except BaseException as e:
                if not self._record_error(e):
                    raise
                # not even its quarantine commits: no result, no ack; the device sends it again
                log.exception("device %s: a record could not be committed nor quarantined", recs[0].device)
                continue
            out.results.extend(part.results)
            out.heads.update(part.heads)
        return out

    def _commit_one_by_one(self, recs: list[Record]) -> CommitResult:
        out = CommitResult([], {})
        for r in recs:
            try:
                part = self._commit_batch([r])
            except BaseException as e:
                if not self._record_error(e) or r.quarantine:
                    raise
                log.error("record %s seq %s cannot be committed (%s: %s): quarantined",
                          r.device, r.seq, type(e).__name__, e)
                part = self._commit_batch([dataclasses.replace(
                    r, quarantine="commit_error", quarantine_detail=f"{type(e).__name__}: {e}"[:500])])
            out.results.extend(part.results)
            out.heads.update(part.heads)
        return out

    def _commit_batch(self, batch: list[Record]) -> CommitResult:
        devices = sorted({r.device for r in batch})
        with self._lock:
            cur = self._cursor()
            try:
                self._begin_write(cur)
                heads = self._lock_heads(cur, devices)
                results: list[Result] = []
                rows: list[tuple] = []
                rejects: list[tuple] = []
                held: list[tuple] = []
                now = self._now()
                for dev in devices:
                    recs = [r for r in batch if r.device == dev]
                    head = heads.get(dev)
                    stored = self._stored(cur, dev, [r.seq for r in recs])
                    qstored = self._stored_quarantine(cur, dev, [r.seq for r in recs])
                    new_head = head
                    for r in recs:
                        outcome, detail = self._judge(cur, r, new_head, stored, qstored)
                        results.append(Result(dev, r.seq, outcome, detail))
                        if outcome is Outcome.COMMITTED:
                            stored[r.seq] = r.raw
                            rows.append(self._row(r, now))
                            self._session(cur, r)
                            new_head = Head(r.seq, r.hash)
                        elif outcome is Outcome.QUARANTINED:
                            qstored[r.seq] = r.raw
                            held.append((dev, r.seq, hashlib.sha256(r.raw).digest(), r.raw, r.hash,
                                         r.prev, r.quarantine, r.quarantine_detail, now))
                            new_head = Head(r.seq, r.hash)
                        elif outcome in (Outcome.CONFLICT, Outcome.OUT_OF_CHAIN):
                            rejects.append((dev, r.seq, outcome.value, hashlib.sha256(r.raw).digest(),
                                            r.raw, detail, now))
                    if new_head is not None and new_head is not head:
                        # the head row exists: _lock_heads created it
                        cur.execute(self._sql("UPDATE heads SET seq=?, hash=? WHERE device=?"),
                                    (new_head.seq, new_head.hash, dev))
                        heads[dev] = new_head
                if rows:
                    cols = RECORD_COLS[:-1] + ("committed_at", "item")
                    cur.executemany(self._sql(
                        f"INSERT INTO records ({','.join(cols)}) VALUES ({self._ph(len(cols))}) "
                        "ON CONFLICT DO NOTHING"), rows)
                if rejects:
                    cur.executemany(self._sql(
                        "INSERT INTO rejects (device, seq, kind, digest, raw, detail, at) "
                        f"VALUES ({self._ph(7)}) ON CONFLICT DO NOTHING"), rejects)
                if held:
                    cur.executemany(self._sql(
                        "INSERT INTO quarantine (device, seq, digest, raw, hash, prev, reason, detail, at) "
                        f"VALUES ({self._ph(9)}) ON CONFLICT DO NOTHING"), held)
                self._commit()
            except BaseException:
                self._rollback()
                raise
        # a head row created for a device whose records all failed is an empty head: report None
        return CommitResult(results, {d: (h if h is not None and h.seq >= 0 else None)
                                      for d, h in heads.items()})

    def _stored(self, cur: Any, device: str, seqs: list[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        uniq = sorted(set(seqs))
        for i in range(0, len(uniq), 500):
            part = uniq[i:i + 500]
            cur.execute(self._sql(f"SELECT seq, raw FROM records WHERE device=? AND seq IN ({self._ph(len(part))})"),
                        (device, *part))
            out.update((int(s), bytes(raw)) for s, raw in cur.fetchall())
        return out

    def _stored_quarantine(self, cur: Any, device: str, seqs: list[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        uniq = sorted(set(seqs))
        for i in range(0, len(uniq), 500):
            part = uniq[i:i + 500]
            cur.execute(self._sql(f"SELECT seq, raw FROM quarantine WHERE device=? AND seq IN ({self._ph(len(part))})"),
                        (device, *part))
            out.update((int(s), bytes(raw)) for s, raw in cur.fetchall())
        return out

    def _judge(self, cur: Any, r: Record, head: Head | None, stored: dict[int, bytes],
               qstored: dict[int, bytes]) -> tuple[Outcome, str]:
        if r.seq in stored:
            if stored[r.seq] == r.raw:
                return Outcome.DUPLICATE, ""
            return Outcome.CONFLICT, "seq already committed with other bytes"
        if r.seq in qstored:
            if qstored[r.seq] == r.raw:
                return Outcome.QUARANTINED_DUPLICATE, ""
            return Outcome.CONFLICT, "seq already quarantined with other bytes"
        head_seq = head.seq if head is not None and head.seq >= 0 else None
        head_hash = head.hash if head is not None and head_seq is not None else GENESIS
        if head_seq is not None and r.seq <= head_seq:
            return Outcome.OUT_OF_CHAIN, f"seq {r.seq} <= head {head_seq} and not in the chain"
        if r.prev == head_hash:
            if r.quarantine:
                return Outcome.QUARANTINED, r.quarantine
            return Outcome.COMMITTED, ""
        if head_seq is not None and r.prev == GENESIS:
            return Outcome.OUT_OF_CHAIN, "a second genesis record"
        cur.execute(self._sql("SELECT seq FROM records WHERE device=? AND hash=?"), (r.device, r.prev))
        row = cur.fetchone()
        if row is None:
            cur.execute(self._sql("SELECT seq FROM quarantine WHERE device=? AND hash=?"), (r.device, r.prev))
            row = cur.fetchone()
        if row is not None:
            return Outcome.OUT_OF_CHAIN, f"links to seq {int(row[0])}, not to the head"
        return Outcome.GAP, f"prev does not link to head {head_seq}"

    @staticmethod
    def _row(r: Record, now: float) -> tuple:
        return (r.device, r.seq, r.type, r.sid, r.payer, r.amount, r.currency, r.t0, r.t1, r.slot,
                r.offline, r.auth, r.reason, json.dumps(r.lines) if r.lines is not None else None,
                r.hash, r.prev, r.raw, now, r.item)

    def _session(self, cur: Any, r: Record) -> None:
        """Derive the session from open / update / close (records arrive in chain order)."""
        lines = json.dumps(r.lines) if r.lines is not None else None
        cur.execute(self._sql("SELECT state FROM sessions WHERE device=? AND sid=?"), (r.device, r.sid))
        exists = cur.fetchone() is not None
        if r.type == SESS_OPEN:
            if exists:
                cur.execute(self._sql(
                    "UPDATE sessions SET payer=?, slot=?, t0=?, offline=?, auth=?, open_seq=?, "
                    "amount=COALESCE(amount, ?), currency=COALESCE(currency, ?) WHERE device=? AND sid=?"),
                    (r.payer, r.slot, r.t0, r.offline, r.auth, r.seq, r.amount, r.currency, r.device, r.sid))
            else:
                cur.execute(self._sql(
                    f"INSERT INTO sessions ({','.join(SESSION_COLS)}) VALUES ({self._ph(len(SESSION_COLS))})"),
                    (r.device, r.sid, "open", r.payer, r.slot, r.t0, None, r.amount, r.currency, r.offline,
                     r.auth, None, None, r.seq, r.seq, None))
        elif r.type == SESS_UPDATE:
            if exists:
                cur.execute(self._sql(
                    "UPDATE sessions SET amount=?, currency=?, t1=?, last_seq=? WHERE device=? AND sid=?"),
                    (r.amount, r.currency, r.t1, r.seq, r.device, r.sid))
            else:
                cur.execute(self._sql(
                    f"INSERT INTO sessions ({','.join(SESSION_COLS)}) VALUES ({self._ph(len(SESSION_COLS))})"),
                    (r.device, r.sid, "open", None, None, None, r.t1, r.amount, r.currency, None, None,
                     None, None, None, r.seq, None))
        else:
            if exists:
                cur.execute(self._sql(
                    "UPDATE sessions SET state='closed', payer=?, slot=?, t0=?, t1=?, amount=?, currency=?, "
                    "offline=?, auth=?, reason=?, lines=?, last_seq=?, close_seq=? WHERE device=? AND sid=?"),
                    (r.payer, r.slot, r.t0, r.t1, r.amount, r.currency, r.offline, r.auth, r.reason, lines,
                     r.seq, r.seq, r.device, r.sid))
            else:
                cur.execute(self._sql(
                    f"INSERT INTO sessions ({','.join(SESSION_COLS)}) VALUES ({self._ph(len(SESSION_COLS))})"),
                    (r.device, r.sid, "closed", r.payer, r.slot, r.t0, r.t1, r.amount, r.currency,
                     r.offline, r.auth, r.reason, lines, None, r.seq, r.seq))


    # ---- reading ------------------------------------------------------------------------
    def head(self, device: str) -> Head | None:
        rows = self._read("SELECT seq, hash FROM heads WHERE device=?", (device,))
        if not rows or int(rows[0][0]) < 0:
            return None
        return Head(int(rows[0][0]), bytes(rows[0][1]))

    def heads(self) -> dict[str, Head]:
        return {d: Head(int(s), bytes(h)) for d, s, h in
                self._read("SELECT device, seq, hash FROM heads WHERE seq >= 0 ORDER BY device")}

    def records(self, device: str | None = None) -> list[Record]:
        cols = ",".join(RECORD_COLS)
        if device is None:
            rows = self._read(f"SELECT {cols} FROM records ORDER BY device, seq")
        else:
            rows = self._read(f"SELECT {cols} FROM records WHERE device=? ORDER BY seq", (device,))
        out = []
        for row in rows:
            d = dict(zip(RECORD_COLS, row))
            out.append(Record(device=d["device"], seq=int(d["seq"]), type=int(d["type"]), sid=d["sid"],
                              prev=bytes(d["prev"]), hash=bytes(d["hash"]), raw=bytes(d["raw"]),
                              payer=d["payer"], amount=_int(d["amount"]), currency=d["currency"],
                              t0=_int(d["t0"]), t1=_int(d["t1"]), slot=_int(d["slot"]),
                              offline=None if d["offline"] is None else bool(d["offline"]),
                              auth=d["auth"], reason=d["reason"],
                              lines=json.loads(d["lines"]) if d["lines"] is not None else None,
                              item=d["item"]))
        return out

    def count(self, device: str | None = None) -> int:
        if device is None:
            return int(self._read("SELECT COUNT(*) FROM records")[0][0])
        return int(self._read("SELECT COUNT(*) FROM records WHERE device=?", (device,))[0][0])

    def sessions(self, device: str | None = None) -> list[Session]:
        cols = ",".join(SESSION_COLS)
        if device is None:
            rows = self._read(f"SELECT {cols} FROM sessions ORDER BY device, sid")
        else:
            rows = self._read(f"SELECT {cols} FROM sessions WHERE device=? ORDER BY sid", (device,))
        return self._sessions(rows)

    def closed(self, since: int | None = None, until: int | None = None,
               prefixes: Sequence[str] | None = None) -> list[Session]:
        """Closed sessions whose end (t1, the device's signed close time) is in [since, until),
        on devices whose id starts with one of `prefixes` (None: every device), in (t1, device,
        sid) order: a period's sessions for finance (ledger_export.py)."""
        where: list[str] = ["state='closed'"]
        args: list[Any] = []
        for cond, v in (("t1 >= ?", since), ("t1 < ?", until)):
            if v is not None:
                where.append(cond)
                args.append(int(v))
        if not where_prefixes(where, args, "device", prefixes):
            return []
        cols = ",".join(SESSION_COLS)
        return self._sessions(self._read(f"SELECT {cols} FROM sessions WHERE {' AND '.join(where)} "
                                         "ORDER BY t1, device, sid", tuple(args)))

    def find(self, *, device: str | None = None, payer: str | None = None, state: str | None = None,
             since: int | None = None, until: int | None = None, prefixes: Sequence[str] | None = None,
             before: tuple[int, str, str] | None = None, limit: int = 100,
             offline: bool | None = None) -> list[Session]:
        """Sessions newest first by start (t0, then device and sid), filtered in the database:
        started in [since, until), a device, a payer, a state, sites, opened offline or not;
        `before` is the last row of the previous page (t0, device, sid): the page after it (keyset,
        so a page costs a page)."""
        where: list[str] = ["t0 IS NOT NULL"]
        args: list[Any] = []
        if offline is not None:
            where.append("offline = ?" if offline else "(offline = ? OR offline IS NULL)")
            args.append(bool(offline))
        for cond, v in (("device = ?", device), ("payer = ?", payer), ("state = ?", state),
                        ("t0 >= ?", since), ("t0 < ?", until)):
            if v is not None:
                where.append(cond)
                args.append(v)
        if before is not None:
            where.append("(t0 < ? OR (t0 = ? AND (device < ? OR (device = ? AND sid < ?))))")
            args += [before[0], before[0], before[1], before[1], before[2]]
        if not where_prefixes(where, args, "device", prefixes):
            return []
        cols = ",".join(SESSION_COLS)
        return self._sessions(self._read(f"SELECT {cols} FROM sessions WHERE {' AND '.join(where)} "
                                         "ORDER BY t0 DESC, device DESC, sid DESC LIMIT ?", (*args, int(limit))))

    @staticmethod
    def _sessions(rows: Iterable[Sequence[Any]]) -> list[Session]:
        out = []
        for row in rows:
            d = dict(zip(SESSION_COLS, row))
            for k in ("slot", "t0", "t1", "amount", "open_seq", "last_seq", "close_seq"):
                d[k] = _int(d[k])
            d["offline"] = None if d["offline"] is None else bool(d["offline"])
            d["lines"] = json.loads(d["lines"]) if d["lines"] is not None else None
            out.append(Session(**d))
        return out

    def totals(self, device: str | None = None, state: str | None = "closed") -> dict[str, int]:
        """Sum of session amounts by currency, as ints (closed sessions by default; state=None:
        every session's latest amount)."""
        where, args = [], []
        if device is not None:
            where.append("device=?")
            args.append(device)
        if state is not None:
            where.append("state=?")
            args.append(state)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        rows = self._read(f"SELECT currency, SUM(amount) FROM sessions{clause}"
                          f"{' AND' if clause else ' WHERE'} currency IS NOT NULL GROUP BY currency",
                          tuple(args))
        return {cur: _int(total) or 0 for cur, total in sorted(rows)}

    def rejects(self, device: str | None = None) -> list[dict]:
        sql = "SELECT device, seq, kind, detail, raw FROM rejects"
        rows = self._read(sql + (" WHERE device=? ORDER BY seq" if device else " ORDER BY device, seq"),
                          (device,) if device else ())
        return [dict(device=d, seq=int(s), kind=k, detail=det, raw=bytes(raw)) for d, s, k, det, raw in rows]

    def quarantine_unplaced(self, device: str, raw: bytes, reason: str, detail: str = "") -> bool:
        """Keep an authenticated record that cannot be placed in any chain (no usable seq or prev,
        SPEC §6 Quarantine); True if these bytes were not kept already."""
        def run(cur: Any) -> bool:
            cur.execute(self._sql(
                "INSERT INTO quarantine (device, seq, digest, raw, hash, prev, reason, detail, at) "
                "VALUES (?, NULL, ?, ?, NULL, NULL, ?, ?, ?) ON CONFLICT DO NOTHING"),
                (device, hashlib.sha256(raw).digest(), raw, reason, detail[:500], self._now()))
            return cur.rowcount == 1
        return bool(self._write(run))

    def quarantined(self, device: str | None = None) -> list[dict]:
        """The quarantine (SPEC §6): {device, seq (None: not placed), reason, detail, raw, at}."""
        sql = "SELECT device, seq, reason, detail, raw, at FROM quarantine"
        order = " ORDER BY device, seq IS NULL, seq, at"  # NULLs last on both backends
        rows = self._read(sql + (" WHERE device=?" if device else "") + order,
                          (device,) if device else ())
        return [dict(device=d, seq=None if s is None else int(s), reason=r, detail=det, raw=bytes(raw),
                     at=float(at)) for d, s, r, det, raw, at in rows]

    def reconcile(self, device: str, journal_records: Iterable[Any], from_seq: int | None = None) -> Reconciliation:
        """Compare the ledger with a device's own list of records.

        journal_records: envelopes as (seq, raw bytes) pairs, or objects with .seq and .raw
        (e.g. `Record`), or dicts with "seq" and "raw". A device forgets acknowledged records, so
        `from_seq` limits the ledger side to seq >= from_seq (default: everything).
        """
        journal: dict[int, bytes] = {}
        for item in journal_records:
            if isinstance(item, Mapping):
                seq, raw = item["seq"], item["raw"]
            elif isinstance(item, tuple):
                seq, raw = item
            else:
                seq, raw = item.seq, item.raw
            journal[int(seq)] = bytes(raw)
        ledger = {int(s): bytes(raw) for s, raw in
                  self._read("SELECT seq, raw FROM records WHERE device=? AND seq >= ?",
                             (device, from_seq if from_seq is not None else -1))}
        rec = Reconciliation()
        for seq in sorted(journal):
            if seq not in ledger:
                rec.missing.append(seq)
            elif ledger[seq] != journal[seq]:
                rec.mismatched.append(seq)
        rec.extra = sorted(s for s in ledger if s not in journal)
        return rec


    def __enter__(self) -> "Ledger":
        return self
