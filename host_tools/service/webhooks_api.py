"""The API's webhook routes (admin; host_tools/cloud/webhooks.py does the sending):

    POST   /v1/webhooks                  {"url", "events": ["command.final"]} -> the hook and its
                                         secret, shown this once (receivers verify signatures with it)
    GET    /v1/webhooks                  the hooks (no secrets)
    DELETE /v1/webhooks/{id}             its pending deliveries are failed, kept on record
    GET    /v1/webhooks/{id}/deliveries  newest first: state, attempts, the last status or error
"""
from __future__ import annotations

from fastapi import Depends, FastAPI, Query, Request
from pydantic import BaseModel, Field

from host_tools.cloud.webhooks import Webhooks, WebhookError
from host_tools.service.auth import Auth, Problem, audit_note


class HookIn(BaseModel):
    url: str = Field(min_length=1, max_length=2048)
    events: list[str] = Field(min_length=1, max_length=8)


def add_webhook_routes(app: FastAPI, auth: Auth, hooks: Webhooks) -> None:
    admin = Depends(auth.need("admin"))

    def hook_json(h) -> dict:
        return {"id": h.id, "url": h.url, "events": list(h.events), "created_at": h.created_at}

    @app.post("/v1/webhooks", dependencies=[admin], status_code=201, name="webhook.add")
    def add(body: HookIn, request: Request) -> dict:
        audit_note(request, detail={"url": body.url, "events": body.events})
        try:
            h, secret = hooks.add(body.url, body.events)
        except WebhookError as e:
            raise Problem(422, str(e)) from None
        audit_note(request, target=h.id)
        return {**hook_json(h), "secret": secret}

    @app.get("/v1/webhooks", dependencies=[admin])
    def list_() -> list[dict]:
        return [hook_json(h) for h in hooks.hooks()]

    @app.delete("/v1/webhooks/{hook_id}", dependencies=[admin], name="webhook.remove")
    def remove(hook_id: str) -> dict:
        try:
            hooks.remove(hook_id)
        except WebhookError as e:
            raise Problem(404, str(e)) from None
        return {"removed": hook_id}

    @app.get("/v1/webhooks/{hook_id}/deliveries", dependencies=[admin])
    def deliveries(hook_id: str, limit: int = Query(100, ge=1, le=1000)) -> list[dict]:
        if not any(h.id == hook_id for h in hooks.hooks()):
            raise Problem(404, f"no webhook {hook_id!r}")
        return [{"id": d.id, "event": d.event, "state": d.state, "attempts": d.attempts,
                 "last_status": d.last_status, "last_error": d.last_error, "created_at": d.created_at,
                 "done_at": d.done_at} for d in hooks.deliveries(hook_id, limit)]
