"""`edgepay device renew-cert DEVICE... --broker-dir D [--days N]`: a device's TLS certificate
renewed over the air before it expires (protocol/SPEC.md §12, host_tools/cloud/certrenew.py).

The device cannot make an EC key pair (its MicroPython has no key generation), so this tool does:
a new P-256 key and a certificate for CN = the device from the CA in the broker dir (ca.pem, ca.key,
made by `provision --tls`). The certificate and the private scalar, RFC 3394-wrapped under the
device's current key from the registry, go in one `set_cert` command. The device tries the new pair
on a fresh connection and keeps it only if the broker takes it; this tool waits for that verdict
(the device is then online on the new pair) and prints the new certificate's end. The new private
key lives only in this process's memory: it is never written on the host. Then, if wanted, revoke
the old certificate in the broker's CRL (docs/security.md).
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


def register(device: click.Group) -> None:
    @device.command("renew-cert")
    @click.argument("device_ids", metavar="DEVICE...", nargs=-1, required=True)
    @click.option("--broker-dir", type=click.Path(file_okay=False, path_type=Path),
                  default=Path("edgepay") / "broker", show_default=True, help="where the CA is (ca.pem, ca.key)")
    @click.option("--days", type=click.IntRange(1, 3650), default=LEAF_DAYS, show_default=True,
                  help="lifetime of the new certificate (never past the CA's)")
    @click.option("--timeout", type=float, default=30.0, show_default=True,
                  help="seconds for each device's answer and its trial connection")
    @click.pass_obj
    def renew_cert(o: Ctx, device_ids: tuple[str, ...], broker_dir: Path, days: int, timeout: float) -> None:
        """Renew the TLS certificate of each DEVICE (exit 1 if any did not switch)."""
        from host_tools.cli.cmd import connect
        from host_tools.cloud.certrenew import RenewError, renew, renewal
        from host_tools.cloud.registry import RegistryError
        ca_key, ca = _ca(broker_dir)
        reg, client = connect(o)

        def one(dev: str) -> tuple[dict, str]:
            out = renew(client, dev, renewal(ca_key, ca, dev, reg.get(dev).key, days=days), timeout=timeout)
            return out, f"certificate {out['serial']} until {out['not_after']}"
        try:
            each_device(o, device_ids, one, (RenewError, RegistryError), "renewed", "renewed")
        finally:
            client.close()
            reg.close()
