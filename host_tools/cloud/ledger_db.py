"""The database layer under the ledger and the session store: one connection, its backend's SQL
dialect, the ledger's schema and its versioned migrations.

A backend (ledger_sqlite.SqliteLedger, ledger_pg.PgLedger) supplies the connection and its
transaction hooks; `Database` supplies the rest. The session store (host_tools/cloud/session_store.py)
uses the same object, so its tables live in the ledger's database and move with it.

Schema versions (table `schema_version`, one row per component):
    ledger 1  records, heads, sessions, rejects (the first release; no version row)
    ledger 2  records.item: the rented item's tag of a sess_open (SPEC field 21)
    ledger 3  quarantine: authenticated records that cannot be committed (SPEC §6 Quarantine);
              a new table, so CREATE TABLE IF NOT EXISTS is the whole migration
A database without a version row is version 1 if it has a `records` table, else it is created at the
latest version. Each migration step is idempotent (it checks the column first), so two processes
opening an old file together cannot apply one twice; both backends serialise schema work.
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence

RECORD_COLS = ("device", "seq", "type", "sid", "payer", "amount", "currency", "t0", "t1", "slot",
               "offline", "auth", "reason", "lines", "hash", "prev", "raw", "item")
SESSION_COLS = ("device", "sid", "state", "payer", "slot", "t0", "t1", "amount", "currency",
                "offline", "auth", "reason", "lines", "open_seq", "last_seq", "close_seq")

LEDGER_VERSION = 3


def where_prefixes(where: list[str], args: list[Any], col: str, prefixes: Sequence[str] | None) -> bool:
    """Add `(col LIKE 'p1%' OR ...)` and its arguments to a WHERE under construction: the rows whose
    `col` starts with one of `prefixes` (a site's device-id prefix; None: no condition). False when
    `prefixes` is empty: no row can match, so there is nothing to ask. LIKE, not a range: a
    PostgreSQL collation may order '-' in ways a range would miss; `!` escapes the pattern
    characters a prefix may hold."""
    if prefixes is None:
        return True
    if not prefixes:
        return False
    where.append("(" + " OR ".join(f"{col} LIKE ? ESCAPE '!'" for _ in prefixes) + ")")
    args += [p.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%" for p in prefixes]
    return True


def _schema(blob: str, bigint: str) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS records (
            device TEXT NOT NULL, seq {bigint} NOT NULL, type INTEGER NOT NULL, sid TEXT NOT NULL,
            payer TEXT, amount {bigint}, currency TEXT, t0 {bigint}, t1 {bigint}, slot {bigint},
            offline BOOLEAN, auth TEXT, reason TEXT, lines TEXT,
            hash {blob} NOT NULL, prev {blob} NOT NULL, raw {blob} NOT NULL,
            committed_at DOUBLE PRECISION NOT NULL, item TEXT,
            PRIMARY KEY (device, seq), UNIQUE (device, hash))""",
        f"""CREATE TABLE IF NOT EXISTS heads (
            device TEXT PRIMARY KEY, seq {bigint} NOT NULL, hash {blob} NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS sessions (
            device TEXT NOT NULL, sid TEXT NOT NULL, state TEXT NOT NULL, payer TEXT, slot {bigint},
            t0 {bigint}, t1 {bigint}, amount {bigint}, currency TEXT, offline BOOLEAN, auth TEXT,
            reason TEXT, lines TEXT, open_seq {bigint}, last_seq {bigint} NOT NULL,
            close_seq {bigint}, PRIMARY KEY (device, sid))""",
        f"""CREATE TABLE IF NOT EXISTS rejects (
            device TEXT NOT NULL, seq {bigint} NOT NULL, kind TEXT NOT NULL, digest {blob} NOT NULL,
            raw {blob} NOT NULL, detail TEXT, at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (device, seq, kind, digest))""",
        # seq, hash, prev: NULL for a record that cannot be placed in the chain (no usable seq)
        f"""CREATE TABLE IF NOT EXISTS quarantine (
            device TEXT NOT NULL, seq {bigint}, digest {blob} NOT NULL, raw {blob} NOT NULL,
            hash {blob}, prev {blob}, reason TEXT NOT NULL, detail TEXT, at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (device, digest), UNIQUE (device, seq))""",
    ]


