"""The scale-out ledger backend: PostgreSQL via psycopg 3 (see host_tools/cloud/ledger.py).

N ingest workers on N machines share one database. Each batch is one transaction at READ
COMMITTED: the head rows of the batch's devices are created if missing (INSERT ... ON CONFLICT DO
NOTHING) and locked with SELECT ... FOR UPDATE, devices in sorted order so that two batches never
deadlock; every insert of a device's records happens under its head lock, so the chain checks
see everything committed before them.
"""
from __future__ import annotations

from typing import Any, Sequence

from host_tools.cloud.ledger import GENESIS, Head, Ledger, LedgerError

try:
    import psycopg
except ImportError:  # pragma: no cover - reported when a PgLedger is made
    psycopg = None


class PgLedger(Ledger):
    placeholder = "%s"
    blob = "BYTEA"
    bigint = "BIGINT"

    def __init__(self, url: str, connect_timeout: float = 10.0, synchronous_commit: str | None = None,
                 schema: bool = True):
        super().__init__()
        if psycopg is None:
            raise LedgerError("psycopg 3 is not installed: pip install 'psycopg[binary]' (see pyproject dev extra)")
        self.url = url
        self._timeout = int(connect_timeout)
        self._db = psycopg.connect(url, autocommit=False, connect_timeout=self._timeout)
        if synchronous_commit:
            with self._db.cursor() as cur:
                cur.execute("SELECT set_config('synchronous_commit', %s, false)", (synchronous_commit,))
            self._db.commit()
        if schema:  # False: the connection only, for another component's tables (the registry)
            self._create_schema()

    def _cursor(self) -> Any:
        if self._db.closed or self._db.broken:  # the server restarted or the link broke: reconnect
            assert psycopg is not None  # __init__ refused to make a PgLedger without it
            self._db = psycopg.connect(self.url, autocommit=False, connect_timeout=self._timeout)
        return self._db.cursor()

    def _begin_write(self, cur: Any) -> None:
        pass  # psycopg opens the transaction with the first statement (autocommit off)

    def _schema_lock(self, cur: Any) -> None:
        # schema creation and migrations race between workers starting together: serialise them
        cur.execute("SELECT pg_advisory_xact_lock(4242001)")

    def _record_error(self, e: BaseException) -> bool:
        # SQLSTATE 22 (data: bigint out of range...) and 23 (integrity: a constraint or rule);
        # never a connection, serialisation or resource error: the server's trouble
        return (psycopg is not None and isinstance(e, (psycopg.DataError, psycopg.IntegrityError))) \
            or super()._record_error(e)

    def _columns(self, cur: Any, table: str) -> set[str]:
        cur.execute("SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = %s", (table,))
        return {r[0] for r in cur.fetchall()}

    def _lock_heads(self, cur: Any, devices: Sequence[str]) -> dict[str, Head | None]:
        devs = list(devices)  # sorted by the caller
        cur.executemany("INSERT INTO heads (device, seq, hash) VALUES (%s, -1, %s) ON CONFLICT DO NOTHING",
                        [(d, GENESIS) for d in devs])
        cur.execute("SELECT device, seq, hash FROM heads WHERE device = ANY(%s) ORDER BY device FOR UPDATE",
                    (devs,))
        return {d: Head(int(s), bytes(h)) for d, s, h in cur.fetchall()}

    def _stored(self, cur: Any, device: str, seqs: list[int]) -> dict[int, bytes]:
        cur.execute("SELECT seq, raw FROM records WHERE device=%s AND seq = ANY(%s)", (device, sorted(set(seqs))))
        return {int(s): bytes(raw) for s, raw in cur.fetchall()}

    def _commit(self) -> None:
        self._db.commit()

    def _rollback(self) -> None:
        try:
            self._db.rollback()
        except psycopg.Error:  # pyright: ignore[reportOptionalMemberAccess] - no PgLedger exists without psycopg
            pass

    def clear(self) -> None:
        with self._lock:
            with self._db.cursor() as cur:
                cur.execute("TRUNCATE records, heads, sessions, rejects, quarantine")
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()
