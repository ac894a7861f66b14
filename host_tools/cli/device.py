"""`edgepay device revoke|decommission|rekey DEVICE`: a device's credentials over its life.

rekey: rotate the device key over the air (protocol/SPEC.md §11, host_tools/cloud/rekey.py): the
next key wrapped under the current one, the device's proof checked, the switch confirmed under the
new key. Safe to run again after any interruption: it finishes the rotation under way. Never for a
key known to be compromised (the thief could unwrap the next one): revoke, then `edgepay provision
DEVICE --reprovision` and flash the new config over the serial link (docs/security.md).

revoke: a stolen or compromised device. The registry marks it revoked (the cloud then sends it
nothing, refuses its auth requests, and keeps any record it still sends in quarantine for audit,
never as money: host_tools/cloud/ingest.py), its line leaves the broker's passwd and a broker this
tool manages is reloaded, so its next CONNECT is refused (CONNACK 5: a clear refusal, not a hang);
with a CA in the broker dir (provision --tls), every certificate issued to it (certs.json, and
DEVICE_DIR/device.pem) goes on the broker dir's CRL (host_tools/crl.py) before that reload, so a
mutual-TLS listener, which asks no password, refuses it too. Mosquitto rereads the CRL at the
reload but keeps a TLS link already open, so revoke then ends that link: it connects to the cloud
listener (the global --broker, --user, EDGEPAY_MQTT_PASSWORD) under the device's client id and
leaves at once; the broker closes the device's link for it (session takeover), and the device's
next handshake is refused. Without the cloud password it says so and the link lasts until the
device reconnects.
decommission: a device retired in good order, after its journal is drained (`get_state` jdepth 0;
--force skips the check); the same broker step, status decommissioned.
Its key stays in the registry, verify-only: what it journaled can always be audited.
"""
from __future__ import annotations

from pathlib import Path

import click

from host_tools.cli.common import EXIT_USAGE, Ctx, each_device, fail
from host_tools.cli.fleet_campaign import fleet_campaign, fleet_options


def _crl_step(o: Ctx, device: str, broker_dir: Path, devices_dir: Path) -> list[str] | None:
    """Every known certificate of `device` on the broker dir's CRL (None: no CA there, no CRL)."""
    from host_tools import crl
    from host_tools.cli.device_cert import _old_pem
    if not (broker_dir / "ca.key").exists():
        return None
    try:
        serials = crl.device_serials(broker_dir, device, _old_pem(devices_dir, device))
        return crl.revoke(broker_dir, [(s, device) for s in serials], "revoked")
    except crl.CrlError as e:
        o.note(f"[yellow]warning:[/] {device}'s certificates are not on the CRL: {e}")
        return None


def _drop_link(o: Ctx, device: str) -> bool | None:
    """End the device's open link, if any: connect under its client id on the cloud listener and
    leave (Mosquitto closes the older connection of a client id). None: no cloud password given."""
    if not o.password or o.engine != "mosquitto":
        return None
    from dataclasses import replace

    from host_tools.cloud.mqtt import BrokerUnreachable, CloudMQTT
    try:
        host, port = o.broker_addr()
        m = CloudMQTT(replace(o.broker_settings(host, port, o.password), client_id=device)).connect(timeout=5)
        m.close()
        return True
    except (BrokerUnreachable, OSError, ValueError) as e:
        o.note(f"[yellow]warning:[/] could not end {device}'s open link ({e}): it lasts until the device reconnects")
        return False


def _broker_step(o: Ctx, device: str, broker_dir: Path, devices_dir: Path | None = None) -> dict:
    from host_tools.cli.reload import reload_broker
    from host_tools.provision import remove_passwd
    removed = remove_passwd(broker_dir / "passwd", device)
    added = _crl_step(o, device, broker_dir, devices_dir) if devices_dir is not None else None
    reload = reload_broker(broker_dir) if removed or added else {}
    if "reload" in reload:
        o.note(f"[yellow]warning:[/] Mosquitto (pid {', '.join(map(str, reload['pids']))}) still accepts {device} "
               f"until it rereads {broker_dir / 'passwd'}: {reload['reload']}")
    out = {"passwd_removed": removed, "broker_reload": reload or None}
    if devices_dir is not None:
        out["crl_added"] = added
        if added:  # a mutual-TLS device: the CRL reload leaves its open link up
            out["link_dropped"] = _drop_link(o, device)
            if out["link_dropped"] is None:
                o.note(f"[yellow]note:[/] a link {device} has open on its certificate stays up until it reconnects: "
                       "give the cloud password (EDGEPAY_MQTT_PASSWORD) to end it now")
    return out


