"""The embedded ledger backend: SQLite in WAL mode (see host_tools/cloud/ledger.py).

Writers take the database write lock at the start of each batch (BEGIN IMMEDIATE), so the head
rows they read cannot change under them; any number of threads (one SqliteLedger each, or one
shared: calls are serialised) and processes on one machine may write. synchronous=FULL by default:
an ack goes out only after the commit, so the commit must survive a power cut.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Sequence

from host_tools.cloud.ledger import GENESIS, Head, Ledger


class SqliteLedger(Ledger):
    placeholder = "?"

    def __init__(self, path: str | Path = ":memory:", synchronous: str = "FULL", timeout: float = 60.0,
                 schema: bool = True):
        super().__init__()
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=timeout)
        self._db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        if self.path != ":memory:":
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise RuntimeError(f"SQLite refused WAL mode ({mode}) for {self.path}")
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous: {synchronous!r}")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        if schema:  # False: the connection only, for another component's tables (the registry)
            self._create_schema()  # BEGIN IMMEDIATE serialises it with other processes

    def _cursor(self) -> Any:
        return self._db.cursor()

    def _begin_write(self, cur: Any) -> None:
        cur.execute("BEGIN IMMEDIATE")

    def _lock_heads(self, cur: Any, devices: Sequence[str]) -> dict[str, Head | None]:
        # BEGIN IMMEDIATE already holds the write lock: create missing head rows (seq -1: no
        # record yet) so the commit only ever UPDATEs them, as on PostgreSQL
        cur.executemany("INSERT INTO heads (device, seq, hash) VALUES (?, -1, ?) ON CONFLICT DO NOTHING",
                        [(d, GENESIS) for d in devices])
        heads: dict[str, Head | None] = {}
        for i in range(0, len(devices), 500):
            part = list(devices[i:i + 500])
            cur.execute(f"SELECT device, seq, hash FROM heads WHERE device IN ({','.join('?' * len(part))})", part)
            for d, s, h in cur.fetchall():
                heads[d] = Head(int(s), bytes(h))
        return heads

    def _record_error(self, e: BaseException) -> bool:
        # a constraint or trigger refusing the row, a value it cannot bind; never OperationalError
        # (locked, busy, disk full, I/O): that is the database's trouble, not one record's
        return isinstance(e, (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError,
                              sqlite3.ProgrammingError)) or super()._record_error(e)

    def _columns(self, cur: Any, table: str) -> set[str]:
        return {row[1] for row in cur.execute(f"PRAGMA table_info({table})").fetchall()}

    def _commit(self) -> None:
        if self._db.in_transaction:
            self._db.execute("COMMIT")

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def clear(self) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            for t in ("records", "heads", "sessions", "rejects", "quarantine"):
                self._db.execute(f"DELETE FROM {t}")
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()
