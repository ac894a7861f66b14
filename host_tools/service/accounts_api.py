"""The API's account routes: log in and out (a browser session), who am I, and for admins the
accounts, their tokens and the audit log.

    POST   /v1/session           {"user", "password"} -> cookies edgepay_session (HttpOnly,
                                 SameSite=Strict) and edgepay_csrf, and {"csrf", ...} once;
                                 429 after 10 wrong passwords for a name in 15 minutes
    DELETE /v1/session           log out
    GET    /v1/me                the caller: user, role, sites, how it authenticated
    POST   /v1/me/password       {"old", "new"}: the caller's own password; its other browser
                                 sessions end; a wrong `old` is 401 and counts as a wrong login
    POST   /v1/users/{name}/password   admin: {"new"}: set a password; every session of it ends
    GET    /v1/users             admin
    POST   /v1/users             admin: {"name", "role", "password"?, "sites"?}
    DELETE /v1/users/{name}      admin (its tokens and sessions go with it)
    GET    /v1/tokens?user=      admin
    POST   /v1/tokens            admin: {"user", "name", "expires_in_days"} -> the secret, once
    DELETE /v1/tokens/{id}       admin: revoke (the record stays, with revoked_at)
    GET    /v1/audit?before=&limit=&actor=   admin, newest first; `next` pages back
There is no route that changes or deletes an audit entry.
"""
from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from pydantic import BaseModel, Field

from host_tools.cloud.accounts import SESSION_S, AccountError, Accounts, Principal
from host_tools.service.auth import CSRF_COOKIE, SESSION_COOKIE, Auth, Problem, audit_note


# a name with this many refused logins in the window is refused without a password check (the
# count comes from the audit log, so it holds across instances); per-address limits belong to the
# reverse proxy
LOGIN_TRIES, LOGIN_WINDOW_S = 10, 900


class LoginIn(BaseModel):
    user: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class UserIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    role: str
    password: str | None = Field(default=None, max_length=1024)
    sites: list[str] | None = None


class PasswordIn(BaseModel):
    old: str | None = Field(default=None, max_length=1024)
    new: str = Field(min_length=1, max_length=1024)


class TokenIn(BaseModel):
    user: str
    name: str = Field(min_length=1, max_length=64)
    expires_in_days: float = Field(default=90, gt=0, le=366)


