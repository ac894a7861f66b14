"""Who may call the API (issue 13 §3): bearer tokens and browser sessions, roles and sites, CSRF,
typed errors (RFC 9457 problems) and the audit log of every state-changing call.

    Authorization: Bearer ep_...        an API token (host_tools/cloud/accounts.py), or the config's
                                        bootstrap token ([http] token_env): an admin named
                                        `config-token`
    Cookie: edgepay_session=ep_...      a browser session (POST /v1/session); a state-changing
                                        call with it also needs X-CSRF-Token (below)

CSRF: the session cookie is HttpOnly and SameSite=Strict (a browser sends it on no request started
by another site), and every unsafe method (POST, PUT, PATCH, DELETE) made with the cookie must
carry X-CSRF-Token equal to the token the login answered with, whose digest is stored with the
session. SameSite alone is not enough: a sibling subdomain is the same *site*, and older browsers
ignore the attribute; a custom header cannot be set by a cross-origin form or without a CORS
preflight this API never grants, and a token bound to the session (not merely a second cookie, as
a plain double-submit is) cannot be planted by a sibling that can write cookies. A bearer token
needs no CSRF token: no browser attaches it by itself.

Every error is `application/problem+json`: {"type": "urn:edgepay:problem:<kind>", "title",
"status", "detail"} (+ "errors" for a malformed body, "required" for a role refusal).
"""
from __future__ import annotations

import hmac
import logging
from typing import Any, Callable

from fastapi import FastAPI, Request, Security
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyCookie, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from host_tools.cloud.accounts import Accounts, Principal, digest
from host_tools.cloud.registry import RegistryError

log = logging.getLogger("edgepay.serve")

PROBLEM = "urn:edgepay:problem:"
SESSION_COOKIE = "edgepay_session"
CSRF_COOKIE = "edgepay_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE = ("GET", "HEAD", "OPTIONS")
BOOTSTRAP = "config-token"

KINDS = {400: "bad-request", 401: "unauthenticated", 403: "forbidden", 404: "not-found",
         405: "method-not-allowed", 409: "conflict", 422: "invalid", 428: "confirmation-required",
         429: "too-many-attempts",
         503: "unavailable"}
TITLES = {"unauthenticated": "Authentication required", "invalid-token": "The token is not valid",
          "forbidden": "Not allowed for this account", "csrf": "The CSRF token is missing or wrong",
          "not-found": "Not found", "method-not-allowed": "Method not allowed", "conflict": "Conflict",
          "invalid": "The request is not valid", "confirmation-required": "This command needs confirmation",
          "unavailable": "Not ready", "bad-request": "Bad request", "login-failed": "Wrong user name or password",
          "internal": "Internal error", "too-many-attempts": "Too many attempts"}


class Problem(StarletteHTTPException):
    """An HTTP error with an RFC 9457 problem type (`kind`) and extension members."""

    def __init__(self, status: int, detail: str, kind: str | None = None,
                 headers: dict[str, str] | None = None, **ext: Any):
        super().__init__(status, detail, headers)
        self.kind = kind or KINDS.get(status, "error")
        self.ext = ext


def problem_response(status: int, kind: str, detail: Any, headers: dict | None = None, **ext: Any) -> JSONResponse:
    body = {"type": PROBLEM + kind, "title": TITLES.get(kind, kind), "status": status, "detail": detail, **ext}
    return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers,
                        media_type="application/problem+json")


def install_problems(app: FastAPI) -> None:
    """Every HTTP error (ours, FastAPI's 404/405, a malformed body) as a problem document."""
    @app.exception_handler(StarletteHTTPException)
    async def http_problem(request: Request, exc: StarletteHTTPException):
        kind = getattr(exc, "kind", None) or KINDS.get(exc.status_code, "error")
        return problem_response(exc.status_code, kind, exc.detail, getattr(exc, "headers", None),
                                **getattr(exc, "ext", {}))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return problem_response(500, "internal", "the server failed to answer this call; its log says why")

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return problem_response(422, "invalid", f"{where}: {first.get('msg', 'invalid')}" if where else
                                str(first.get("msg", "invalid")), errors=[
                                    {k: e.get(k) for k in ("loc", "msg", "type")} for e in errs])


