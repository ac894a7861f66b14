"""The ledger's routes of the HTTP API (host_tools/service/api.py lists them all): sessions by
device, payer, time and whether they were opened offline (with where their re-authorisation
stands), the session service's flags, a device's journal export reconciled against the ledger,
each site's reconciliation status (host_tools/cloud/reconcile_status.py) and the finance export. Without a ledger each answers a 404 problem that says so."""
from __future__ import annotations

from dataclasses import asdict
from typing import Callable
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Query, Response
from pydantic import BaseModel, Field

from host_tools.cloud import chains
from host_tools.cloud.accounts import Principal
from host_tools.cloud.heartbeats import Heartbeats
from host_tools.cloud.ledger import Ledger
from host_tools.cloud.ledger_export import ExportError, iso, parse_time
from host_tools.cloud.ledger_export import export as ledger_export_
from host_tools.cloud.reconcile_status import ExportChecks, site_status, totals
from host_tools.cloud.registry import Registry
from host_tools.cloud.session_store import SessionStore
from host_tools.service.auth import Auth, Problem, visible_device


class JournalRecord(BaseModel):
    seq: int = Field(ge=0, lt=2 ** 63)
    raw: str = Field(min_length=2, max_length=4096)   # a message is at most 2,048 bytes


class JournalIn(BaseModel):
    records: list[JournalRecord] = Field(max_length=20000)
    from_seq: int | None = Field(None, ge=0)

def reauth_status(s, refused: bool) -> str:
    """Where an offline session stands with its re-authorisation (the session service's state of
    it): granted (an order opened for it, or it was paid), refused (flagged reauth_refused), or
    awaiting (the device has not reconnected and asked, or was answered with a transient no)."""
    if refused:
        return "refused"
    if s is not None and (s.order_no is not None or s.status in ("authorized", "paid", "settled")):
        return "granted"
    return "awaiting"


