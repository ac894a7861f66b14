"""Operator accounts, their API tokens and browser sessions, and the audit log (issue 13 §3), in
the registry's database (SQLite or PostgreSQL: host_tools/cloud/ledger_db.py), as the schema
component "accounts".

Roles, each allowed what the one before it is: viewer (reads), operator (sends commands), admin
(manages accounts and tokens, reads the audit log). An account may be scoped to sites: a site is a
device-id prefix (`lot7-` covers lot7-gate-1, lot7-vend-2), because device ids are the one name
every device has ([a-z0-9][a-z0-9-]{0,31}, registry.py) and a fleet names them by place; a scoped
account sees and commands only the devices under one of its prefixes. An admin is never scoped.

Secrets:
    password  scrypt (hashlib, the standard library), stored as `scrypt$N$r$p$salt$hash` so the
              cost can be raised later without breaking old hashes; default N=2^14, r=8, p=5
              (OWASP's minimum for scrypt: 16 MiB of memory, about half a second here)
    token     `ep_` + 32 random bytes (urlsafe base64), shown once; stored only as its SHA-256
              digest, found by that digest (a unique index): one hash and one indexed read
    session   the same, for a browser cookie, plus a CSRF token (its digest stored with it)
A long random secret needs no slow hash: nothing can be guessed from its digest.

Tables (schema component "accounts", version 1):
    acc_users     name PK, role, sites (JSON list of prefixes; NULL: every device), pw_hash,
                  created_at
    acc_tokens    id PK (public, `t-…`), user, name, digest UNIQUE, created_at, expires_at,
                  revoked_at
    acc_sessions  digest PK, user, csrf (its digest), created_at, expires_at, revoked_at
    audit         id PK (1, 2, ... in commit order), at, actor, via (token:<id>, session,
                  password, config-token, cli), action, target, status (the HTTP status or "ok"),
                  detail (JSON: the outcome; a command's id `cti` and its state)
The audit table is written only by `record()`; nothing here updates or deletes a row of it, and
the database itself refuses to (triggers on both backends).
"""
from __future__ import annotations

import base64
import hashlib
import functools
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from host_tools.cloud.ledger_db import Database
from host_tools.cloud.ledger_open import is_postgres, open_ledger
from host_tools.cloud.ledger_pg import PgLedger

ACCOUNTS_VERSION = 1
ROLES = ("viewer", "operator", "admin")
USER_NAME = re.compile(r"[a-z][a-z0-9._-]{0,63}")
SITE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
# OWASP's minimum scrypt configuration (N=2^14, r=8, p=5: 16 MiB, five passes)
SCRYPT = {"n": 2 ** 14, "r": 8, "p": 5}
TOKEN_PREFIX = "ep_"
SESSION_S = 8 * 3600


class AccountError(Exception):
    pass


@dataclass(frozen=True)
class Principal:
    """Who a call is made by: the account, its role and sites, and how it authenticated."""
    user: str
    role: str
    sites: tuple[str, ...] | None = None   # device-id prefixes; None: every device
    via: str = "token"                     # token:<id>, session, config-token

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def sees(self, device_id: str) -> bool:
        return self.sites is None or any(device_id.startswith(s) for s in self.sites)


@dataclass(frozen=True)
class User:
    name: str
    role: str
    sites: tuple[str, ...] | None
    created_at: float


@dataclass(frozen=True)
class Token:
    id: str
    user: str
    name: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None


# ---- secrets --------------------------------------------------------------------------------
def hash_password(password: str, *, n: int = SCRYPT["n"], r: int = SCRYPT["r"], p: int = SCRYPT["p"]) -> str:
    salt = os.urandom(16)
    dk = _scrypt(password, salt, n, r, p)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(dk)}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, dk = stored.split("$")
        if scheme != "scrypt":
            return False
        got = _scrypt(password, _unb64(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(dk))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)


