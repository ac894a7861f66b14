"""`edgepay broker conf`: a mosquitto.conf for the broker directory `edgepay provision` fills
(passwd + acl for devices), with the cloud listener and its user, as host_tools/broker.py lays
them out: devices on one listener (username = client id, the edgepay ACL), cloud workers on another;
and the packet bound (host_tools.broker.MAX_PACKET, global in Mosquitto), so that no oversize message
is ever queued for a device.

Mosquitto started as root drops to the account in its `user` line (default `mosquitto`) before it
reads the password, ACL and certificate files, which `provision` writes owner-only (0600, in 0700
directories). So the config always names the account that can read them: the one running this
command (the files' owner), or `--run-as USER`, to whom the files Mosquitto reads are then given.
"""
from __future__ import annotations

import os
import pwd
from pathlib import Path

import click

from host_tools.broker import CLOUD_PORT, DEVICE_PORT, MAX_PACKET, limit_conf
from host_tools.cli.common import Ctx, fail, make_private_dir, write_private

# what Mosquitto reads (ca.key is not among them: it stays with its owner)
BROKER_READS = ("passwd", "acl", "passwd_cloud", "acl_cloud", "ca.pem", "server.pem", "server.key",
                "mosquitto.conf", "crl.pem")


def _account(name: str | None) -> pwd.struct_passwd:
    if name is None:
        return pwd.getpwuid(os.getuid())
    try:
        return pwd.getpwnam(name)
    except KeyError:
        fail(f"--run-as {name!r}: no such user on this machine")


def _check_reach(d: Path, acct: pwd.struct_passwd) -> None:
    """Before anything is written: can `acct` be given the broker files, and reach them?"""
    if acct.pw_uid == os.getuid():
        return
    if os.getuid() != 0:
        fail(f"--run-as {acct.pw_name}: only root can give the broker files to another user; "
             "run Mosquitto as yourself instead (leave out --run-as)")
    for parent in d.parents:
        st = parent.stat()
        if not (st.st_mode & 0o001 or (st.st_uid == acct.pw_uid and st.st_mode & 0o100)):
            fail(f"--run-as {acct.pw_name}: {parent} (mode {st.st_mode & 0o777:o}) does not let "
                 f"{acct.pw_name} reach {d}: put --broker-dir somewhere it can, or chmod o+x {parent}")


def _give_to(d: Path, acct: pwd.struct_passwd) -> None:
    """Hand the broker directory and the files Mosquitto reads to `acct` (root, after _check_reach)."""
    if acct.pw_uid == os.getuid():
        return
    os.chown(d, acct.pw_uid, acct.pw_gid)
    for name in BROKER_READS:
        if (d / name).exists():
            os.chown(d / name, acct.pw_uid, acct.pw_gid)