def add_ledger_routes(app: FastAPI, auth: Auth, registry: Registry, _ledger: Callable[[], Ledger],
                      _store: Callable[[], SessionStore], heartbeats: Heartbeats | None = None) -> None:
    """_ledger, _store: the ledger and the session service's tables on it, each a 404 problem
    when the server has no ledger; heartbeats: the last heartbeat of each device (None: none kept)."""
    viewer = auth.need("viewer")
    checks: list[ExportChecks] = []

    def _checks() -> ExportChecks:
        if not checks:
            checks.append(ExportChecks(_ledger()))
        return checks[0]

    @app.get("/v1/sessions")
    def sessions(response: Response, device: str | None = None, payer: str | None = None,
                 state: str | None = Query(None, pattern="^(open|closed)$"), since: str | None = Query(None, alias="from"),
                 until: str | None = Query(None, alias="to"), before: str | None = None,
                 limit: int = Query(100, ge=1, le=1000), offline: bool | None = None,
                 p: Principal = Depends(viewer)) -> list[dict]:
        led = _ledger()
        try:
            t_from = parse_time(since) if since is not None else None
            t_to = parse_time(until) if until is not None else None
        except ExportError as e:
            raise Problem(422, str(e)) from None
        cursor = None
        if before is not None:
            t0, _, rest = before.partition("/")
            dev, _, sid = rest.partition("/")
            if not (t0.isdigit() and dev and sid):
                raise Problem(422, f"bad cursor {before!r}: use the one a page's Link header gives")
            cursor = (int(t0), dev, sid)
        if device is not None and not p.sees(device):
            return []
        rows = led.find(device=device, payer=payer, state=state, since=t_from, until=t_to, prefixes=p.sites,
                        before=cursor, limit=limit, offline=offline)
        if len(rows) == limit:
            q = {k: v for k, v in (("device", device), ("payer", payer), ("state", state), ("from", since),
                                   ("to", until), ("offline", None if offline is None else str(offline).lower()))
                 if v is not None}
            last = rows[-1]
            q.update(before=f"{last.t0}/{last.device}/{last.sid}", limit=str(limit))
            response.headers["Link"] = f'</v1/sessions?{urlencode(q)}>; rel="next"'
        out = [{"device": s.device, "sid": s.sid, "state": s.state, "payer": s.payer, "slot": s.slot,
                "t0": s.t0, "t1": s.t1, "amount": s.amount, "cur": s.currency, "offline": s.offline,
                "auth": s.auth, "reason": s.reason, "lines": s.lines} for s in rows]
        if offline:   # asked for offline sessions: where each stands with its re-authorisation
            st = _store()
            refused = {(f.device, f.sid) for f in st.flags() if f.kind == "reauth_refused"}
            for row in out:
                row["reauth"] = reauth_status(st.load_session(row["device"], row["sid"]),
                                              (row["device"], row["sid"]) in refused)
        return out

    @app.post("/v1/devices/{device_id}/reconcile", name="reconcile")
    def reconcile(device_id: str, body: JournalIn, p: Principal = Depends(viewer)) -> dict:
        """A device's journal export (`edgepay journal export`: what it still holds, each record
        as its signed envelope in hex) against the ledger: records missing from it, extra in it
        (from `from_seq` on: a device forgets what was acknowledged), or with other bytes.
        `device_id` may be a ledger chain DEVICE~R (a fresh board after a re-provisioning, SPEC
        §6): the registry and the caller's sites know it as DEVICE (chains.device_of)."""
        try:
            chains.epoch_of(device_id)
        except ValueError:
            raise Problem(404, f"unknown device {device_id!r}") from None
        visible_device(registry, p, chains.device_of(device_id))
        try:
            items = [(r.seq, bytes.fromhex(r.raw)) for r in body.records]
        except ValueError:
            raise Problem(422, "records[].raw is the envelope in hex") from None
        rec = _ledger().reconcile(device_id, items, from_seq=body.from_seq)
        _checks().record(device_id, rec, len(items))   # the site view's last word on this device
        return {"device": device_id, "ok": rec.ok, "missing": rec.missing, "extra": rec.extra,
                "mismatched": rec.mismatched, "journal_records": len(items)}

    @app.get("/v1/reconciliation")
    def reconciliation(response: Response, site: str | None = None, status: str | None = Query(
                           None, pattern="^(mismatch|flagged|pending|unknown|reconciled)$"),
                       after: str = "", limit: int = Query(100, ge=1, le=1000),
                       p: Principal = Depends(viewer)) -> dict:
        """Each device of a site (a device-id prefix; none: every device the caller sees) and where
        it stands with its money: mismatch, flagged, pending, unknown or reconciled, and why; the
        site's totals over all its devices; a page of devices after `after` (optionally of one
        status), with a `Link` to the next."""
        prefixes = _site(p, site)
        led = _ledger()
        ids = [d.device_id for d in registry.page(after="", limit=10 ** 7, prefixes=prefixes)]
        rows = site_status(ids, led, _store().db, heartbeats.db if heartbeats is not None else None, _checks(),
                           prefixes)
        page = [r for r in rows if r["device"] > after and status in (None, r["status"])][:limit]
        if len(page) == limit:
            q = {k: v for k, v in (("site", site), ("status", status)) if v is not None}
            response.headers["Link"] = f'</v1/reconciliation?{urlencode({**q, "after": page[-1]["device"], "limit": limit})}>; rel="next"'
        return {"site": site, "totals": totals(rows), "devices": page}

    def _site(p: Principal, site: str | None) -> tuple[str, ...] | None:
        if site is None:
            return p.sites
        if p.sites is not None and not any(site.startswith(m) for m in p.sites):
            raise Problem(403, f"{p.user} may see only the sites {', '.join(p.sites)}", "forbidden")
        return (site,)

    @app.get("/v1/flags")
    def flags(device: str | None = None, kind: str | None = None, p: Principal = Depends(viewer)) -> list[dict]:
        return [asdict(f) for f in _store().flags()
                if p.sees(f.device) and device in (None, f.device) and kind in (None, f.kind)]

    @app.get("/v1/ledger/export", response_model=None)
    def ledger_export(since: str = Query(alias="from"), until: str = Query(alias="to"),
                      site: list[str] | None = Query(None), format: str = Query("json", pattern="^(json|csv)$"),
                      p: Principal = Depends(viewer)) -> dict | Response:
        led = _ledger()
        sites = tuple(site) if site else p.sites
        if site and p.sites is not None and not all(any(s.startswith(m) for m in p.sites) for s in site):
            raise Problem(403, f"{p.user} may export only the sites {', '.join(p.sites)}", "forbidden")
        try:
            exp = ledger_export_(led, parse_time(since), parse_time(until), sites)
        except ExportError as e:
            raise Problem(422, str(e)) from None
        if format == "csv":
            name = f"edgepay-ledger-{iso(exp.since)[:10]}-{iso(exp.until)[:10]}.csv"
            return Response(exp.csv(), media_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})
        return exp.as_json()
