"""open_ledger(url): the ledger backend a URL names. Its own module, above the base (ledger.py)
that both backends import, so neither the base nor a backend imports the other's layer back."""
from __future__ import annotations

from typing import Any

from host_tools.cloud.ledger import Ledger
from host_tools.cloud.ledger_pg import PgLedger
from host_tools.cloud.ledger_sqlite import SqliteLedger


def open_ledger(url: str, **kw: Any) -> Ledger:
    """`sqlite:///path/ledger.db`, a plain path, `:memory:`, or `postgresql://...` / a libpq
    conninfo string starting with `host=` / `dbname=`."""
    if url.startswith(("postgresql://", "postgres://")) or url.startswith(("host=", "dbname=")):
        return PgLedger(url, **kw)
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url  # sqlite:////abs/path
    return SqliteLedger(path, **kw)