def register(cli: click.Group) -> None:
    @cli.group()
    def broker() -> None:
        """Broker helpers (Mosquitto)."""

    from host_tools.cli import broker_rotate
    broker_rotate.register(broker)  # cloud-user add|remove|list, renew-cert
    from host_tools.cli import broker_crl
    broker_crl.register(broker)  # crl [--resign]
    from host_tools.cli import broker_ca
    broker_ca.register(broker)  # rotate-ca stage|switch|retire

    @broker.command()
    @click.option("--broker-dir", type=click.Path(file_okay=False, path_type=Path),
                  default=Path("edgepay") / "broker", show_default=True)
    @click.option("--port", type=click.IntRange(1, 65535), default=DEVICE_PORT, show_default=True,
                  help="the device listener (provision --device-broker)")
    @click.option("--cloud-port", type=click.IntRange(1, 65535), default=CLOUD_PORT, show_default=True,
                  help="the cloud listener (the global --broker of cmd, time, watch)")
    @click.option("--bind", default="127.0.0.1", show_default=True)
    @click.option("--tls-port", type=click.IntRange(1, 65535), help="also a TLS device listener (provision --tls made the certificates)")
    @click.option("--tls-clients", type=click.Choice(["password", "certificate"]), default="password", show_default=True,
                  help="how devices authenticate on the TLS listener: their password, or their certificate "
                       "(mutual TLS: CN = device id, no password asked)")
    @click.option("--crl", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                  help="a CRL (PEM) of revoked device certificates, for --tls-clients certificate "
                       "[default: BROKER_DIR/crl.pem when it exists, which revoke and renew-cert keep]")
    @click.option("--run-as", help="the account Mosquitto runs as when started by root; the files it reads "
                  "are given to it [default: you, the files' owner]")
    @click.pass_obj
    def conf(o: Ctx, broker_dir: Path, port: int, cloud_port: int, bind: str, tls_port: int | None,
             tls_clients: str, crl: Path | None, run_as: str | None) -> None:
        """Write BROKER_DIR/mosquitto.conf (+ the cloud user's passwd_cloud/acl_cloud).

        The cloud user is --user / --password (EDGEPAY_MQTT_USER / EDGEPAY_MQTT_PASSWORD).
        Run it with: mosquitto -c BROKER_DIR/mosquitto.conf
        """
        from host_tools.broker import mtls_auth, password_line
        if port == cloud_port or (tls_port is not None and tls_port in (port, cloud_port)):
            fail("the listeners need distinct ports")
        password = o.need_password()
        acct = _account(run_as)
        if not (broker_dir / "passwd").exists():
            fail(f"{broker_dir}/passwd does not exist: provision a device first (edgepay provision ... --broker-dir {broker_dir})")
        if tls_port is not None and not (broker_dir / "server.pem").exists():
            fail(f"{broker_dir}/server.pem does not exist: provision with --tls first")
        _check_reach(broker_dir.resolve(), acct)
        d = make_private_dir(broker_dir).resolve()
        write_private(d / "passwd_cloud", password_line(o.user, password))
        write_private(d / "acl_cloud", f"user {o.user}\ntopic readwrite v1/#\n")
        device_auth = ["use_username_as_clientid true", "allow_anonymous false",
                       f"password_file {d / 'passwd'}", f"acl_file {d / 'acl'}"]
        # `user`: only acted on when Mosquitto starts as root (see the module docstring)
        # pid_file: `provision` reloads this broker (SIGHUP) when it adds a device (cli/reload.py)
        conf = ["per_listener_settings true", f"user {acct.pw_name}", f"pid_file {d / 'mosquitto.pid'}",
                "set_tcp_nodelay true",
                "max_queued_messages 100000", *limit_conf(MAX_PACKET),
                f"listener {port} {bind}", *device_auth,
                f"listener {cloud_port} {bind}", "allow_anonymous false",
                f"password_file {d / 'passwd_cloud'}", f"acl_file {d / 'acl_cloud'}"]
        if tls_port is not None:
            mtls = tls_clients == "certificate"
            conf += [f"listener {tls_port} {bind}", *(mtls_auth(d / "acl") if mtls else device_auth),
                     f"cafile {d / 'ca.pem'}", f"certfile {d / 'server.pem'}", f"keyfile {d / 'server.key'}",
                     "tls_version tlsv1.2"]
            if crl is None and mtls and (d / "crl.pem").exists():
                crl = d / "crl.pem"  # the one revoke and renew-cert keep (host_tools/crl.py)
            if crl is not None:
                conf.append(f"crlfile {crl.resolve()}")
        elif tls_clients == "certificate" or crl is not None:
            fail("--tls-clients certificate and --crl need --tls-port")
        write_private(d / "mosquitto.conf", "\n".join(conf) + "\n")
        _give_to(d, acct)
        o.emit({"conf": str(d / "mosquitto.conf"), "port": port, "cloud_port": cloud_port, "tls_port": tls_port,
                "user": acct.pw_name, "max_packet": MAX_PACKET},
               lambda: o.console.print(f"wrote {d / 'mosquitto.conf'} (runs as {acct.pw_name} when started by root); "
                                       f"run: mosquitto -c {d / 'mosquitto.conf'}"))
