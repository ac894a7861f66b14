"""`edgepay broker rotate-ca stage|switch|retire`: the broker's CA replaced by overlap (issue 15 §4,
docs/broker.md "The CA"), the device side being the `set_ca` command (SPEC §12,
host_tools/cloud/carotate.py).

The broker dir through a rotation (its other files as `provision --tls` leaves them):

  stage    ca-next.pem, ca-next.key: the next CA (P-256, 10 years), made once and kept until the
           switch; every device selected is sent set_ca {1: its DER} and trusts it beside the current
           one from its next connect. Run it again for devices that missed it: the same CA goes.
  switch   ca.key becomes the next CA's key and ca.pem holds the next CA followed by the old one
           (ca-old.pem/ca-old.key keep the old alone); server.pem/server.key are issued afresh from the
           next CA for the same names; crl.pem is signed by both CAs (host_tools/crl.py); the broker is
           reloaded. ca.pem is what Mosquitto's `cafile` reads: with mutual TLS it takes device
           certificates from either CA during the overlap, and everything that issues from ca.pem/ca.key
           (`device renew-cert`, `provision --tls`, the CRL) issues from the new CA, whose certificate is
           the first in the file. Devices re-connect to a certificate from the new CA, which they trust.
  retire   every device selected is sent set_ca {1: the new CA, 2: true} and the tool waits for its
           verdict event (ca_current: the CA alone took the broker, the old one is gone from the
           device; ca_refused: it trusts both again); `busy` (another trial running) is sent again after
           --busy-wait s. Once all succeeded, the old CA is retired in the broker dir too: ca.pem the new
           CA alone, ca-old.key deleted, ca-old.pem kept as ca-retired-<h>.pem (public, for audit), the
           CRL the new CA's alone, the broker reloaded. With mutual TLS this waits until no device's
           current certificate (certs.json, not revoked) is from the old CA: `device renew-cert` them
           first, or the broker would refuse them.

Fleet-wide (--all, --kind, --board: the active devices in the registry) the devices go one after
the other through cli/common.py each_device, not as a rollout-engine campaign: a phase is complete
only when every device has passed it (a device the switch finds unstaged no longer reaches the
broker), so there is nothing for cohorts, pauses or an abort share to do but leave a phase half
done; run the phase again for the devices that failed. One device at a time also keeps the
retirement's reconnects (one trial connection each) from all landing on the broker at once.

Mosquitto 2.0.11 rereads `cafile` on SIGHUP only on a listener that also has a `crlfile` (measured:
without one it keeps the CAs it started with), so for mutual TLS without a CRL the tool says to
restart the broker.
"""
from __future__ import annotations

import datetime
import secrets
from pathlib import Path

import click

from host_tools.cli.common import EXIT_USAGE, Ctx, each_device, fail, write_private
from host_tools.cli.fleet_campaign import fleet

NEXT_PEM, NEXT_KEY = "ca-next.pem", "ca-next.key"
STAGED = "ca-next.json"  # the devices that took the next CA: {device: n}, for switch's check


def _pems(certs) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _der(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.DER)


def _load(d: Path, pem: str, key: str):
    from host_tools import crl
    try:
        return crl.load_ca(d, pem, key)
    except crl.CrlError as e:
        fail(str(e))


def _ca_certs(d: Path) -> list:
    from cryptography import x509
    try:
        return x509.load_pem_x509_certificates((d / "ca.pem").read_bytes())
    except (OSError, ValueError) as e:
        fail(f"{d / 'ca.pem'} cannot be read (provision --tls makes it): {e}")


def _conf(d: Path) -> str:
    try:
        return (d / "mosquitto.conf").read_text()
    except OSError:
        return ""


def _mtls(d: Path) -> bool:
    return "require_certificate true" in _conf(d)


def _reload(o: Ctx, d: Path) -> dict:
    from host_tools.cli.broker_rotate import _reloaded
    r = _reloaded(o, d)
    if _mtls(d) and "crlfile" not in _conf(d):
        r["restart"] = True
        o.note("[yellow]restart the broker:[/] without a crlfile Mosquitto rereads its cafile (ca.pem) only at "
               "start, so until then it takes device certificates from the CAs it started with")
    return r