@functools.cache
def _dummy(n: int, r: int, p: int) -> str:
    """A hash to check an unknown name's password against, at the cost a real one has."""
    return hash_password("not a password", n=n, r=r, p=p)


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _schema(db: Database) -> list[str]:
    blob = db.blob
    audit_id = "BIGINT PRIMARY KEY" if isinstance(db, PgLedger) else "INTEGER PRIMARY KEY"
    return [
        """CREATE TABLE IF NOT EXISTS acc_users (
            name TEXT PRIMARY KEY, role TEXT NOT NULL, sites TEXT, pw_hash TEXT,
            created_at DOUBLE PRECISION NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS acc_tokens (
            id TEXT PRIMARY KEY, usr TEXT NOT NULL, name TEXT NOT NULL, digest {blob} NOT NULL UNIQUE,
            created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION, revoked_at DOUBLE PRECISION)""",
        f"""CREATE TABLE IF NOT EXISTS acc_sessions (
            digest {blob} PRIMARY KEY, usr TEXT NOT NULL, csrf {blob} NOT NULL,
            created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
            revoked_at DOUBLE PRECISION)""",
        f"""CREATE TABLE IF NOT EXISTS audit (
            id {audit_id}, at DOUBLE PRECISION NOT NULL, actor TEXT, via TEXT, action TEXT NOT NULL,
            target TEXT, status TEXT NOT NULL, detail TEXT)""",
        "CREATE INDEX IF NOT EXISTS audit_target ON audit (target, at)",
        *(_PG_APPEND_ONLY if isinstance(db, PgLedger) else _SQLITE_APPEND_ONLY),
    ]


# The database refuses to change or delete an audit row, whatever code asks (a bug, an injected
# statement); only the database's owner dropping the trigger can (a retention job, deliberately).
_SQLITE_APPEND_ONLY = [
    f"CREATE TRIGGER IF NOT EXISTS audit_no_{op.lower()} BEFORE {op} ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END" for op in ("UPDATE", "DELETE")]
_PG_APPEND_ONLY = [
    """CREATE OR REPLACE FUNCTION edgepay_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$""",
    """DO $$ BEGIN
         IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'audit_append_only') THEN
           CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit
             FOR EACH STATEMENT EXECUTE FUNCTION edgepay_audit_append_only();
         END IF;
       END $$""",
]


