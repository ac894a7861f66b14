"""The fleet console (issue 13 §4): static pages served by the API's app, which call the /v1 API
from the browser with the session cookie and the X-CSRF-Token header (host_tools/service/auth.py).

    GET /                     redirects to /console/
    GET /console/             the page shell (host_tools/service/console/index.html); the pages
                              are views of one module (console/app.js): #/login, #/devices,
                              #/device/ID, #/sessions
    GET /console/static/...   app.js, console.css
    GET /console/commands.json   (viewer) the command names, their arguments and which act on
                              the world (the page asks for a confirmation before it sends those)

The shell and its static files are the same for everyone and carry no data, so they answer without
auth (the login page is one of them); every datum comes from /v1, which checks the caller. No build
step, no CDN: one hand-written module, so the console runs where the service runs, offline.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from host_tools.cloud import cmdspec
from host_tools.service.auth import Auth

STATIC = Path(__file__).with_name("console")

# the pages run only their own script and talk only to this origin; no other site may frame them
# (a framed console could be clicked into confirming a command)
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                      "base-uri 'none'; form-action 'self'",
           "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
           "Cache-Control": "no-cache"}


def add_console_routes(app: FastAPI, auth: Auth) -> None:
    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=307)

    @app.get("/console", include_in_schema=False)
    @app.get("/console/", include_in_schema=False)
    def shell() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)

    @app.get("/console/commands.json", include_in_schema=False, dependencies=[Depends(auth.need("viewer"))])
    def commands() -> list[dict]:
        return [{"name": name, "help": help_, "actuating": name in cmdspec.ACTUATING,
                 "args": None if args is None else [{"name": a.name, "type": a.kind, "required": a.required}
                                                     for a in args]}
                for name, (args, help_) in cmdspec.COMMANDS.items()]

    app.mount("/console/static", _Static(directory=STATIC), name="console-static")


class _Static(StaticFiles):
    """StaticFiles with the console's security headers."""

    async def get_response(self, path, scope):  # type: ignore[override]
        r = await super().get_response(path, scope)
        r.headers.update(HEADERS)
        return r
