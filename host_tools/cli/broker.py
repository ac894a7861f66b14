"""`edgepay broker conf`: a mosquitto.conf for the broker directory `edgepay provision` fills
(passwd + acl for devices), with the cloud listener and its user, as host_tools/broker.py lays
them out: devices on one listener (username = client id, the edgepay ACL), cloud workers on another."""
from __future__ import annotations

from pathlib import Path

import click

from host_tools.cli.common import Ctx, fail, make_private_dir, write_private


def register(cli: click.Group) -> None:
    @cli.group()
    def broker() -> None:
        """Broker helpers (Mosquitto)."""

    @broker.command()
    @click.option("--broker-dir", type=click.Path(file_okay=False, path_type=Path),
                  default=Path("edgepay") / "broker", show_default=True)
    @click.option("--port", type=click.IntRange(1, 65535), default=1883, show_default=True, help="device listener")
    @click.option("--cloud-port", type=click.IntRange(1, 65535), default=1884, show_default=True,
                  help="cloud listener")
    @click.option("--bind", default="127.0.0.1", show_default=True)
    @click.option("--tls-port", type=click.IntRange(1, 65535), help="also a TLS device listener (provision --tls made the certificates)")
    @click.pass_obj
    def conf(o: Ctx, broker_dir: Path, port: int, cloud_port: int, bind: str, tls_port: int | None) -> None:
        """Write BROKER_DIR/mosquitto.conf (+ the cloud user's passwd_cloud/acl_cloud).

        The cloud user is --user / --password (EDGEPAY_MQTT_USER / EDGEPAY_MQTT_PASSWORD).
        Run it with: mosquitto -c BROKER_DIR/mosquitto.conf
        """
        from host_tools.broker import password_line
        if port == cloud_port or (tls_port is not None and tls_port in (port, cloud_port)):
            fail("the listeners need distinct ports")
        password = o.need_password()
        if not (broker_dir / "passwd").exists():
            fail(f"{broker_dir}/passwd does not exist: provision a device first (edgepay provision ... --broker-dir {broker_dir})")
        if tls_port is not None and not (broker_dir / "server.pem").exists():
            fail(f"{broker_dir}/server.pem does not exist: provision with --tls first")
        d = make_private_dir(broker_dir).resolve()
        write_private(d / "passwd_cloud", password_line(o.user, password))
        write_private(d / "acl_cloud", f"user {o.user}\ntopic readwrite v1/#\n")
        device_auth = ["use_username_as_clientid true", "allow_anonymous false",
                       f"password_file {d / 'passwd'}", f"acl_file {d / 'acl'}"]
        conf = ["per_listener_settings true", "set_tcp_nodelay true", "max_queued_messages 100000",
                f"listener {port} {bind}", *device_auth,
                f"listener {cloud_port} {bind}", "allow_anonymous false",
                f"password_file {d / 'passwd_cloud'}", f"acl_file {d / 'acl_cloud'}"]
        if tls_port is not None:
            conf += [f"listener {tls_port} {bind}", *device_auth, f"cafile {d / 'ca.pem'}",
                     f"certfile {d / 'server.pem'}", f"keyfile {d / 'server.key'}", "tls_version tlsv1.2"]
        write_private(d / "mosquitto.conf", "\n".join(conf) + "\n")
        o.emit({"conf": str(d / "mosquitto.conf"), "port": port, "cloud_port": cloud_port, "tls_port": tls_port},
               lambda: o.console.print(f"wrote {d / 'mosquitto.conf'}; run: mosquitto -c {d / 'mosquitto.conf'}"))