def _targets(o: Ctx, device_ids: tuple[str, ...], every: bool, kind: str | None, board: str | None) -> list[str]:
    if every or kind or board:
        if device_ids:
            fail("name devices, or select a fleet with --all/--kind/--board: not both", EXIT_USAGE)
        out = fleet(o, kind, board)
        if not out:
            fail("no active device matches")
        return out
    if not device_ids:
        fail("name the devices (or --all, --kind, --board)", EXIT_USAGE)
    return list(device_ids)


def _unstaged(o: Ctx, d: Path) -> list[str] | None:
    """The registry's active devices `stage` did not reach (None: no registry here): after the switch
    they no longer get past the broker's certificate. Said, not refused: some may be gone for good."""
    import json
    from pathlib import Path as P
    url = str(o.registry)
    if "://" not in url and not P(url).exists():
        return None
    try:
        staged = json.loads((d / STAGED).read_text())
    except (OSError, ValueError):
        staged = {}
    out = [x for x in fleet(o, None, None) if x not in staged]
    if out:
        o.note(f"[yellow]warning:[/] {len(out)} active device(s) were not staged and will not connect to the "
               f"switched broker until they are ({', '.join(out[:10])}{' ...' if len(out) > 10 else ''}): "
               "edgepay broker rotate-ca stage cannot reach them once switched; re-provision them over serial")
    return out


def _stale_certs(d: Path, ca) -> list[str]:
    """Devices whose current certificate (the last certs.json notes, not revoked) is not from `ca`."""
    from host_tools import crl
    gone = {e["serial"] for e in crl.revoked(d)}
    want = ca.subject.rfc4514_string()
    return sorted(dev for dev, rows in crl.issued(d).items()
                  if rows and rows[-1]["serial"] not in gone and rows[-1].get("issuer") != want)


def _retire_dir(o: Ctx, d: Path) -> tuple[dict, bool]:
    """The broker dir's half of a retirement, once every device selected took the new CA alone."""
    from host_tools import crl
    from host_tools.cli.broker_rotate import replace_file
    from host_tools.cloud.carotate import ca_h
    certs = _ca_certs(d)
    old = d / crl.OLD_PEM
    if len(certs) == 1 and not old.exists():
        return {"broker_dir": "single CA"}, True
    new = certs[0]
    if _mtls(d):
        stale = _stale_certs(d, new)
        if stale:
            o.note(f"[bold red]the old CA stays in {d / 'ca.pem'}:[/] the broker takes device certificates by it and "
                   f"{len(stale)} device(s) hold one from it ({', '.join(stale[:10])}{' ...' if len(stale) > 10 else ''}): "
                   f"renew them (edgepay device renew-cert ... --broker-dir {d}), then retire again")
            return {"broker_dir": "overlap kept", "stale_certs": stale}, False
    retired = []
    for c in certs[1:] + ([x for x in _old_cert(d) if x not in certs[1:]]):
        name = f"ca-retired-{ca_h(_der(c)).hex()}.pem"
        write_private(d / name, _pems([c]))
        retired.append(name)
    replace_file(d, "ca.pem", _pems([new]))
    (d / crl.OLD_KEY).unlink(missing_ok=True)  # a retired CA signs nothing more: its key goes
    old.unlink(missing_ok=True)
    if (d / crl.CRL).exists():
        crl.write_crl(d)  # the new CA's CRL alone
    r = _reload(o, d)
    if not o.json:
        o.console.print(f"[green]retired[/] the old CA in {d}: ca.pem holds {new.subject.rfc4514_string()} alone"
                        + (f"; kept as {', '.join(retired)}" if retired else ""))
    return {"broker_dir": "retired", "retired": retired, "broker_reload": r or None}, True


def _old_cert(d: Path) -> list:
    from cryptography import x509

    from host_tools import crl
    try:
        return [x509.load_pem_x509_certificate((d / crl.OLD_PEM).read_bytes())]
    except (OSError, ValueError):
        return []