def add_account_routes(app: FastAPI, auth: Auth, accounts: Accounts, *, cookie_secure: bool = True) -> None:
    admin = Depends(auth.need("admin"))
    anyone = Depends(auth.need("viewer"))

    def who(p: Principal) -> dict:
        return {"user": p.user, "role": p.role, "sites": list(p.sites) if p.sites is not None else None, "via": p.via}

    @app.post("/v1/session", name="login")
    def login(body: LoginIn, request: Request, response: Response) -> dict:
        # a sync route: the slow password hash runs on a worker thread, not the event loop
        audit_note(request, actor=body.user, target=body.user)
        if accounts.failed_logins(body.user, LOGIN_WINDOW_S) >= LOGIN_TRIES:
            raise Problem(429, f"{LOGIN_TRIES} wrong passwords for {body.user!r} in {LOGIN_WINDOW_S // 60} minutes: "
                          "try again later", "too-many-attempts", {"Retry-After": str(LOGIN_WINDOW_S // 3)})
        p = accounts.check_login(body.user, body.password)
        if p is None:
            raise Problem(401, "wrong user name or password", "login-failed")
        request.state.principal = p
        sid, csrf = accounts.create_session(p.user)
        for name, value, http_only in ((SESSION_COOKIE, sid, True), (CSRF_COOKIE, csrf, False)):
            response.set_cookie(name, value, max_age=SESSION_S, path="/", secure=cookie_secure,
                                httponly=http_only, samesite="strict")
        return {**who(p), "via": "session", "csrf": csrf, "expires_in_s": SESSION_S}

    @app.delete("/v1/session", name="logout")
    def logout(request: Request, response: Response, p: Principal = anyone) -> dict:
        sid = request.cookies.get(SESSION_COOKIE)
        if p.via == "session" and sid:
            accounts.end_session(sid)
        response.delete_cookie(SESSION_COOKIE, path="/")
        response.delete_cookie(CSRF_COOKIE, path="/")
        return {"ok": True}

    @app.get("/v1/me")
    def me(p: Principal = anyone) -> dict:
        return who(p)

    @app.post("/v1/me/password", name="me.password")
    def my_password(body: PasswordIn, request: Request, p: Principal = anyone) -> dict:
        audit_note(request, target=p.user)
        if p.via == "config-token":
            raise Problem(409, "the config's token is no account: it has no password")
        if accounts.failed_logins(p.user, LOGIN_WINDOW_S) >= LOGIN_TRIES:
            raise Problem(429, f"{LOGIN_TRIES} wrong passwords for {p.user!r} in {LOGIN_WINDOW_S // 60} minutes: "
                          "try again later", "too-many-attempts", {"Retry-After": str(LOGIN_WINDOW_S // 3)})
        if body.old is None or accounts.check_login(p.user, body.old) is None:
            raise Problem(401, "the current password is wrong", "login-failed")
        return _set(p.user, body.new, request.cookies.get(SESSION_COOKIE) if p.via == "session" else None)

    @app.post("/v1/users/{name}/password", dependencies=[admin], name="user.password")
    def user_password(name: str, body: PasswordIn, request: Request) -> dict:
        audit_note(request, target=name)
        return _set(name, body.new, None)

    def _set(name: str, new: str, keep: str | None) -> dict:
        try:
            ended = accounts.set_password(name, new, keep)
        except AccountError as e:
            raise Problem(404 if "no user" in str(e) else 422, str(e)) from None
        return {"user": name, "sessions_ended": ended}

    def user_json(u) -> dict:
        return {"name": u.name, "role": u.role, "sites": list(u.sites) if u.sites is not None else None,
                "created_at": u.created_at}

    @app.get("/v1/users", dependencies=[admin])
    def users() -> list[dict]:
        return [user_json(u) for u in accounts.users()]

    @app.post("/v1/users", dependencies=[admin], status_code=201, name="user.add")
    def add_user(body: UserIn, request: Request) -> dict:
        audit_note(request, target=body.name,
                   detail={"role": body.role, "sites": body.sites, "password": body.password is not None})
        try:
            return user_json(accounts.add_user(body.name, body.role, body.password, body.sites))
        except AccountError as e:
            raise Problem(409 if "exists" in str(e) else 422, str(e)) from None

    @app.delete("/v1/users/{name}", dependencies=[admin], name="user.remove")
    def remove_user(name: str, request: Request) -> dict:
        audit_note(request, target=name)
        try:
            accounts.remove_user(name)
        except AccountError as e:
            raise Problem(404 if "no user" in str(e) else 409, str(e)) from None
        return {"removed": name}

    def token_json(t) -> dict:
        return {"id": t.id, "user": t.user, "name": t.name, "created_at": t.created_at,
                "expires_at": t.expires_at, "revoked_at": t.revoked_at}

    @app.get("/v1/tokens", dependencies=[admin])
    def tokens(user: str | None = None) -> list[dict]:
        return [token_json(t) for t in accounts.tokens(user)]

    @app.post("/v1/tokens", dependencies=[admin], status_code=201, name="token.create")
    def create_token(body: TokenIn, request: Request) -> dict:
        audit_note(request, target=body.user, detail={"name": body.name})
        try:
            secret, t = accounts.create_token(body.user, body.name, body.expires_in_days * 86400)
        except AccountError as e:
            raise Problem(404 if "no user" in str(e) else 422, str(e)) from None
        audit_note(request, detail={"name": body.name, "token": t.id, "expires_at": t.expires_at})
        return {**token_json(t), "token": secret}

    @app.delete("/v1/tokens/{token_id}", dependencies=[admin], name="token.revoke")
    def revoke_token(token_id: str, request: Request) -> dict:
        audit_note(request, target=token_id)
        try:
            return token_json(accounts.revoke_token(token_id))
        except AccountError as e:
            raise Problem(404, str(e)) from None

    @app.get("/v1/audit", dependencies=[admin])
    def audit(before: int | None = None, limit: int = 100, actor: str | None = None) -> dict[str, Any]:
        if not 1 <= limit <= 1000:
            raise Problem(422, "limit is 1-1000")
        items = accounts.audit(before=before, limit=limit, actor=actor)
        nxt = items[-1]["id"] if len(items) == limit and items[-1]["id"] > 1 else None
        more = f"&actor={actor}" if actor else ""
        return {"items": items, "next": f"/v1/audit?before={nxt}&limit={limit}{more}" if nxt else None}
