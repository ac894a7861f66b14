"""The ledger export for finance (issue 13 §2): a period's closed sessions, by site, as CSV or JSON,
with totals per currency.

The totals add up the exported rows; over a period that holds every close they equal the ledger's
own (Ledger.totals), which the tests check. A session is in the period its end falls in:
from <= t1 < to, t1 being the close time the device signed (an offline session's end, not when its record reached the cloud), so a month exported once
and again after a late record lands differs only by that record, and consecutive periods add up to
the whole. Amounts are integer minor units with their currency; nothing is converted or summed
across currencies.

    exp = export(ledger, since=t_from, until=t_to, sites=("site01-",))
    exp.csv()          # one row a session, a header line first
    exp.as_json()      # {"period", "sites", "count", "totals": {"CNY": 12600}, "sessions": [...]}
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

from host_tools.cloud.ledger import Ledger
from host_tools.cloud.ledger_model import Session

COLUMNS = ("device", "sid", "payer", "t0", "t1", "amount", "currency", "offline", "reason", "auth",
           "close_seq")
MAX_SPAN_S = 366 * 86400   # one export is at most a year: a wider one is several


class ExportError(ValueError):
    """A bad period or site list: what is wrong, in words."""


def iso(t: int | None) -> str:
    return "" if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> int:
    """Unix seconds from `2026-11-01`, `2026-11-01T08:00:00Z` (UTC when no offset) or `1793500000`."""
    t = text.strip()
    if t.isdigit():
        return int(t)
    try:
        d = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise ExportError(f"{text!r} is not a time: use 2026-11-01, 2026-11-01T08:00:00Z or Unix seconds") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    return int(d.timestamp())


@dataclass
class Export:
    since: int
    until: int
    sites: tuple[str, ...] | None
    sessions: list[Session]

    @property
    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.sessions:
            if s.currency is not None:
                out[s.currency] = out.get(s.currency, 0) + int(s.amount or 0)
        return dict(sorted(out.items()))

    def rows(self) -> list[dict[str, Any]]:
        return [{"device": s.device, "sid": s.sid, "payer": s.payer, "t0": iso(s.t0), "t1": iso(s.t1),
                 "amount": int(s.amount or 0), "currency": s.currency, "offline": bool(s.offline),
                 "reason": s.reason, "auth": s.auth, "close_seq": s.close_seq} for s in self.sessions]

    def as_json(self) -> dict[str, Any]:
        return {"period": {"from": iso(self.since), "to": iso(self.until)},
                "sites": list(self.sites) if self.sites is not None else None,
                "count": len(self.sessions), "totals": self.totals, "sessions": self.rows()}

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")   # RFC 4180 line ends
        w.writerow(COLUMNS)
        for r in self.rows():
            w.writerow(["" if r[k] is None else str(r[k]).lower() if isinstance(r[k], bool) else r[k]
                        for k in COLUMNS])
        return buf.getvalue()


def export(ledger: Ledger, since: int, until: int, sites: Sequence[str] | None = None) -> Export:
    """The closed sessions that ended in [since, until) on `sites` (device-id prefixes; None: all)."""
    if until <= since:
        raise ExportError(f"the period ends ({iso(until)}) before it starts ({iso(since)})")
    if until - since > MAX_SPAN_S:
        raise ExportError("a period is at most 366 days: export a longer one in parts")
    if sites is not None:
        sites = tuple(sites)
        if any(not s for s in sites):
            raise ExportError("an empty site prefix: name the sites (device-id prefixes) to export")
    return Export(since, until, sites, ledger.closed(since, until, sites))