def register(broker: click.Group) -> None:
    @broker.group("rotate-ca")
    def rotate_ca() -> None:
        """Replace the broker's CA by overlap: stage, switch, retire (docs/broker.md "The CA")."""

    bdir = click.option("--broker-dir", type=click.Path(file_okay=False, path_type=Path),
                        default=Path("edgepay") / "broker", show_default=True)

    def selection(f):
        for opt in reversed([
                click.argument("device_ids", metavar="[DEVICE]...", nargs=-1),
                click.option("--all", "every", is_flag=True, help="every active device in the registry"),
                click.option("--kind", help="every active device of this kind"),
                click.option("--board", help="every active device on this board"),
                click.option("--timeout", type=float, default=30.0, show_default=True,
                             help="seconds for each device (its answer, and a retirement's trial connection)"),
                click.option("--busy-wait", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
                             help="seconds before a command answered busy (another trial running) goes again")]):
            f = opt(f)
        return f

    @rotate_ca.command("stage")
    @selection
    @bdir
    @click.pass_obj
    def stage(o: Ctx, device_ids, every, kind, board, timeout, busy_wait, broker_dir: Path) -> None:
        """Make the next CA (once) and send it to each device, to trust beside the current one."""
        from host_tools import crl
        from host_tools.cli.cmd import connect
        from host_tools.cli.provision import _key_pem, _pem
        from host_tools.cloud.carotate import CaError, ca_h
        from host_tools.cloud.carotate import stage as send_stage
        from host_tools.cloud.registry import RegistryError
        from host_tools.tls import make_ca
        d = broker_dir.resolve()
        devices = _targets(o, device_ids, every, kind, board)
        _load(d, "ca.pem", "ca.key")
        if (d / crl.OLD_PEM).exists():
            fail(f"the broker in {d} is switched to a new CA whose retirement is not done: "
                 "run `edgepay broker rotate-ca retire` first")
        made = False
        if (d / NEXT_PEM).exists():
            _, nxt = _load(d, NEXT_PEM, NEXT_KEY)
        else:
            day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
            key, nxt = make_ca(f"edgepay device CA {day} {secrets.token_hex(3)}")
            write_private(d / NEXT_KEY, _key_pem(key))
            write_private(d / NEXT_PEM, _pem(nxt))
            made = True
        der = _der(nxt)
        o.note(("made" if made else "staging") + f" the next CA {nxt.subject.rfc4514_string()} "
               f"(h {ca_h(der).hex()}) in {d / NEXT_PEM}")
        reg, client = connect(o)

        def one(dev: str) -> tuple[dict, str]:
            out = send_stage(client, dev, der, timeout, busy_wait)
            return out, f"trusts the next CA beside its current one (ca{out['ca']}.der)"
        def after(results: list[dict]) -> tuple[dict, bool]:
            import json
            try:
                staged = json.loads((d / STAGED).read_text()) if not made else {}
            except (OSError, ValueError):
                staged = {}
            staged.update({r["device"]: r["ca"] for r in results if r["ok"]})
            write_private(d / STAGED, json.dumps(staged, indent=1, sort_keys=True) + "\n")
            return {"ca": nxt.subject.rfc4514_string(), "h": ca_h(der).hex(), "made": made}, True
        try:
            each_device(o, devices, one, (CaError, RegistryError), "staged", "staged", after=after)
        finally:
            client.close()
            reg.close()

    @rotate_ca.command("switch")
    @bdir
    @click.option("--days", type=click.IntRange(1, 3650), default=365, show_default=True,
                  help="lifetime of the broker's new server certificate")
    @click.pass_obj
    def switch(o: Ctx, broker_dir: Path, days: int) -> None:
        """Make the next CA the broker's: its server certificate from it, both CAs taken from devices."""
        from host_tools import crl
        from host_tools.cli.broker_rotate import reissue_server, replace_file
        from host_tools.cli.provision import _key_pem
        from host_tools.cloud.carotate import ca_h
        d = broker_dir.resolve()
        old_key, old = _load(d, "ca.pem", "ca.key")
        unstaged = _unstaged(o, d) if (d / NEXT_PEM).exists() else None
        if (d / NEXT_PEM).exists():
            new_key, new = _load(d, NEXT_PEM, NEXT_KEY)
            if not (d / crl.OLD_PEM).exists():  # a switch cut short may have put it there already
                write_private(d / crl.OLD_KEY, _key_pem(old_key))
                write_private(d / crl.OLD_PEM, _pems([old]))
            _, old = _load(d, crl.OLD_PEM, crl.OLD_KEY)
            replace_file(d, "ca.key", _key_pem(new_key))
            replace_file(d, "ca.pem", _pems([new, old]))  # the new CA first: what issues from ca.pem
            (d / NEXT_KEY).unlink()
            (d / NEXT_PEM).unlink()
            (d / STAGED).unlink(missing_ok=True)
        elif (d / crl.OLD_PEM).exists():  # switched already: the rest again
            new_key, new = old_key, old
            _, old = _load(d, crl.OLD_PEM, crl.OLD_KEY)
        else:
            fail(f"no next CA in {d}: run `edgepay broker rotate-ca stage` first")
        cn, cert = reissue_server(d, new_key, new, days)
        if (d / crl.CRL).exists():
            crl.write_crl(d)  # both CAs' CRLs: device certificates from either are checked
        r = _reload(o, d)
        data = {"ca": new.subject.rfc4514_string(), "h": ca_h(_der(new)).hex(), "old": old.subject.rfc4514_string(),
                "client_cas": [c.subject.rfc4514_string() for c in _ca_certs(d)],
                "server": {"cn": cn, "serial": format(cert.serial_number, "x"),
                           "not_after": cert.not_valid_after_utc.isoformat()},
                "mtls": _mtls(d), "unstaged": unstaged, "broker_reload": r or None}
        o.emit(data, lambda: o.console.print(
            f"switched {d}: server certificate for {cn} from {data['ca']}; the broker takes device certificates "
            f"from both CAs until `rotate-ca retire`, and new ones come from the new CA"))

    @rotate_ca.command("retire")
    @selection
    @bdir
    @click.pass_obj
    def retire(o: Ctx, device_ids, every, kind, board, timeout, busy_wait, broker_dir: Path) -> None:
        """Make the new CA each device's only one (waits for its verdict); then retire the old one here."""
        from host_tools.cli.cmd import connect
        from host_tools.cloud.carotate import CaError
        from host_tools.cloud.carotate import retire as send_retire
        from host_tools.cloud.registry import RegistryError
        d = broker_dir.resolve()
        devices = _targets(o, device_ids, every, kind, board)
        staged_only = (d / NEXT_PEM).exists()
        if staged_only:  # not switched: the broker's certificate is still from the current CA
            _, ca = _load(d, NEXT_PEM, NEXT_KEY)
            o.note(f"[yellow]warning:[/] {d} is not switched (ca-next.pem is staged): the broker's certificate is "
                   "still from the current CA, so a device trying the next CA alone will be refused")
        else:
            ca = _ca_certs(d)[0]
        der = _der(ca)
        why = " (the broker is not switched yet: run `edgepay broker rotate-ca switch` first)" if staged_only else ""
        reg, client = connect(o)

        def one(dev: str) -> tuple[dict, str]:
            try:
                out = send_retire(client, dev, der, timeout, busy_wait)
            except CaError as e:
                e.detail += why
                raise
            return out, f"trusts {ca.subject.rfc4514_string()} alone (ca{out['n']}.der)"

        def after(results: list[dict]) -> tuple[dict, bool]:
            if staged_only or not all(r["ok"] for r in results):
                return {"broker_dir": "overlap kept"}, True  # the devices' failures already fail it
            return _retire_dir(o, d)
        try:
            each_device(o, devices, one, (CaError, RegistryError), "retired", "retired", after=after)
        finally:
            client.close()
            reg.close()
