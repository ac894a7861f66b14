"""open_ledger(url): the ledger backend a URL names. Its own module, above the base (ledger.py)
that both backends import, so neither the base nor a backend imports the other's layer back."""
from __future__ import annotations

from typing import Any

from host_tools.cloud.ledger import Ledger
from host_tools.cloud.ledger_pg import PgLedger
from host_tools.cloud.ledger_sqlite import SqliteLedger


def is_postgres(url: str) -> bool:
    """A `postgresql://...` URL or a libpq conninfo string (`host=...`, `dbname=...`)."""
    return url.startswith(("postgresql://", "postgres://", "host=", "dbname="))


def sqlite_path(url: str) -> str:
    """The file of `sqlite:///path`, a plain path, or `:memory:` (sqlite:////abs/path too)."""
    return url[len("sqlite:///"):] if url.startswith("sqlite:///") else url


def open_ledger(url: str, **kw: Any) -> Ledger:
    """`sqlite:///path/ledger.db`, a plain path, `:memory:`, or `postgresql://...` / a libpq
    conninfo string starting with `host=` / `dbname=`. With schema=False, the connection only (for
    another component's tables on the same database: the registry, the rollouts)."""
    if is_postgres(url):
        return PgLedger(url, **kw)
    return SqliteLedger(sqlite_path(url), **kw)