class Accounts:
    """The accounts, tokens, sessions and audit log on one database connection (shared by threads
    through its lock). `scrypt` overrides the password hash's cost for new hashes (tests)."""

    def __init__(self, db: Database, *, own: bool = False, scrypt: dict | None = None):
        self.db = db
        self._own = own
        self.scrypt = dict(scrypt or SCRYPT)
        db.ensure_schema("accounts", _schema(db), ACCOUNTS_VERSION)

    @classmethod
    def open(cls, url: str, **kw: Any) -> "Accounts":
        """On the registry's database: a SQLite path / sqlite:/// URL or a postgresql:// URL."""
        if is_postgres(url):
            return cls(open_ledger(url, schema=False), own=True, **kw)
        return cls(open_ledger(url, synchronous="NORMAL", timeout=30.0, schema=False), own=True, **kw)

    def close(self) -> None:
        if self._own:
            self.db.close()

    # ---- users ---------------------------------------------------------------------------
    def add_user(self, name: str, role: str, password: str | None = None,
                 sites: list[str] | tuple[str, ...] | None = None) -> User:
        if not USER_NAME.fullmatch(name):
            raise AccountError(f"bad user name {name!r}: use [a-z][a-z0-9._-]{{0,63}}")
        if role not in ROLES:
            raise AccountError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
        sites_t = tuple(sites) if sites else None
        if sites_t is not None:
            if role == "admin":
                raise AccountError("an admin is not scoped to sites (an admin manages every account)")
            bad = [s for s in sites_t if not SITE.fullmatch(s)]
            if bad:
                raise AccountError(f"bad site {bad[0]!r}: a site is a device-id prefix, e.g. lot7-")
        if password is not None and len(password) < 8:
            raise AccountError("a password has 8 characters at least")
        pw = hash_password(password, **self.scrypt) if password is not None else None
        now = time.time()
        db = self.db

        def run(cur: Any) -> int:
            cur.execute(db._sql("INSERT INTO acc_users (name, role, sites, pw_hash, created_at) VALUES (?,?,?,?,?) "
                                "ON CONFLICT (name) DO NOTHING"),
                        (name, role, json.dumps(list(sites_t)) if sites_t else None, pw, now))
            return cur.rowcount
        if db._write(run) != 1:
            raise AccountError(f"user {name!r} exists")
        return User(name, role, sites_t, now)

    def users(self) -> list[User]:
        return [self._user(r) for r in self.db._read("SELECT name, role, sites, created_at FROM acc_users ORDER BY name")]

    def user(self, name: str) -> User | None:
        rows = self.db._read("SELECT name, role, sites, created_at FROM acc_users WHERE name=?", (name,))
        return self._user(rows[0]) if rows else None

    @staticmethod
    def _user(r: tuple) -> User:
        return User(r[0], r[1], tuple(json.loads(r[2])) if r[2] else None, r[3])

    def remove_user(self, name: str) -> None:
        """The account, its tokens and its sessions (the audit log keeps its name). The last admin
        stays (someone must be able to manage the accounts)."""
        db = self.db

        def run(cur: Any) -> int:
            cur.execute(db._sql("SELECT role FROM acc_users WHERE name=?"), (name,))
            row = cur.fetchone()
            if row is not None and row[0] == "admin":
                cur.execute("SELECT COUNT(*) FROM acc_users WHERE role='admin'")
                if int(cur.fetchone()[0]) <= 1:
                    raise AccountError(f"{name!r} is the last admin: add another admin first")
            cur.execute(db._sql("DELETE FROM acc_users WHERE name=?"), (name,))
            n = cur.rowcount
            cur.execute(db._sql("DELETE FROM acc_tokens WHERE usr=?"), (name,))
            cur.execute(db._sql("DELETE FROM acc_sessions WHERE usr=?"), (name,))
            return n
        if db._write(run) != 1:
            raise AccountError(f"no user {name!r}")

    def set_password(self, name: str, password: str, keep_session: str | None = None) -> int:
        """A new password for `name`; its browser sessions end (all but `keep_session`, the one
        that asked, if any): a password changed because it leaked must shut out whoever used it.
        API tokens are credentials of their own and stay (revoke them apart). Sessions ended."""
        if len(password) < 8:
            raise AccountError("a password has 8 characters at least")
        pw, now, db = hash_password(password, **self.scrypt), time.time(), self.db
        keep = digest(keep_session) if keep_session else b""

        def run(cur: Any) -> int:
            cur.execute(db._sql("UPDATE acc_users SET pw_hash=? WHERE name=?"), (pw, name))
            if cur.rowcount != 1:
                raise AccountError(f"no user {name!r}")
            cur.execute(db._sql("UPDATE acc_sessions SET revoked_at=? WHERE usr=? AND revoked_at IS NULL "
                                "AND expires_at > ? AND digest <> ?"), (now, name, now, keep))
            return cur.rowcount
        return db._write(run)

    def check_login(self, name: str, password: str) -> Principal | None:
        """The account if the password is right; the same slow hash is run for an unknown name, so
        the time taken does not tell which names exist."""
        rows = self.db._read("SELECT name, role, sites, created_at, pw_hash FROM acc_users WHERE name=?", (name,))
        if not rows or rows[0][4] is None:
            check_password(password, _dummy(self.scrypt["n"], self.scrypt["r"], self.scrypt["p"]))
            return None
        if not check_password(password, rows[0][4]):
            return None
        u = self._user(rows[0][:4])
        return Principal(u.name, u.role, u.sites, "password")

    # ---- tokens --------------------------------------------------------------------------
    def create_token(self, user: str, name: str, expires_in_s: float | None = 90 * 86400) -> tuple[str, Token]:
        """A new API token for `user`: (the secret, shown once; its record)."""
        if self.user(user) is None:
            raise AccountError(f"no user {user!r}")
        if not name or len(name) > 64:
            raise AccountError("a token has a name (1-64 characters): what it is for")
        if expires_in_s is not None and expires_in_s <= 0:
            raise AccountError("a token's lifetime is positive (or none: it does not expire)")
        secret, now = new_secret(), time.time()
        t = Token("t-" + secrets.token_hex(6), user, name, now, now + expires_in_s if expires_in_s else None, None)
        db = self.db
        db._write(lambda cur: cur.execute(db._sql(
            "INSERT INTO acc_tokens (id, usr, name, digest, created_at, expires_at) VALUES (?,?,?,?,?,?)"),
            (t.id, user, name, digest(secret), now, t.expires_at)))
        return secret, t

    def tokens(self, user: str | None = None) -> list[Token]:
        where, args = (" WHERE usr=?", (user,)) if user else ("", ())
        rows = self.db._read("SELECT id, usr, name, created_at, expires_at, revoked_at FROM acc_tokens"
                             f"{where} ORDER BY created_at, id", args)
        return [Token(*r) for r in rows]

    def revoke_token(self, token_id: str) -> Token:
        db = self.db

        def run(cur: Any) -> int:
            cur.execute(db._sql("UPDATE acc_tokens SET revoked_at=? WHERE id=? AND revoked_at IS NULL"),
                        (time.time(), token_id))
            return cur.rowcount
        db._write(run)
        got = [t for t in self.tokens() if t.id == token_id]
        if not got:
            raise AccountError(f"no token {token_id!r}")
        return got[0]

    def check_token(self, secret: str) -> Principal | None:
        """The token's account if it is known, unexpired and unrevoked: one SHA-256 and one read."""
        if not secret.startswith(TOKEN_PREFIX):
            return None
        rows = self.db._read(
            "SELECT t.id, t.expires_at, t.revoked_at, u.name, u.role, u.sites FROM acc_tokens t "
            "JOIN acc_users u ON u.name = t.usr WHERE t.digest=?", (digest(secret),))
        if not rows:
            return None
        tid, exp, revoked, name, role, sites = rows[0]
        if revoked is not None or (exp is not None and exp <= time.time()):
            return None
        return Principal(name, role, tuple(json.loads(sites)) if sites else None, f"token:{tid}")

    # ---- browser sessions ------------------------------------------------------------------
    def create_session(self, user: str, lifetime_s: float = SESSION_S) -> tuple[str, str]:
        """(the session cookie's secret, its CSRF token); only their digests are stored."""
        sid, csrf, now = new_secret(), secrets.token_urlsafe(32), time.time()
        db = self.db

        def run(cur: Any) -> None:
            cur.execute(db._sql("DELETE FROM acc_sessions WHERE expires_at < ?"), (now - 86400,))  # ended a day ago
            cur.execute(db._sql("INSERT INTO acc_sessions (digest, usr, csrf, created_at, expires_at) VALUES (?,?,?,?,?)"),
                        (digest(sid), user, digest(csrf), now, now + lifetime_s))
        db._write(run)
        return sid, csrf

    def check_session(self, sid: str) -> tuple[Principal, bytes] | None:
        """The session's account and its CSRF token's digest, if live."""
        rows = self.db._read(
            "SELECT s.csrf, s.expires_at, s.revoked_at, u.name, u.role, u.sites FROM acc_sessions s "
            "JOIN acc_users u ON u.name = s.usr WHERE s.digest=?", (digest(sid),))
        if not rows:
            return None
        csrf, exp, revoked, name, role, sites = rows[0]
        if revoked is not None or exp <= time.time():
            return None
        return Principal(name, role, tuple(json.loads(sites)) if sites else None, "session"), bytes(csrf)

    def end_session(self, sid: str) -> None:
        db = self.db
        db._write(lambda cur: cur.execute(db._sql("UPDATE acc_sessions SET revoked_at=? WHERE digest=?"),
                                          (time.time(), digest(sid))))

    # ---- audit -----------------------------------------------------------------------------
    def record(self, action: str, status: str, *, actor: str | None = None, via: str | None = None,
               target: str | None = None, detail: Any = None) -> int:
        """Append one audit entry; its id. Ids follow commit order (the write lock on SQLite, a
        transaction-scoped advisory lock on PostgreSQL), so paging by id misses nothing."""
        db = self.db
        pg = isinstance(db, PgLedger)

        def run(cur: Any) -> int:
            if pg:
                cur.execute("SELECT pg_advisory_xact_lock(4242013)")
            cur.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM audit")
            new = int(cur.fetchone()[0])
            cur.execute(db._sql("INSERT INTO audit (id, at, actor, via, action, target, status, detail) "
                                "VALUES (?,?,?,?,?,?,?,?)"),
                        (new, time.time(), actor, via, action, target, str(status),
                         json.dumps(detail, sort_keys=True, default=str) if detail is not None else None))
            return new
        return db._write(run)

    def failed_logins(self, name: str, within_s: float) -> int:
        """How many refused logins as `name` the audit log holds for the last `within_s` seconds
        (every instance on this database writes there, so the count is the fleet's)."""
        # a wrong current password given to change it (me.password) is a guess like a wrong login
        rows = self.db._read("SELECT COUNT(*) FROM audit WHERE target=? AND at > ? AND action IN "
                             "('login', 'me.password') AND status='401'", (name, time.time() - within_s))
        return int(rows[0][0])

    def audit(self, *, before: int | None = None, limit: int = 100, actor: str | None = None,
              target: str | None = None, actions: tuple[str, ...] = ()) -> list[dict]:
        """Entries newest first; `before` (an id) pages back; `target` and `actions` narrow them."""
        conds: list[str] = []
        args: list = []
        for col, v in (("id < ?", before), ("actor = ?", actor), ("target = ?", target)):
            if v is not None:
                conds.append(col)
                args.append(v)
        if actions:
            conds.append(f"action IN ({self.db._ph(len(actions))})")
            args.extend(actions)
        where = (" WHERE " + " AND ".join(conds)) if conds else ""
        rows = self.db._read(f"SELECT id, at, actor, via, action, target, status, detail FROM audit{where} "
                             f"ORDER BY id DESC LIMIT {int(limit)}", tuple(args))
        return [{"id": r[0], "at": r[1], "actor": r[2], "via": r[3], "action": r[4], "target": r[5],
                 "status": r[6], "detail": json.loads(r[7]) if r[7] else None} for r in rows]