def _add_column(table: str, column: str, decl: str) -> Callable[["Database", Any], None]:
    def step(db: "Database", cur: Any) -> None:
        if column not in db._columns(cur, table):
            cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    return step


# component -> [(version reached, step)], in order
MIGRATIONS: dict[str, list[tuple[int, Callable[["Database", Any], None]]]] = {
    "ledger": [(2, _add_column("records", "item", "TEXT"))],
    "registry": [(2, _add_column("devices", "status", "TEXT NOT NULL DEFAULT 'active'"))],
}


class Database(ABC):
    """One connection and its dialect. Calls are serialised by `_lock` (an RLock), so one object
    may be shared by threads; for parallel writers open one per thread or process."""

    placeholder = "?"
    blob = "BLOB"
    bigint = "INTEGER"

    def __init__(self) -> None:
        self._lock = threading.RLock()

    # ---- backend hooks ------------------------------------------------------------------
    @abstractmethod
    def _cursor(self) -> Any: ...

    @abstractmethod
    def _begin_write(self, cur: Any) -> None:
        """Start a write transaction."""

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _rollback(self) -> None: ...

    @abstractmethod
    def _columns(self, cur: Any, table: str) -> set[str]:
        """The column names of `table` (inside a transaction)."""

    def _schema_lock(self, cur: Any) -> None:
        """Inside the schema transaction: serialise schema work with other processes."""

    @abstractmethod
    def close(self) -> None: ...

    # ---- dialect ------------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _ph(self, n: int) -> str:
        return ",".join([self.placeholder] * n)

    # ---- transactions -------------------------------------------------------------------
    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            cur = self._cursor()
            try:
                cur.execute(self._sql(sql), args)
                rows = cur.fetchall()
                self._commit()   # end the read transaction (PostgreSQL opens one implicitly)
            except BaseException:
                self._rollback()
                raise
        return rows

    def _write(self, fn: Callable[[Any], Any]) -> Any:
        """Run fn(cursor) in one write transaction; its result."""
        with self._lock:
            cur = self._cursor()
            try:
                self._begin_write(cur)
                out = fn(cur)
                self._commit()
            except BaseException:
                self._rollback()
                raise
        return out

    # ---- schema -------------------------------------------------------------------------
    def ensure_schema(self, component: str, statements: Sequence[str], latest: int) -> int:
        """Create `component`'s tables, migrate an older database to `latest`; the version it had
        (0: new). Idempotent and safe when several processes open one database together."""
        def run(cur: Any) -> int:
            self._schema_lock(cur)
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version (component TEXT PRIMARY KEY, "
                        "version INTEGER NOT NULL)")
            cur.execute(self._sql("SELECT version FROM schema_version WHERE component=?"), (component,))
            row = cur.fetchone()
            if row is not None:
                found = int(row[0])
            elif component == "ledger" and "records" in self._tables(cur):
                found = 1  # a database from before versioning
            elif component == "registry" and self._columns(cur, "devices"):
                found = 1  # a registry file from before versioning
            else:
                found = 0
            for stmt in statements:  # CREATE ... IF NOT EXISTS: new tables at the latest version
                cur.execute(stmt)
            if found:
                for version, step in MIGRATIONS.get(component, []):
                    if found < version:
                        step(self, cur)
            if found > latest:
                raise RuntimeError(f"{component} schema version {found} is newer than this code ({latest})")
            cur.execute(self._sql("DELETE FROM schema_version WHERE component=?"), (component,))
            cur.execute(self._sql("INSERT INTO schema_version (component, version) VALUES (?, ?)"),
                        (component, latest))
            return found
        return self._write(run)

    def schema_version(self, component: str = "ledger") -> int | None:
        rows = self._read("SELECT version FROM schema_version WHERE component=?", (component,))
        return int(rows[0][0]) if rows else None

    def _tables(self, cur: Any) -> set[str]:
        return {t for t in ("records", "heads", "sessions", "rejects", "quarantine")
                if self._columns(cur, t)}

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
