"""The API's alert routes (viewer; host_tools/cloud/alerts.py raises and resolves them):

    GET /v1/alerts?state=open|resolved&device=&kind=&before=&limit=
        newest first, paged in the database (a full page links the next: before=<last id>); a
        scoped account sees its sites' alerts only, and a device outside them is unknown (404)
"""
from __future__ import annotations

from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Query, Response

from host_tools.cloud.accounts import Principal
from host_tools.cloud.alerts import KINDS, Alerts
from host_tools.service.auth import Auth, Problem


def add_alert_routes(app: FastAPI, auth: Auth, alerts: Alerts) -> None:
    viewer = auth.need("viewer")

    @app.get("/v1/alerts")
    def list_alerts(response: Response, state: str | None = Query(None, pattern="^(open|resolved)$"),
                    device: str | None = None, kind: str | None = None,
                    before: str | None = Query(None, max_length=64), limit: int = Query(100, ge=1, le=1000),
                    p: Principal = Depends(viewer)) -> list[dict]:
        if kind is not None and kind not in KINDS:
            raise Problem(422, f"unknown alert kind {kind!r}: one of {', '.join(KINDS)}")
        if device is not None and not p.sees(device):
            raise Problem(404, f"unknown device {device!r}")
        rows = alerts.list(state=state, device=device, kind=kind, prefixes=p.sites, before=before, limit=limit)
        if len(rows) == limit:
            q = {k: v for k, v in (("state", state), ("device", device), ("kind", kind)) if v is not None}
            q.update(before=rows[-1].id, limit=str(limit))
            response.headers["Link"] = f'</v1/alerts?{urlencode(q)}>; rel="next"'
        return [a.to_json() for a in rows]
