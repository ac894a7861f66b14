"""`edgepay broker cloud-user add|remove|list` and `edgepay broker renew-cert`: the broker's own
credentials change without downtime (issue 15 §4: "the other keys rotate too").

The cloud's broker password. Mosquitto's cloud listener reads passwd_cloud and acl_cloud, and on
SIGHUP (cli/reload.py) it rereads them and disconnects every connection whose user is gone
(measured on Mosquitto 2.0.11). So a password is rotated by overlap: `cloud-user add` a second
user with a fresh random password (written owner-only to a file, printed only with
--show-password), move the services to it (EDGEPAY_MQTT_USER / EDGEPAY_MQTT_PASSWORD, then a
restart), then `cloud-user remove` the old one, whose remaining connections the broker then drops.
The last cloud user is never removed.

The broker's TLS certificate. `renew-cert` issues a new key pair and certificate for the same
names from the device CA kept in the broker dir (ca.key, made by `provision --tls`), replaces
server.pem/server.key atomically, and reloads: Mosquitto presents the new certificate to every new
connection (measured: SIGHUP reloads it), and devices, which trust the CA, not the certificate,
never notice. The CA itself outlives every certificate it signs (CA_DAYS); replacing it means
giving every device the new CA first (docs/security.md).
"""
from __future__ import annotations

import re
import secrets
from pathlib import Path

import click

from host_tools.cli.common import Ctx, fail, write_private

USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _users(d: Path) -> dict[str, str]:
    """passwd_cloud's users -> their lines, in file order."""
    p = d / "passwd_cloud"
    if not p.exists():
        fail(f"{p} does not exist: run `edgepay broker conf --broker-dir {d}` first")
    out = {}
    for line in p.read_text().splitlines():
        if ":" in line:
            out[line.split(":", 1)[0]] = line + "\n"
    return out


def _write(d: Path, users: dict[str, str]) -> None:
    # acl first: a user whose password lands before its ACL line would connect with no topics
    write_private(d / "acl_cloud", "".join(f"user {u}\ntopic readwrite v1/#\n\n" for u in users))
    write_private(d / "passwd_cloud", "".join(users.values()))


def _reloaded(o: Ctx, d: Path) -> dict:
    from host_tools.cli.reload import reload_broker
    r = reload_broker(d)
    if r.get("reload"):
        o.note(f"[yellow]reload the broker:[/] {r['reload']}")
    return r


def replace_file(d: Path, name: str, data: bytes, mode: int = 0o600) -> None:
    """d/name replaced atomically (the broker never reads half a file), keeping its owner: `broker
    conf --run-as` may have given it to Mosquitto's account."""
    import os
    tmp = d / (name + ".new")
    write_private(tmp, data)
    if mode != 0o600:
        os.chmod(tmp, mode)
    try:
        st = (d / name).stat()
        if st.st_uid != os.getuid():
            os.chown(tmp, st.st_uid, st.st_gid)
    except FileNotFoundError:
        pass
    os.replace(tmp, d / name)


