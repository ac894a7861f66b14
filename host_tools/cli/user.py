"""`edgepay user add|list|passwd|remove|token create|token revoke|token list`: the operator accounts of
`edgepay serve` (host_tools/cloud/accounts.py), in the registry's database (--registry /
EDGEPAY_REGISTRY: a SQLite file or a postgresql:// URL). Each change is recorded in the audit log
(actor `cli:<login>`, via `cli`).

    edgepay user add ada --role admin                     # asks for the password (twice)
    edgepay user add lot7 --role operator --site lot7-    # scoped to devices lot7-...
    edgepay user passwd ada                               # a new password; ada's sessions end
    edgepay user token create ada --name ci --expires-days 30    # prints the token once
    edgepay user token revoke t-1a2b3c4d5e6f
"""
from __future__ import annotations

import dataclasses
import getpass
import sys

import click

from host_tools.cli.common import Ctx, fail


def _accounts(o: Ctx, create: bool = False):
    from host_tools.cloud.accounts import Accounts
    reg = o.open_registry(create=create)
    return reg, Accounts(reg.db)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def register(cli: click.Group) -> None:
    @cli.group()
    def user() -> None:
        """Operator accounts of `edgepay serve`: roles viewer < operator < admin, API tokens."""

    @user.command("add")
    @click.argument("name")
    @click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), required=True)
    @click.option("--site", "sites", multiple=True, metavar="PREFIX",
                  help="scope to devices whose id starts with PREFIX (repeat); none: every device")
    @click.option("--password-stdin", is_flag=True, help="read the password from stdin (one line)")
    @click.option("--no-password", is_flag=True, help="no password: the account logs in with tokens only")
    @click.pass_obj
    def add(o: Ctx, name: str, role: str, sites: tuple[str, ...], password_stdin: bool, no_password: bool) -> None:
        """Add an account (the first admin: `--role admin`; the config's token then need not stay)."""
        from host_tools.cloud.accounts import AccountError
        if password_stdin and no_password:
            fail("--password-stdin or --no-password, not both")
        if no_password:
            password = None
        elif password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = click.prompt(f"password for {name}", hide_input=True, confirmation_prompt=True)
        reg, acc = _accounts(o, create=True)
        try:
            u = acc.add_user(name, role, password, list(sites) or None)
            acc.record("user.add", "ok", actor=_actor(), via="cli", target=name,
                       detail={"role": role, "sites": list(sites) or None, "password": password is not None})
        except AccountError as e:
            fail(str(e))
        finally:
            reg.close()
        o.emit({"user": u.name, "role": u.role, "sites": list(u.sites) if u.sites else None},
               lambda: o.console.print(f"[bold green]added[/] {u.name} ({u.role}"
                                       f"{', sites ' + ' '.join(u.sites) if u.sites else ''})"))

    @user.command("list")
    @click.pass_obj
    def list_(o: Ctx) -> None:
        """The accounts, their roles and sites."""
        reg, acc = _accounts(o)
        try:
            users = acc.users()
        finally:
            reg.close()
        rows = [{"user": u.name, "role": u.role, "sites": list(u.sites) if u.sites else None} for u in users]

        def human() -> None:
            for r in rows:
                o.console.print(f"{r['user']:<20} {r['role']:<9} {' '.join(r['sites'] or ['(every device)'])}")
            if not rows:
                o.console.print("no accounts yet: edgepay user add NAME --role admin")
        o.emit(rows, human)

    @user.command("passwd")
    @click.argument("name")
    @click.option("--password-stdin", is_flag=True, help="read the new password from stdin (one line)")
    @click.pass_obj
    def passwd(o: Ctx, name: str, password_stdin: bool) -> None:
        """Set an account's password; every browser session of it ends (its API tokens stay)."""
        from host_tools.cloud.accounts import AccountError
        password = (sys.stdin.readline().rstrip("\r\n") if password_stdin else
                    click.prompt(f"new password for {name}", hide_input=True, confirmation_prompt=True))
        reg, acc = _accounts(o)
        try:
            ended = acc.set_password(name, password)
            acc.record("user.password", "ok", actor=_actor(), via="cli", target=name)
        except AccountError as e:
            fail(str(e))
        finally:
            reg.close()
        o.emit({"user": name, "sessions_ended": ended},
               lambda: o.console.print(f"[bold green]password set[/] for {name}; {ended} session(s) ended"))

    @user.command("remove")
    @click.argument("name")
    @click.pass_obj
    def remove(o: Ctx, name: str) -> None:
        """Remove an account with its tokens and sessions (not the last admin)."""
        from host_tools.cloud.accounts import AccountError
        reg, acc = _accounts(o)
        try:
            acc.remove_user(name)
            acc.record("user.remove", "ok", actor=_actor(), via="cli", target=name)
        except AccountError as e:
            fail(str(e))
        finally:
            reg.close()
        o.emit({"removed": name}, lambda: o.console.print(f"[bold green]removed[/] {name}"))

    @user.group()
    def token() -> None:
        """API tokens: long random secrets shown once, stored as a digest, with an expiry."""

    @token.command("create")
    @click.argument("name")
    @click.option("--name", "label", required=True, help="what the token is for (e.g. ci, grafana)")
    @click.option("--expires-days", type=click.FloatRange(min=0, min_open=True, max=366), default=90.0,
                  show_default=True)
    @click.pass_obj
    def token_create(o: Ctx, name: str, label: str, expires_days: float) -> None:
        """Make an API token for account NAME; the secret is printed once, never stored."""
        from host_tools.cloud.accounts import AccountError
        reg, acc = _accounts(o)
        try:
            secret, t = acc.create_token(name, label, expires_days * 86400)
            acc.record("token.create", "ok", actor=_actor(), via="cli", target=name,
                       detail={"name": label, "token": t.id, "expires_at": t.expires_at})
        except AccountError as e:
            fail(str(e))
        finally:
            reg.close()

        def human() -> None:
            o.console.print(f"[bold green]token[/] {t.id} for {name} ({label}), expires in {expires_days:g} days; "
                            "shown once, stored only as a digest:")
            click.echo(secret)
        o.emit({"id": t.id, "user": name, "name": label, "expires_at": t.expires_at, "token": secret}, human)

    @token.command("revoke")
    @click.argument("token_id")
    @click.pass_obj
    def token_revoke(o: Ctx, token_id: str) -> None:
        """Revoke a token by its id (t-...): refused from the next call on."""
        from host_tools.cloud.accounts import AccountError
        reg, acc = _accounts(o)
        try:
            t = acc.revoke_token(token_id)
            acc.record("token.revoke", "ok", actor=_actor(), via="cli", target=token_id)
        except AccountError as e:
            fail(str(e))
        finally:
            reg.close()
        o.emit({"id": t.id, "revoked_at": t.revoked_at}, lambda: o.console.print(f"[bold green]revoked[/] {t.id}"))

    @token.command("list")
    @click.argument("name", required=False)
    @click.pass_obj
    def token_list(o: Ctx, name: str | None) -> None:
        """The tokens (of account NAME), without their secrets."""
        reg, acc = _accounts(o)
        try:
            rows = [dataclasses.asdict(t) for t in acc.tokens(name)]
        finally:
            reg.close()

        def human() -> None:
            import time
            for r in rows:
                state = ("revoked" if r["revoked_at"] else "expired" if r["expires_at"] and r["expires_at"] < time.time()
                         else "live")
                o.console.print(f"{r['id']}  {r['user']:<16} {r['name']:<16} {state}")
        o.emit(rows, human)
