"""The HTTP API: devices and their commands, campaigns, accounts and the audit log, health and
metrics.

    GET  /healthz                          the process is alive (no auth)
    GET  /readyz                           200 when the broker connection is up and the databases
                                           answer, else 503 with the reasons (no auth)
    GET  /metrics                          Prometheus text (viewer; no auth with metrics_public)
    GET  /v1/devices?status=&kind=&board=&online=&fw=  the registry's devices with their presence
                                           (viewer; a scoped account: its sites'; online=false: offline
                                           or never seen; host_tools/cloud/presence.py)
    GET  /v1/devices/{id}                  (viewer) with offline_budget: the offline budget used, from
                                           its last heartbeat, against the policy last pushed if known
    GET  /v1/devices/{id}/heartbeats?from=&to=   (viewer) the last heartbeat and the history
                                           (host_tools/cloud/heartbeats.py: full, then hourly)
    POST /v1/devices/{id}/commands         (operator) {"name", "args": {"text": "hi"}, "ttl",
                                           "timeout", "confirm"}: signs and sends, waits for the
                                           signed result; the outcome. An actuating command
                                           (cmdspec.ACTUATING: open, paid, auth, reboot,
                                           cancel_session) needs "confirm": true (428 otherwise)
    POST /v1/devices/{id}/rekey            (admin) {"timeout"}: rotate the device key (SPEC §11,
                                           host_tools/cloud/rekey.py); {"device", "was", "version",
                                           "kid", "resumed"}, or 409 with the reason ("reason":
                                           bad_proof, refused, no_answer...); the generic
                                           commands route refuses `rekey` (422)
    GET  /v1/campaigns, /v1/campaigns/{id} (viewer)
    /v1/webhooks                           (admin) host_tools/service/webhooks_api.py: a command's
                                           final state POSTed, signed, retried, recorded
    GET  /v1/sessions?device=&payer=&state=&from=&to=&offline=&before=&limit=
                                           (viewer) the ledger's sessions, newest start first, paged
                                           (a full page links the next: before=<cursor>)
    GET  /v1/flags?device=&kind=           (viewer) the session service's flags (charge and fee
                                           mismatches, refused reauthorisations, clock skew...)
    GET  /v1/reconciliation?site=&status=&after=&limit=
                                           (viewer) each device of a site and where it stands with
                                           its money: mismatch, flagged, pending, unknown or
                                           reconciled, and why, with the site's totals
    GET  /v1/ledger/export?from=&to=&site=&format=json|csv
                                           (viewer) the closed sessions that ended in [from, to)
                                           with totals per currency (ledger_export.py); a scoped
                                           account exports its sites only
    GET  /v1/alerts?state=&device=&kind=   (viewer) host_tools/service/alerts_api.py
    accounts, tokens, sessions, audit      host_tools/service/accounts_api.py
Who may call what: host_tools/service/auth.py. Errors are RFC 9457 problems
(application/problem+json, "detail" says what): 401 no or a bad token, 403 a role or CSRF refusal,
404 unknown device or campaign (or outside the caller's sites), 409 a revoked device, 422 an
unknown command or a bad argument (nothing is signed or sent), 428 an actuating command without
"confirm": true, 503 the broker is down.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field

from host_tools.cloud import cmdspec
from host_tools.cloud.accounts import Accounts, Principal
from host_tools.cloud.alerts import Alerts
from host_tools.cloud.commands import CommandClient
from host_tools.cloud.heartbeats import Heartbeats, offline_budget
from host_tools.cloud.ledger import Ledger
from host_tools.cloud.ledger_export import ExportError, parse_time
from host_tools.cloud.presence import Presence
from host_tools.cloud.registry import Registry
from host_tools.cloud.rollout_store import RolloutStore
from host_tools.cloud.session_store import SessionStore
from host_tools.cloud.webhooks import Webhooks
from host_tools.service.accounts_api import add_account_routes
from host_tools.service.alerts_api import add_alert_routes
from host_tools.service.webhooks_api import add_webhook_routes
from host_tools.service.auth import AuditMiddleware, Auth, Problem, audit_note, install_problems, visible_device
from host_tools.service.console import add_console_routes
from host_tools.service.ledger_api import add_ledger_routes
from host_tools.service.pushes_api import add_push_routes


log = logging.getLogger("edgepay.serve")


class CommandIn(BaseModel):
    name: str = Field(min_length=1, max_length=24)
    args: dict[str, Any] | None = None
    ttl: int = Field(default=60, ge=1, le=86400)
    timeout: float = Field(default=10.0, gt=0, le=120)
    confirm: bool = False   # required true for an actuating command (cmdspec.ACTUATING)


class RekeyIn(BaseModel):
    timeout: float = Field(default=10.0, gt=0, le=120)   # seconds for each of the device's two answers


class CommandOut(BaseModel):
    device: str
    name: str
    state: str
    code: str | None
    data: Any = None
    cti: str
    seq: int
    elapsed_ms: float


class Device(BaseModel):
    id: str
    kind: str
    board: str
    status: str
    key_version: int
    online: bool | None = None   # None: never seen (no status or hello yet), or no presence kept
    since: float | None = None   # when it went online or offline
    fw: str | None = None        # the firmware version its last hello gave


class DeviceDetail(Device):
    # the offline budget used (its last heartbeat's off_amt, off_n) and, where the policy last pushed
    # is known, its caps and the fractions used (heartbeats.offline_budget); None: no heartbeat kept
    offline_budget: dict | None = None


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.commands = Counter("edgepay_commands", "commands sent through the API, by outcome",
                                ["state"], registry=self.registry)
        self.latency = Histogram("edgepay_command_seconds", "command round trip (sign, send, signed result)",
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.devices = Gauge("edgepay_devices", "registered devices by status", ["status"], registry=self.registry)
        self.ingest_committed = Gauge("edgepay_ingest_committed", "records committed by this process's ingest",
                                      registry=self.registry)
        self.ingest_quarantined = Gauge("edgepay_ingest_quarantined", "records quarantined by this process's ingest",
                                        registry=self.registry)
        self.online = Gauge("edgepay_devices_online", "devices whose last verified status says online",
                            registry=self.registry)
        self.up = Gauge("edgepay_broker_up", "1 while the broker connection is up", registry=self.registry)




def make_app(registry: Registry, client: CommandClient, *, rollouts: RolloutStore | None = None,
             token: str | None = None, accounts: Accounts | None = None,
             ready: Callable[[], list[str]] = lambda: [], ingest_stats: Callable[[], dict] | None = None,
             metrics: Metrics | None = None, metrics_public: bool = False, cookie_secure: bool = True,
             ledger: Ledger | None = None, webhooks: Webhooks | None = None,
             heartbeats: Heartbeats | None = None, presence: Presence | None = None,
             alerts: Alerts | None = None) -> FastAPI:
    """The app over the service's parts. `ready()` lists what is not ready (empty: ready). Every
    /v1 call needs an account's token or session (`accounts`), or the bootstrap `token` (an admin);
    with neither, every /v1 call is refused."""
    m = metrics or Metrics()
    app = FastAPI(title="edgepay", version="1", description=(__doc__ or "").split("\n")[0])
    install_problems(app)
    auth = Auth(accounts, token)
    app.add_middleware(AuditMiddleware, accounts=accounts, auth=auth)
    viewer, operator, admin = auth.need("viewer"), auth.need("operator"), auth.need("admin")
    add_console_routes(app, auth)   # the fleet console's pages (host_tools/service/console.py)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/readyz")
    def readyz():
        missing = ready()
        try:
            registry.devices()
        except Exception as e:  # noqa: BLE001 - any database trouble is "not ready"
            missing.append(f"registry: {e}")
        if missing:
            return JSONResponse({"ready": False, "not_ready": missing}, status_code=503)
        return {"ready": True}

    @app.get("/metrics", dependencies=[] if metrics_public else [Depends(viewer)])
    def metrics_() -> PlainTextResponse:
        counts: dict[str, int] = {}
        for d in registry.devices():
            counts[d.status] = counts.get(d.status, 0) + 1
        for s in ("active", "revoked", "decommissioned"):
            m.devices.labels(s).set(counts.get(s, 0))
        if ingest_stats is not None:
            st = ingest_stats()
            m.ingest_committed.set(st.get("committed", 0))
            m.ingest_quarantined.set(st.get("quarantined", 0))
        if presence is not None:
            m.online.set(presence.online_count())
        m.up.set(0 if any("broker" in r for r in ready()) else 1)
        return PlainTextResponse(generate_latest(m.registry).decode(), media_type="text/plain; version=0.0.4")

    if accounts is not None:
        add_account_routes(app, auth, accounts, cookie_secure=cookie_secure)
    if webhooks is not None:
        add_webhook_routes(app, auth, webhooks)
    if alerts is not None:
        add_alert_routes(app, auth, alerts)
    stores: list[SessionStore] = []   # the session service's tables, on the ledger's database (first use)

    def _ledger() -> Ledger:
        if ledger is None:
            raise Problem(404, "this server has no ledger (the api part runs without [store] ledger)")
        return ledger

    def _store() -> SessionStore:
        if not stores:
            stores.append(SessionStore(_ledger()))
        return stores[0]

    if ledger is not None:   # tariffs and bindings, in the session service's tables on the ledger's database
        add_push_routes(app, auth, registry, client, _store, ready)
    add_ledger_routes(app, auth, registry, _ledger, _store, heartbeats)   # sessions, flags, reconcile, export

    def _device(d, pr: dict | None = None) -> Device:
        pr = pr if pr is not None else (presence.get(d.device_id) if presence is not None else None) or {}
        return Device(id=d.device_id, kind=d.kind, board=d.board, status=d.status, key_version=d.key_version,
                      online=pr.get("online"), since=pr.get("since"), fw=pr.get("fw"))

    def _get(p: Principal, device_id: str):
        return visible_device(registry, p, device_id)

    @app.get("/v1/devices")
    def devices(response: Response, status: str | None = None, kind: str | None = None, board: str | None = None,
                after: str = "", limit: int = Query(100, ge=1, le=1000), online: bool | None = None,
                fw: str | None = None, p: Principal = Depends(viewer)) -> list[Device]:
        """A page of devices in id order, filtered and paged in the database (joined with presence);
        a full page carries a `Link: <...after=LAST>; rel="next"` header (RFC 8288) to the next one."""
        if presence is None and (online is not None or fw is not None):
            raise Problem(422, "this server keeps no presence: no online or fw filter")
        if presence is not None:
            rows = [Device(id=r[0], key_version=r[1], kind=r[2], board=r[3], status=r[4],
                           online=None if r[5] is None else bool(r[5]), since=r[6], fw=r[7])
                    for r in presence.page(after=after, limit=limit, status=status, kind=kind, board=board,
                                           prefixes=p.sites, online=online, fw=fw)]
        else:
            rows = [_device(d, {}) for d in registry.page(after=after, limit=limit, status=status, kind=kind,
                                                           board=board, prefixes=p.sites)]
        if len(rows) == limit:
            q = {k: v for k, v in (("status", status), ("kind", kind), ("board", board), ("fw", fw)) if v is not None}
            if online is not None:
                q["online"] = str(online).lower()
            q.update(after=rows[-1].id, limit=str(limit))
            response.headers["Link"] = f'</v1/devices?{urlencode(q)}>; rel="next"'
        return rows

    @app.get("/v1/devices/{device_id}")
    def device(device_id: str, p: Principal = Depends(viewer)) -> DeviceDetail:
        d = _get(p, device_id)
        return DeviceDetail(**_device(d).model_dump(), offline_budget=_budget(device_id))

    def _budget(device_id: str) -> dict | None:
        last = heartbeats.last(device_id) if heartbeats is not None else None
        if last is None:
            return None
        row = _store().policy(device_id) if ledger is not None else None
        return offline_budget(last["off_amt"], last["off_n"], row[0] if row else None)

    @app.get("/v1/devices/{device_id}/heartbeats")
    def device_heartbeats(device_id: str, since: str | None = Query(None, alias="from"),
                          until: str | None = Query(None, alias="to"), p: Principal = Depends(viewer)) -> dict:
        """The last heartbeat and the history in [from, to) (default: the last 24 h): full
        resolution within the retention, one point per hour (n heartbeats) before it."""
        _get(p, device_id)
        if heartbeats is None:
            raise Problem(404, "this server keeps no heartbeat history")
        now = int(time.time())
        try:
            t_to = parse_time(until) if until is not None else now + 1
            t_from = parse_time(since) if since is not None else t_to - 86400
        except ExportError as e:
            raise Problem(422, str(e)) from None
        if t_to <= t_from or t_to - t_from > 93 * 86400:
            raise Problem(422, "from must be before to, and at most 93 days apart")
        return {"device": device_id, "last": heartbeats.last(device_id),
                "points": heartbeats.history(device_id, t_from, t_to)}

    @app.post("/v1/devices/{device_id}/commands", name="command")
    async def command(device_id: str, body: CommandIn, request: Request,
                      p: Principal = Depends(operator)) -> CommandOut:
        audit_note(request, detail={"name": body.name})
        d = _get(p, device_id)
        if not d.active:
            raise Problem(409, f"device {device_id!r} is {d.status}: it is sent nothing")
        if body.name == "rekey":  # its key must be the registry's next one: the rotation sends it
            raise Problem(422, f"a key rotation is POST /v1/devices/{device_id}/rekey (admin), not a command")
        try:
            args = cmdspec.check(body.name, {_key(k): v for k, v in (body.args or {}).items()} or None)
        except cmdspec.ArgProblem as e:
            raise Problem(422, str(e)) from None
        if body.name in cmdspec.ACTUATING and not body.confirm:
            raise Problem(428, f"{body.name} acts on the world (it opens, ends or restarts something): "
                          'send it again with "confirm": true', "confirmation-required", command=body.name)
        down = ready()
        if down:
            raise Problem(503, "not ready: " + "; ".join(down))
        if body.name == "set_policy" and ledger is not None and args is not None:
            _store().save_policy(device_id, dict(args), time.time())   # the caps of its offline budget
        t0 = time.monotonic()
        c = await client.asend(device_id, body.name, args, timeout=body.timeout, ttl=body.ttl)
        dt = time.monotonic() - t0
        m.commands.labels(c.state.value).inc()
        m.latency.observe(dt)
        audit_note(request, detail={"name": body.name, "cti": c.cti.hex(), "seq": c.seq, "state": c.state.value,
                                    "code": c.code, "confirmed": body.confirm})
        out = CommandOut(device=device_id, name=body.name, state=c.state.value, code=c.code, data=_plain(c.data),
                         cti=c.cti.hex(), seq=c.seq, elapsed_ms=round(dt * 1000, 1))
        if webhooks is not None:
            try:
                webhooks.emit("command.final", {**out.model_dump(), "by": p.user})
            except Exception:  # noqa: BLE001 - the command is done and answered; its event is logged lost
                log.exception("webhooks: command.final of %s not recorded", c.cti.hex())
        return out

    @app.post("/v1/devices/{device_id}/rekey", name="device.rekey")
    async def rekey(device_id: str, body: RekeyIn, request: Request, p: Principal = Depends(admin)) -> dict:
        """Rotate DEVICE's key (SPEC §11): the next key wrapped under the current one, the device's
        proof checked, the switch confirmed under the new key. Safe to call again: it finishes a
        rotation under way. Never for a compromised key (revoke, and provision again over serial)."""
        import asyncio
        import functools

        from host_tools.cloud.rekey import RekeyError, rotate
        d = _get(p, device_id)
        if not d.active:
            raise Problem(409, f"device {device_id!r} is {d.status}: provision it again over serial instead")
        down = ready()
        if down:
            raise Problem(503, "not ready: " + "; ".join(down))
        loop = asyncio.get_running_loop()
        try:
            r = await loop.run_in_executor(None, functools.partial(rotate, client, device_id, timeout=body.timeout))
        except RekeyError as e:
            audit_note(request, detail={"reason": e.code})
            raise Problem(409, e.detail, reason=e.code) from None
        audit_note(request, detail={"was": r.was, "version": r.version, "resumed": r.resumed})
        return r.as_json()

    def _seen(p: Principal, cid: str) -> list:
        assert rollouts is not None
        return [t for t in rollouts.targets(cid) if p.sees(t.device)]

    @app.get("/v1/devices/{device_id}/commands")
    def device_commands(device_id: str, response: Response, before: int | None = None,
                        limit: int = Query(50, ge=1, le=500), p: Principal = Depends(viewer)) -> list[dict]:
        """The commands sent to it through this API (the audit log's entries), newest first, with
        their outcome; a full page links the next (`before=` the last id)."""
        _get(p, device_id)
        if accounts is None:
            raise Problem(404, "this server keeps no audit log")
        rows = accounts.audit(before=before, limit=limit, target=device_id, actions=("command", "tariff.push"))
        if len(rows) == limit:
            response.headers["Link"] = (f'</v1/devices/{device_id}/commands?{urlencode({"before": rows[-1]["id"], "limit": limit})}>; '
                                        'rel="next"')
        out = []
        for r in rows:
            d = r["detail"] or {}
            out.append({"id": r["id"], "at": r["at"], "by": r["actor"], "http": r["status"],
                        "name": d.get("name") or ("set_tariff" if r["action"] == "tariff.push" else None),
                        "state": d.get("state"), "code": d.get("code"), "cti": d.get("cti")})
        return out

    @app.get("/v1/devices/{device_id}/campaigns")
    def device_campaigns(device_id: str, limit: int = Query(50, ge=1, le=500),
                         p: Principal = Depends(viewer)) -> list[dict]:
        """Its update (and command campaign) history, newest first: each campaign's state for it."""
        _get(p, device_id)
        if rollouts is None:
            raise Problem(404, "this server keeps no campaigns")
        return rollouts.device_history(device_id, limit)

    @app.get("/v1/campaigns")
    def campaigns(p: Principal = Depends(viewer)) -> list[dict]:
        # a scoped account sees the campaigns that reach one of its devices (their counts are the
        # campaign's; the targets listed by /v1/campaigns/{id} are only its own)
        if rollouts is None:
            return []
        return [_campaign(c) for c in rollouts.campaigns() if p.sites is None or _seen(p, c.id)]

    @app.get("/v1/campaigns/{cid}")
    def campaign(cid: str, p: Principal = Depends(viewer)) -> dict:
        c = rollouts.campaign(cid) if rollouts is not None else None
        targets = _seen(p, cid) if c is not None else []
        if c is None or (p.sites is not None and not targets):
            raise Problem(404, f"no campaign {cid!r}")
        return {**_campaign(c), "targets": [{"device": t.device, "state": t.state, "reason": t.reason}
                                            for t in targets]}
    return app


def _key(k: str) -> int | str:
    return int(k) if k.isdigit() else k   # "1": the wire key; "text": its name (cmdspec maps it)


def _plain(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _campaign(c) -> dict:
    return {"id": c.id, "action": c.action, "state": c.state, "reason": c.reason, "cohorts": c.cohorts,
            "rate_per_min": c.rate, "counts": c.counts}
