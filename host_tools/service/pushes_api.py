"""The API's pushes of what the session service charges by (operator; scoped to the caller's sites):

    PUT    /v1/devices/{id}/tariff   {"args": {"version": 3, "cur": "EUR", ...} (names or wire keys,
                                     as for commands), "timeout": 10, "ttl": 60}: checked (cmdspec and
                                     fees.validate), stored in the session service's table first, then
                                     sent as the signed `set_tariff` command; -> its outcome
    GET    /v1/devices/{id}/tariff   (viewer) the tariff last pushed and when
    PUT    /v1/devices/{id}/policy   {"args": {"version": 2, "cur": "EUR", "per_payer_cap": ..., ...}, ...}:
                                     the offline risk policy (cmdspec-checked), stored first (svc_policies:
                                     the caps the device's offline budget is measured against) and sent
                                     as the signed `set_policy`; -> its outcome
    GET    /v1/devices/{id}/policy   (viewer) the policy last pushed and when
    PUT    /v1/bindings/{ident}      {"account": "acct-42"}: a plate / QR / tag -> pay-after account
    GET    /v1/bindings/{ident}      the account it is bound to (404: unbound)
    DELETE /v1/bindings/{ident}

The session service charges by the tariff it last sent each device: a `set_tariff` sent through
POST /v1/devices/{id}/commands would leave it charging by an older one (fee_mismatch flags on
every close), so the tariff goes through here, which writes the store the `sessions` part reads.
Bindings name people's plates and tags: an operator without site scope only (403 otherwise).
"""
from __future__ import annotations

import time
from typing import Any, Callable

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, Field

from host_tools.cloud import cmdspec, fees
from host_tools.cloud.accounts import Principal
from host_tools.cloud.commands import CommandClient
from host_tools.cloud.registry import Registry
from host_tools.cloud.session_store import SessionStore
from host_tools.service.auth import Auth, Problem, audit_note, visible_device


class TariffIn(BaseModel):
    args: dict[str, Any]
    timeout: float = Field(10.0, gt=0, le=120)
    ttl: int = Field(60, ge=1, le=86400)


class BindingIn(BaseModel):
    account: str = Field(min_length=1, max_length=64)


def _plain_args(args: dict) -> dict:
    return {str(k): v for k, v in args.items()}


def add_push_routes(app: FastAPI, auth: Auth, registry: Registry, client: CommandClient,
                    store: Callable[[], SessionStore], ready: Callable[[], list[str]]) -> None:
    """store: the session service's tables on the ledger's database (made at first use)."""
    viewer, operator = auth.need("viewer"), auth.need("operator")

    def device(p: Principal, device_id: str):
        return visible_device(registry, p, device_id)

    def unscoped(p: Principal) -> None:
        if p.sites is not None:
            raise Problem(403, "bindings name payers across sites: an account without site scope only")

    async def push(name: str, save, device_id: str, body: TariffIn, request: Request, p: Principal) -> dict:
        """A signed push (set_tariff, set_policy): checked, stored before it is sent (as the session
        service does: a push that times out is still on record), sent, audited."""
        d = device(p, device_id)
        if not d.active:
            raise Problem(409, f"device {device_id!r} is {d.status}: it is sent nothing")
        try:
            args = cmdspec.check(name, {(int(k) if k.isdigit() else k): v for k, v in body.args.items()})
            if name == "set_tariff":
                fees.validate(args)
        except (cmdspec.ArgProblem, fees.FeeError) as e:
            raise Problem(422, str(e)) from None
        assert args is not None
        down = ready()
        if down:
            raise Problem(503, "not ready: " + "; ".join(down))
        save(device_id, dict(args), time.time())
        c = await client.asend(device_id, name, dict(args), timeout=body.timeout, ttl=body.ttl)
        audit_note(request, detail={"cti": c.cti.hex(), "state": c.state.value, "version": args.get(1)})
        return {"device": device_id, "state": c.state.value, "code": c.code, "cti": c.cti.hex(), "seq": c.seq,
                "args": _plain_args(args)}

    def pushed(row, device_id: str, what: str) -> dict:
        if row is None:
            raise Problem(404, f"no {what} pushed to {device_id!r}")
        return {"device": device_id, "args": _plain_args(row[0]), "sent_at": row[1]}

    @app.put("/v1/devices/{device_id}/tariff", name="tariff.push")
    async def push_tariff(device_id: str, body: TariffIn, request: Request,
                          p: Principal = Depends(operator)) -> dict:
        return await push("set_tariff", store().save_tariff, device_id, body, request, p)

    @app.get("/v1/devices/{device_id}/tariff")
    def get_tariff(device_id: str, p: Principal = Depends(viewer)) -> dict:
        device(p, device_id)
        return pushed(store().tariff(device_id), device_id, "tariff")

    @app.put("/v1/devices/{device_id}/policy", name="policy.push")
    async def push_policy(device_id: str, body: TariffIn, request: Request,
                          p: Principal = Depends(operator)) -> dict:
        # the caps its offline budget is read against (the device detail, the offline_budget alert)
        return await push("set_policy", store().save_policy, device_id, body, request, p)

    @app.get("/v1/devices/{device_id}/policy")
    def get_policy(device_id: str, p: Principal = Depends(viewer)) -> dict:
        device(p, device_id)
        return pushed(store().policy(device_id), device_id, "offline policy")

    @app.put("/v1/bindings/{ident}", name="binding.set")
    def bind(ident: str, body: BindingIn, request: Request, p: Principal = Depends(operator)) -> dict:
        unscoped(p)
        if not 1 <= len(ident) <= 64:
            raise Problem(422, "an identity (plate, QR token, tag) is 1-64 characters")
        store().set_binding(ident, body.account)
        audit_note(request, target=ident, detail={"account": body.account})
        return {"ident": ident, "account": body.account}

    @app.get("/v1/bindings/{ident}")
    def binding(ident: str, p: Principal = Depends(operator)) -> dict:
        unscoped(p)
        account = store().binding(ident)
        if account is None:
            raise Problem(404, f"{ident!r} is not bound")
        return {"ident": ident, "account": account}

    @app.delete("/v1/bindings/{ident}", name="binding.remove")
    def unbind(ident: str, request: Request, p: Principal = Depends(operator)) -> dict:
        unscoped(p)
        if store().binding(ident) is None:
            raise Problem(404, f"{ident!r} is not bound")
        store().set_binding(ident, None)
        audit_note(request, target=ident)
        return {"ident": ident, "account": None}