def reissue_server(d: Path, ca_key, ca, days: int):
    """A new key pair and server certificate for server.pem's names (CN and SANs) from (ca_key, ca),
    written over server.pem/server.key. -> (cn, the certificate). The caller reloads the broker."""
    from cryptography import x509

    from host_tools.cli.provision import _key_pem, _pem
    from host_tools.tls import make_leaf
    try:
        old = x509.load_pem_x509_certificate((d / "server.pem").read_bytes())
    except (OSError, ValueError) as e:
        fail(f"{d} has no readable server certificate (provision --tls makes it): {e}")
    try:
        san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
        ips = [str(i) for i in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns, ips = [], []
    cn = str(old.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)
    key, cert = make_leaf(ca_key, ca, cn=cn, dns=dns, ips=ips, days=days)
    for name, data in (("server.key", _key_pem(key)), ("server.pem", _pem(cert))):
        replace_file(d, name, data)
    return cn, cert


def register(broker: click.Group) -> None:
    @broker.group("cloud-user")
    def cloud_user() -> None:
        """The cloud listener's users: rotate the cloud's broker password by overlap."""

    bdir = click.option("--broker-dir", type=click.Path(file_okay=False, path_type=Path),
                        default=Path("edgepay") / "broker", show_default=True)

    @cloud_user.command("add")
    @click.argument("name")
    @bdir
    @click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
                  help="where the new password is written, owner-only [default: BROKER_DIR/NAME.password]")
    @click.option("--show-password", is_flag=True, help="also print the password (never printed otherwise)")
    @click.pass_obj
    def add(o: Ctx, name: str, broker_dir: Path, password_file: Path | None, show_password: bool) -> None:
        """Add cloud user NAME with a fresh random password; the broker reloads."""
        from host_tools.broker import password_line
        if not USER.fullmatch(name):
            fail(f"bad user name {name!r}: letters, digits, . _ - (1-64)")
        d = broker_dir.resolve()
        users = _users(d)
        if name in users:
            fail(f"cloud user {name} exists: add another name, move the services to it, then remove {name}")
        password = secrets.token_urlsafe(24)
        pw_file = (password_file or d / f"{name}.password").resolve()
        write_private(pw_file, password + "\n")
        users[name] = password_line(name, password)
        _write(d, users)
        r = _reloaded(o, d)
        out = {"user": name, "password_file": str(pw_file), "users": sorted(users), "broker_reload": r or None}
        if show_password:
            out["password"] = password
        o.emit(out, lambda: o.console.print(
            f"added cloud user {name}; its password is in {pw_file}"
            + (f": {password}" if show_password else "") + f". Cloud users now: {', '.join(sorted(users))}"))

    @cloud_user.command("remove")
    @click.argument("name")
    @bdir
    @click.pass_obj
    def remove(o: Ctx, name: str, broker_dir: Path) -> None:
        """Remove cloud user NAME; the broker reloads and drops its connections."""
        d = broker_dir.resolve()
        users = _users(d)
        if name not in users:
            fail(f"no cloud user {name} (cloud users: {', '.join(sorted(users)) or 'none'})")
        if len(users) == 1:
            fail(f"{name} is the last cloud user: add its successor first (edgepay broker cloud-user add NAME)")
        del users[name]
        _write(d, users)
        (d / f"{name}.password").unlink(missing_ok=True)
        r = _reloaded(o, d)
        o.emit({"removed": name, "users": sorted(users), "broker_reload": r or None},
               lambda: o.console.print(f"removed cloud user {name}; cloud users now: {', '.join(sorted(users))}"))

    @cloud_user.command("list")
    @bdir
    @click.pass_obj
    def list_(o: Ctx, broker_dir: Path) -> None:
        """The cloud users (never a password)."""
        users = sorted(_users(broker_dir.resolve()))
        o.emit({"users": users}, lambda: o.console.print("\n".join(users)))

    @broker.command("renew-cert")
    @bdir
    @click.option("--days", type=click.IntRange(1, 3650), default=365, show_default=True)
    @click.pass_obj
    def renew_cert(o: Ctx, broker_dir: Path, days: int) -> None:
        """Issue the broker a new TLS key and certificate for the same names; the broker reloads."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        d = broker_dir.resolve()
        try:
            ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
            ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), None)
        except (OSError, ValueError, TypeError) as e:
            fail(f"{d} has no readable CA and server certificate (provision --tls makes them): {e}")
        cn, cert = reissue_server(d, ca_key, ca, days)
        r = _reloaded(o, d)
        o.emit({"cert": str(d / "server.pem"), "cn": str(cn), "not_after": cert.not_valid_after_utc.isoformat(),
                "serial": format(cert.serial_number, "x"), "broker_reload": r or None},
               lambda: o.console.print(f"renewed {d / 'server.pem'} for {cn}, valid until "
                                       f"{cert.not_valid_after_utc:%Y-%m-%d}"))
