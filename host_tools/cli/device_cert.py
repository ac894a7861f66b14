"""`edgepay device renew-cert DEVICE... --broker-dir D [--days N]`: a device's TLS certificate
renewed over the air before it expires (protocol/SPEC.md §12, host_tools/cloud/certrenew.py).

The device cannot make an EC key pair (its MicroPython has no key generation), so this tool does:
a new P-256 key and a certificate for CN = the device from the CA in the broker dir (ca.pem, ca.key,
made by `provision --tls`). The certificate and the private scalar, RFC 3394-wrapped under the
device's current key from the registry, go in one `set_cert` command. The device tries the new pair
on a fresh connection and keeps it only if the broker takes it; this tool waits for that verdict
(the device is then online on the new pair) and prints the new certificate's end. The new private
key lives only in this process's memory: it is never written on the host.

Once the device reports cert_current for the new certificate, its earlier ones (those the broker
dir's certs.json lists, and DEVICE_DIR/device.pem from a provisioning before it) go on the broker
dir's CRL (crl.pem, host_tools/crl.py: earlier entries kept, re-signed by the CA, written
atomically) and a broker this tool manages is reloaded (SIGHUP), so the old certificate is refused
from its next connection (docs/security.md). --keep-old leaves the CRL as it is.
"""
from __future__ import annotations

from pathlib import Path

import click

from host_tools.cli.common import Ctx, each_device, fail
from host_tools.tls import LEAF_DAYS


def _ca(broker_dir: Path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    pem, key = broker_dir / "ca.pem", broker_dir / "ca.key"
    if not (pem.exists() and key.exists()):
        fail(f"no CA in {broker_dir} (ca.pem and ca.key, made by edgepay provision --tls)")
    try:
        return serialization.load_pem_private_key(key.read_bytes(), None), x509.load_pem_x509_certificate(pem.read_bytes())
    except (ValueError, TypeError) as e:
        fail(f"the CA in {broker_dir} cannot be read: {e}")


def _old_pem(devices_dir: Path, device: str) -> tuple:
    """The certificate `provision --tls` left in the device's directory, if it is there: a device
    provisioned before certs.json was kept has its first certificate known only so."""
    from cryptography import x509
    try:
        return (x509.load_pem_x509_certificate((devices_dir / device / "device.pem").read_bytes()),)
    except (OSError, ValueError):
        return ()


def retire_old(o: Ctx, broker_dir: Path, device: str, cert, devices_dir: Path) -> dict:
    """The CRL step after a device took `cert` (cert_current): -> {"crl_added", "broker_reload"}."""
    from host_tools.cli.reload import reload_broker
    from host_tools.cloud.certrenew import supersede
    added = supersede(broker_dir, device, cert, _old_pem(devices_dir, device))
    reload = reload_broker(broker_dir) if added else {}
    if "reload" in reload:
        o.note(f"[yellow]warning:[/] Mosquitto (pid {', '.join(map(str, reload['pids']))}) still takes the old "
               f"certificate of {device} until it rereads {broker_dir / 'crl.pem'}: {reload['reload']}")
    if not added and not o.json:
        o.note(f"[yellow]note:[/] no earlier certificate of {device} is known in {broker_dir / 'certs.json'} "
               f"or {devices_dir / device / 'device.pem'}: the CRL is unchanged")
    return {"crl_added": added, "broker_reload": reload or None}


def register(device: click.Group) -> None:
    @device.command("renew-cert")
    @click.argument("device_ids", metavar="DEVICE...", nargs=-1, required=True)
    @click.option("--broker-dir", type=click.Path(file_okay=False, path_type=Path),
                  default=Path("edgepay") / "broker", show_default=True, help="where the CA is (ca.pem, ca.key)")
    @click.option("--days", type=click.IntRange(1, 3650), default=LEAF_DAYS, show_default=True,
                  help="lifetime of the new certificate (never past the CA's)")
    @click.option("--timeout", type=float, default=30.0, show_default=True,
                  help="seconds for each device's answer and its trial connection")
    @click.option("--devices-dir", type=click.Path(file_okay=False, path_type=Path),
                  default=Path("edgepay") / "devices", show_default=True,
                  help="where provision left each device's files (its first device.pem)")
    @click.option("--keep-old", is_flag=True, help="do not put the earlier certificates on the CRL")
    @click.pass_obj
    def renew_cert(o: Ctx, device_ids: tuple[str, ...], broker_dir: Path, days: int, timeout: float,
                   devices_dir: Path, keep_old: bool) -> None:
        """Renew the TLS certificate of each DEVICE (exit 1 if any did not switch)."""
        from host_tools.cli.cmd import connect
        from host_tools.cloud.certrenew import RenewError, renew, renewal
        from host_tools.cloud.registry import RegistryError
        from host_tools.crl import CrlError
        ca_key, ca = _ca(broker_dir)
        reg, client = connect(o)

        def one(dev: str) -> tuple[dict, str]:
            r = renewal(ca_key, ca, dev, reg.get(dev).key, days=days)
            out = renew(client, dev, r, timeout=timeout)  # returns once the device said cert_current
            did = f"certificate {out['serial']} until {out['not_after']}"
            if not keep_old:
                try:
                    out.update(retire_old(o, broker_dir, dev, r.cert, devices_dir))
                except CrlError as e:  # the device is renewed: say what is left to do
                    out.update(crl_added=None, crl_error=str(e))
                    o.note(f"[yellow]warning:[/] {dev} is renewed but its old certificate is not on the CRL: {e}")
                if out.get("crl_added"):
                    did += f"; revoked {', '.join(out['crl_added'])} (CRL)"
            else:
                from host_tools.crl import record_issued
                record_issued(broker_dir, dev, r.cert)
            return out, did
        try:
            each_device(o, device_ids, one, (RenewError, RegistryError), "renewed", "renewed")
        finally:
            client.close()
            reg.close()
