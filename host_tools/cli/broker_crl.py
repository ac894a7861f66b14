"""`edgepay broker crl [--resign]`: the broker dir's CRL (host_tools/crl.py), which `device revoke`
and `device renew-cert` keep: the serials on it (device, reason, when) and when it runs out. An
expired CRL makes the broker refuse every device certificate, so it is signed afresh at each change
and by --resign (then the broker is reloaded): run it within crl.NEXT_UPDATE_DAYS of the last change."""
from __future__ import annotations

from pathlib import Path

import click

from host_tools.cli.common import Ctx, fail


def register(broker: click.Group) -> None:
    @broker.command("crl")
    @click.option("--broker-dir", type=click.Path(file_okay=False, path_type=Path),
                  default=Path("edgepay") / "broker", show_default=True)
    @click.option("--resign", is_flag=True, help="sign the CRL again now (a new nextUpdate) and reload the broker")
    @click.pass_obj
    def crl_cmd(o: Ctx, broker_dir: Path, resign: bool) -> None:
        """List the revoked device certificates; --resign renews the CRL's validity."""
        from cryptography import x509

        from host_tools import crl
        from host_tools.cli.reload import reload_broker
        reload = None
        try:
            if resign:
                crl.write_crl(broker_dir)
                reload = reload_broker(broker_dir) or None
            entries = crl.revoked(broker_dir)
            path = broker_dir / crl.CRL
            c = x509.load_pem_x509_crl(path.read_bytes()) if path.exists() else None
        except (crl.CrlError, OSError, ValueError) as e:
            fail(str(e))
        end = c.next_update_utc if c is not None else None
        data = {"crl": str(path) if c is not None else None,
                "next_update": end.isoformat() if end is not None else None,
                "revoked": entries, "resigned": resign, "broker_reload": reload}

        def human() -> None:
            if c is None:
                o.console.print(f"no CRL in {broker_dir} (provision --tls starts one)")
                return
            o.console.print(f"{path}: {len(entries)} revoked, valid until {end:%Y-%m-%d}"
                            + (" (signed again now)" if resign else ""))
            for e in entries:
                o.console.print(f"  {e['serial']}  {e['device']:<20} {e['reason']:<10} {e['at']}")
        o.emit(data, human)