def register(cli: click.Group) -> None:
    broker_dir_opt = click.option("--broker-dir", type=click.Path(file_okay=False, path_type=Path),
                                  default=Path("edgepay") / "broker", show_default=True,
                                  help="the broker's passwd/acl files (as at provisioning)")

    @cli.group()
    def device() -> None:
        """A device's credentials over its life: revoke, decommission, rekey, renew-cert."""

    from host_tools.cli import device_cert
    device_cert.register(device)  # renew-cert

    @device.command()
    @click.argument("device_id", metavar="DEVICE")
    @broker_dir_opt
    @click.option("--devices-dir", type=click.Path(file_okay=False, path_type=Path),
                  default=Path("edgepay") / "devices", show_default=True,
                  help="where provision left each device's files (its first device.pem)")
    @click.pass_obj
    def revoke(o: Ctx, device_id: str, broker_dir: Path, devices_dir: Path) -> None:
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
        result = {"device": device_id, "status": d.status, "was": before,
                  **_broker_step(o, device_id, broker_dir, devices_dir)}
        o.emit(result, lambda: o.console.print(
            f"[bold red]revoked[/] {device_id}: the cloud sends it nothing and quarantines what it sends; "
            + ("the broker refuses its next connection" if result["passwd_removed"] else
               f"it had no line in {broker_dir / 'passwd'}")
            + (f"; certificate(s) {', '.join(result['crl_added'])} on the CRL" if result.get("crl_added") else "")))

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

    @device.command()
    @click.argument("device_ids", metavar="[DEVICE]...", nargs=-1)
    @click.option("--timeout", type=float, default=10.0, show_default=True,
                  help="seconds for each of the device's two answers (rekey, then the confirmation)")
    @fleet_options("rekey-YYYYmmddTHHMMSS")
    @click.pass_obj
    def rekey(o: Ctx, device_ids: tuple[str, ...], timeout: float, every: bool, kind: str | None, board: str | None,
              cid: str | None, cohorts: str, rate: float, abort_share: float, no_wait: bool, every_s: float,
              db: str) -> None:
        """Rotate the key of each DEVICE, one after the other (exit 1 if any did not finish); or of a
        fleet (--all, --kind, --board) as a campaign on the rollout engine: cohorts, rate, halting
        past --abort-share; pause/resume/cancel/status with edgepay campaign."""
        if every or kind or board:
            if device_ids:
                fail("name devices, or select a fleet with --all/--kind/--board: not both", EXIT_USAGE)
            from host_tools.cloud.rekey import ACTION, RekeyAction
            return fleet_campaign(o, ACTION, RekeyAction.spec(timeout), kind=kind, board=board, cid=cid,
                                  id_format="rekey-%Y%m%dT%H%M%S", what="rotate", cohorts=cohorts, rate=rate,
                                  abort_share=abort_share,
                                  timeout_s=3 * timeout + 10,   # a device's budget: its two answers and the waits
                                  no_wait=no_wait, every_s=every_s, db=db)
        if not device_ids:
            fail("name the devices to rotate (or --all, --kind, --board)", EXIT_USAGE)
        from host_tools.cli.cmd import connect
        from host_tools.cloud.registry import RegistryError
        from host_tools.cloud.rekey import RekeyError, rotate
        reg, client = connect(o)

        def one(device_id: str) -> tuple[dict, str]:
            r = rotate(client, device_id, timeout=timeout)
            return r.as_json(), (f"key {r.was} -> {r.version}" + (" (a rotation under way, finished)" if r.resumed else ""))
        try:
            each_device(o, device_ids, one, (RekeyError, RegistryError), "rotated", "rotated")
        finally:
            client.close()
            reg.close()

    @device.command()
    @click.argument("device_id", metavar="DEVICE")
    @click.pass_obj
    def keys(o: Ctx, device_id: str) -> None:
        """DEVICE's key history: each version's state (current, next, retired, compromised) and, for
        a retired one, its switch point (the lowest seq verified under its successor). Compromised:
        a version from before a re-provisioning (kept for audit, never money). Never the keys."""
        from host_tools.cloud.registry import RegistryError
        reg = o.open_registry()
        try:
            o.device(reg, device_id)
            try:
                history = reg.keys(device_id)
            except RegistryError as e:
                fail(str(e))
        finally:
            reg.close()
        rows = [{"version": k.version, "kid": k.kid.decode(), "state": k.state, "switch_seq": k.switch_seq}
                for k in history]

        def human() -> None:
            for r in rows:
                o.console.print(f"{r['kid']:<40} {r['state']:<8}"
                                + (f" below seq {r['switch_seq']}" if r["switch_seq"] is not None else "")
                                + (" (audit only: what verifies under it is quarantined)"
                                   if r["state"] == "compromised" else ""))
        o.emit({"device": device_id, "keys": rows}, human)