class Auth:
    """Resolves a request's Principal; `need(role)` is the dependency a route declares."""

    def __init__(self, accounts: Accounts | None, token: str | None = None):
        self.accounts = accounts
        self.token = token

    def principal(self, request: Request) -> Principal:
        got = request.headers.get("authorization")
        if got is not None:
            scheme, _, secret = got.partition(" ")
            if scheme.lower() != "bearer" or not secret:
                raise Problem(401, "use `Authorization: Bearer <token>`", "unauthenticated", _CHALLENGE)
            if self.token is not None and hmac.compare_digest(secret.encode(), self.token.encode()):
                return Principal(BOOTSTRAP, "admin", None, BOOTSTRAP)
            p = self.accounts.check_token(secret) if self.accounts is not None else None
            if p is None:
                raise Problem(401, "the token is unknown, expired or revoked", "invalid-token",
                              {"WWW-Authenticate": 'Bearer error="invalid_token"'})
            return p
        sid = request.cookies.get(SESSION_COOKIE)
        if sid and self.accounts is not None:
            got_s = self.accounts.check_session(sid)
            if got_s is None:
                raise Problem(401, "the session has ended: log in again", "unauthenticated", _CHALLENGE)
            p, csrf = got_s
            if request.method not in SAFE:
                sent = request.headers.get(CSRF_HEADER, "")
                if not sent or not hmac.compare_digest(digest(sent), csrf):
                    raise Problem(403, f"a call made with the session cookie needs the {CSRF_HEADER} header "
                                  "the login answered with", "csrf")
            return p
        raise Problem(401, "a bearer token or a session is required", "unauthenticated", _CHALLENGE)

    def need(self, role: str) -> Callable[[Request], Principal]:
        def dep(request: Request) -> Principal:
            p = self.principal(request)
            request.state.principal = p
            if not p.can(role):
                raise Problem(403, f"this call needs the {role} role; {p.user} is {p.role}", "forbidden",
                              required=role, role=p.role)
            return p
        # FastAPI runs an `async def` dependency on the event loop (a sync one goes to a thread):
        # the token check is one digest and one indexed read, so it stays on the loop
        # (the two security schemes only declare the credentials in the OpenAPI document)
        async def adep(request: Request, _bearer: Any = Security(_BEARER), _cookie: Any = Security(_COOKIE)) -> Principal:
            return dep(request)
        return adep  # type: ignore[return-value]


_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_BEARER = HTTPBearer(auto_error=False, scheme_name="token",
                     description="an API token (`edgepay user token create`) or the config's bootstrap token")
_COOKIE = APIKeyCookie(name=SESSION_COOKIE, auto_error=False, scheme_name="session",
                       description="a browser session (POST /v1/session); unsafe methods also need X-CSRF-Token")


class AuditMiddleware:
    """Records every unsafe /v1 call as it is answered (before the answer is sent, so a caller who
    has its answer finds the entry): who (the principal, or none), what (the
    route's name: command, user.add, token.revoke...; an unknown route: its method and path), the
    target (the path's parameter: a device, a user, a token), the HTTP status and the route's
    detail (a command's id and outcome), also when a dependency refused the call before the route
    ran. Refusals are recorded too (a failed login, a
    forbidden call). Nothing of the request body is recorded but what a route chooses."""

    def __init__(self, app: Any, accounts: Accounts | None, auth: Auth | None = None):
        self.app = app
        self.accounts = accounts
        self.auth = auth

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (scope["type"] != "http" or scope["method"] in SAFE or not scope["path"].startswith("/v1/")
                or self.accounts is None):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        done: list[int] = []

        async def send_recorded(message: dict) -> None:
            if message["type"] == "http.response.start" and not done:
                done.append(message["status"])
                self._record(scope, state, str(message["status"]))   # before the caller hears back
            await send(message)
        try:
            await self.app(scope, receive, send_recorded)
        finally:
            if not done:   # no answer at all (the app raised): the server answers 500
                self._record(scope, state, "500")

    def _record(self, scope: dict, state: dict, status: str) -> None:
        p: Principal | None = state.get("principal")
        if p is None and self.auth is not None:   # no route ran (404, 405): who tried, still
            try:
                p = self.auth.principal(Request(scope))
            except StarletteHTTPException:
                p = None
        a: dict = state.get("audit") or {}
        route = scope.get("route")
        if scope["method"] not in getattr(route, "methods", ()):
            route = None    # a path matched with another method (405): no route's name
        params = list((scope.get("path_params") or {}).values()) if route is not None else []
        action = a.get("action") or getattr(route, "name", None) or f"{scope['method']} {scope['path']}"
        try:
            assert self.accounts is not None
            self.accounts.record(action, status, actor=a.get("actor") or (p.user if p else None),
                                 via=p.via if p else None,
                                 target=a.get("target") or (str(params[0]) if params else None),
                                 detail=a.get("detail"))
        except Exception:  # noqa: BLE001 - the call is done; the failure is logged loudly
            log.exception("audit: could not record %s %s", scope["method"], scope["path"])


def audit_note(request: Request, **kw: Any) -> None:
    """What a route tells the audit log about its call (action, target, detail)."""
    cur = getattr(request.state, "audit", None) or {}
    cur.update(kw)
    request.state.audit = cur


def visible_device(registry: Any, p: Principal, device_id: str) -> Any:
    """The device, if the caller's sites cover it; outside them it is as unknown as a missing one
    (a scoped account does not learn which devices exist elsewhere): 404 either way."""
    try:
        if p.sees(device_id):
            return registry.get(device_id)
    except RegistryError:
        pass
    raise Problem(404, f"unknown device {device_id!r}")
