"""`edgepay user ...` (host_tools/cli/user.py) on SQLite and PostgreSQL: the bootstrap path (an
admin made from the command line, no config token), scoped accounts, tokens shown once and
revocable, the refusals (duplicate, last admin, unknown token, bad role), and each change in the
audit log the API serves."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from host_tools.cli import cli
from host_tools.cloud.accounts import Accounts
from host_tools.cloud.ledger_open import sqlite_path
from host_tools.cloud.registry import Registry


@pytest.fixture
def reg_url(ledger_url):
    return sqlite_path(ledger_url)   # the CLI takes a SQLite file as a plain path


def edgepay(reg_url, *args, input=None, code=0):
    r = CliRunner().invoke(cli, ["--registry", reg_url, "--json", *args], input=input, catch_exceptions=True)
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert r.exit_code == code, (r.exit_code, r.output)
    assert "Traceback" not in r.output
    return json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else None


def test_user_commands_bootstrap_an_admin_and_manage_tokens(reg_url):
    out = edgepay(reg_url, "user", "add", "ada", "--role", "admin", "--password-stdin", input="a long password\n")
    assert out == {"user": "ada", "role": "admin", "sites": None}
    assert edgepay(reg_url, "user", "add", "lot7", "--role", "operator", "--site", "lot7-", "--site", "lot8-",
                   "--no-password")["sites"] == ["lot7-", "lot8-"]
    assert [u["user"] for u in edgepay(reg_url, "user", "list")] == ["ada", "lot7"]
    tok = edgepay(reg_url, "user", "token", "create", "ada", "--name", "ci", "--expires-days", "30")
    assert tok["token"].startswith("ep_") and tok["id"].startswith("t-")
    listed = edgepay(reg_url, "user", "token", "list")
    assert [t["id"] for t in listed] == [tok["id"]] and "token" not in listed[0] and "digest" not in listed[0]
    reg = Registry(reg_url)
    acc = Accounts(reg.db)
    try:
        p = acc.check_token(tok["token"])           # what `edgepay serve` checks a bearer token with
        assert p is not None and (p.user, p.role) == ("ada", "admin")
        assert acc.check_login("ada", "a long password") is not None
        assert acc.check_login("lot7", "") is None                 # no password: tokens only
        edgepay(reg_url, "user", "token", "revoke", tok["id"])
        assert acc.check_token(tok["token"]) is None
        # refusals: one clear line, nothing changed
        assert edgepay(reg_url, "user", "add", "ada", "--role", "viewer", "--no-password", code=1)["error"] == "user 'ada' exists"
        assert "last admin" in edgepay(reg_url, "user", "remove", "ada", code=1)["error"]
        assert "no token" in edgepay(reg_url, "user", "token", "revoke", "t-000", code=1)["error"]
        assert "no user" in edgepay(reg_url, "user", "token", "create", "zed", "--name", "x", code=1)["error"]
        assert edgepay(reg_url, "user", "add", "x", "--role", "root", "--no-password", code=2)["code"] == "usage"
        assert "admin is not scoped" in edgepay(reg_url, "user", "add", "y", "--role", "admin", "--site", "a-",
                                                "--no-password", code=1)["error"]
        edgepay(reg_url, "user", "remove", "lot7")
        assert [u.name for u in acc.users()] == ["ada"]
        trail = [(e["action"], e["target"], e["via"]) for e in reversed(acc.audit())]
        assert trail == [("user.add", "ada", "cli"), ("user.add", "lot7", "cli"), ("token.create", "ada", "cli"),
                         ("token.revoke", tok["id"], "cli"), ("user.remove", "lot7", "cli")]
        assert all(e["actor"].startswith("cli") for e in acc.audit())
    finally:
        reg.close()


def test_user_passwd_sets_a_password_and_ends_its_sessions(reg_url):
    edgepay(reg_url, "user", "add", "ada", "--role", "admin", "--password-stdin", input="a long password\n")
    reg = Registry(reg_url)
    acc = Accounts(reg.db)
    try:
        acc.create_session("ada")
        tok = acc.create_token("ada", "ci")[0]
        out = edgepay(reg_url, "user", "passwd", "ada", "--password-stdin", input="another long one\n")
        assert out == {"user": "ada", "sessions_ended": 1}
        assert acc.check_login("ada", "a long password") is None and acc.check_login("ada", "another long one")
        assert acc.check_token(tok) is not None                      # tokens are credentials of their own
        assert "8 characters" in edgepay(reg_url, "user", "passwd", "ada", "--password-stdin", input="short\n",
                                         code=1)["error"]
        assert "no user" in edgepay(reg_url, "user", "passwd", "zed", "--password-stdin", input="long enough\n",
                                    code=1)["error"]
        assert [(e["action"], e["target"]) for e in acc.audit(limit=1)] == [("user.password", "ada")]
    finally:
        reg.close()
