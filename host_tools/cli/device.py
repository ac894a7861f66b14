"""`edgepay device revoke|decommission DEVICE`: end a device's credentials.

revoke: a stolen or compromised device. The registry marks it revoked (the cloud then sends it
nothing, refuses its auth requests, and keeps any record it still sends in quarantine for audit,
never as money: host_tools/cloud/ingest.py), its line leaves the broker's passwd and a broker this
tool manages is reloaded, so its next CONNECT is refused (CONNACK 5: a clear refusal, not a hang).
decommission: a device retired in good order, after its journal is drained (`get_state` jdepth 0;
--force skips the check); the same broker step, status decommissioned.
Its key stays in the registry, verify-only: what it journaled can always be audited.
"""
from __future__ import annotations

from pathlib import Path

import click

from host_tools.cli.common import Ctx, fail


def _broker_step(o: Ctx, device: str, broker_dir: Path) -> dict:
    from host_tools.cli.reload import reload_broker
    from host_tools.provision import remove_passwd
    removed = remove_passwd(broker_dir / "passwd", device)
    reload = reload_broker(broker_dir) if removed else {}
    if "reload" in reload:
        o.note(f"[yellow]warning:[/] Mosquitto (pid {', '.join(map(str, reload['pids']))}) still accepts {device} "
               f"until it rereads {broker_dir / 'passwd'}: {reload['reload']}")
    return {"passwd_removed": removed, "broker_reload": reload or None}


def register(cli: click.Group) -> None:
    broker_dir_opt = click.option("--broker-dir", type=click.Path(file_okay=False, path_type=Path),
                                  default=Path("edgepay") / "broker", show_default=True,
                                  help="the broker's passwd/acl files (as at provisioning)")

    @cli.group()
    def device() -> None:
        """A device's credentials over its life: revoke, decommission."""

    @device.command()
    @click.argument("device_id", metavar="DEVICE")
    @broker_dir_opt
    @click.pass_obj
    def revoke(o: Ctx, device_id: str, broker_dir: Path) -> None:
        """Revoke a stolen or compromised DEVICE now (see the module doc for what follows)."""
        from host_tools.cloud.registry import RegistryError
        reg = o.open_registry()
        try:
            before = o.device(reg, device_id).status
            try:
                d = reg.set_status(device_id, "revoked")
            except RegistryError as e:
                fail(str(e))
        finally:
            reg.close()
        result = {"device": device_id, "status": d.status, "was": before, **_broker_step(o, device_id, broker_dir)}
        o.emit(result, lambda: o.console.print(
            f"[bold red]revoked[/] {device_id}: the cloud sends it nothing and quarantines what it sends; "
            + ("the broker refuses its next connection" if result["passwd_removed"] else
               f"it had no line in {broker_dir / 'passwd'}")))

    @device.command()
    @click.argument("device_id", metavar="DEVICE")
    @broker_dir_opt
    @click.option("--force", is_flag=True, help="do not ask the device whether its journal is drained")
    @click.option("--timeout", type=float, default=10.0, show_default=True, help="seconds for its get_state")
    @click.pass_obj
    def decommission(o: Ctx, device_id: str, broker_dir: Path, force: bool, timeout: float) -> None:
        """Retire DEVICE once every money record it holds has been acknowledged."""
        depth = None
        if not force:
            from host_tools.cli.cmd import connect
            reg, client = connect(o, device=device_id)
            try:
                c = client.send(device_id, "get_state", timeout=timeout)
            finally:
                client.close()
                reg.close()
            if not c.ok or not isinstance(c.data, dict):
                fail(f"{device_id} did not answer get_state ({c.state.value}): its journal cannot be "
                     "checked; wait for it, or --force")
            depth = c.data.get("jdepth")
            if depth:
                fail(f"{device_id} still holds {depth} money record(s) the cloud has not acknowledged: "
                     "decommission it once they are in (or --force, and export its journal first)")
        reg = o.open_registry()
        try:
            o.device(reg, device_id)
            d = reg.set_status(device_id, "decommissioned")
        finally:
            reg.close()
        result = {"device": device_id, "status": d.status, "jdepth": depth, **_broker_step(o, device_id, broker_dir)}
        o.emit(result, lambda: o.console.print(f"[bold]decommissioned[/] {device_id}"))
