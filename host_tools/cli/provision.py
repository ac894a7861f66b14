"""`edgepay provision DEVICE --board B`: identity, config, broker credentials, TLS, registry.

Writes into --out (default ./edgepay/devices/DEVICE, 0700):
  config.json      the device's config (its key inside; with --wifi-ssid also the Wi-Fi password,
                   read from --wifi-password-file): flash it with `edgepay flash --config`
  board.json       the board file, checked in full; config.json's "board" section holds its
                   SHA-256, which the device checks at boot (host_tools/boardcheck.py)
  ca.pem, device.pem, device.key      with --tls
and into --broker-dir (default ./edgepay/broker, 0700), files host_tools/broker.py and mosquitto read:
  passwd           one PBKDF2 line per device (`password_file`)
  acl              the edgepay ACL (`acl_file`): devices confined to v1/dev/<id>/... by pattern
  ca.pem, ca.key, server.pem, server.key     with --tls: the broker's CA and certificate
Every file holding a secret is created 0600. The key is printed only with --show-key.

--reprovision: a revoked (stolen, compromised) device given a fresh key under its own id, as at
first provisioning: the key goes to the board over its serial link (`edgepay flash`), never the
network. Key version = the highest so far + 1; every earlier one is compromised in the registry
(kept for audit, never money again: records under it are quarantined, compromised_key); a new
broker password replaces the old line; config.json is written again. Refused unless the device is
revoked (an active one is rotated with `edgepay device rekey`). docs/security.md.
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path

import click

from host_tools.boardcheck import FILE as BOARD_FILE
from host_tools.boardcheck import device_bytes, section
from host_tools.broker import DEVICE_PORT
from host_tools.cli.common import (EXIT_USAGE, Ctx, fail, is_sim_board, load_board, make_private_dir,
                                   parse_hostport, write_private)
from host_tools.provision import MAX_BROKERS, broker_section, ensure_acl, update_passwd
from host_tools.tls import CA_DAYS, LEAF_DAYS

def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def tls_material(broker_dir: Path, out: Path, device: str, hostnames: list[str], days: int = LEAF_DAYS,
                 o: Ctx | None = None) -> dict:
    """CA (kept in the broker dir, made once, CA_DAYS), broker certificate (made once) and a device
    certificate (CN = device id) signed by that CA, each valid `days` but never past the CA; the CA
    certificate copied beside the config."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from host_tools.tls import device_der, make_ca, make_leaf
    ca_pem, ca_key_p = broker_dir / "ca.pem", broker_dir / "ca.key"
    if ca_pem.exists() and ca_key_p.exists():
        try:
            ca = x509.load_pem_x509_certificate(ca_pem.read_bytes())
            ca_key = serialization.load_pem_private_key(ca_key_p.read_bytes(), None)
        except (ValueError, TypeError) as e:
            fail(f"the CA in {broker_dir} cannot be read: {e}")
    else:
        ca_key, ca = make_ca("edgepay device CA")
        write_private(ca_key_p, _key_pem(ca_key))
        write_private(ca_pem, _pem(ca))
    if not (broker_dir / "server.pem").exists():
        dns = [h for h in hostnames if not _is_ip(h, ipaddress)]
        ips = [h for h in hostnames if _is_ip(h, ipaddress)]
        key, cert = make_leaf(ca_key, ca, cn=hostnames[0], dns=dns, ips=ips, days=days)
        write_private(broker_dir / "server.key", _key_pem(key))
        write_private(broker_dir / "server.pem", _pem(cert))
    dkey, dcert = make_leaf(ca_key, ca, cn=device, dns=(), ips=(), days=days)
    if o is not None and dcert.not_valid_after_utc < _after(days):  # an older, shorter-lived CA
        o.note(f"[yellow]note:[/] the CA in {broker_dir} expires {ca.not_valid_after_utc:%Y-%m-%d}: "
               f"certificates end then, not in {days} days")
    write_private(out / "device.key", _key_pem(dkey))
    write_private(out / "device.pem", _pem(dcert))
    from host_tools import crl  # what revoke and renew-cert put on the CRL later (host_tools/crl.py)
    crl.record_issued(broker_dir, device, dcert)
    if not (broker_dir / crl.CRL).exists():  # an empty one: the broker's crlfile from the start
        crl.write_crl(broker_dir, (ca_key, ca))
    cert_der, key_der = device_der(dkey, dcert)  # what the board loads: its mbedtls reads DER only
    write_private(out / "device.der", cert_der)
    write_private(out / "device.key.der", key_der)
    write_private(out / "ca.pem", _pem(ca))
    return {"ca": str(ca_pem), "server": str(broker_dir / "server.pem"), "device_cert": str(out / "device.pem")}


def _after(days: int):
    import datetime
    return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days - 1)


def read_wifi(ssid: str | None, pw_file: Path | None) -> dict | None:
    """{"ssid", "password"} for config.json, or None. The password comes from a file (never the
    command line, where `ps` and shell history would keep it); the file must be owner-only."""
    import os
    import stat
    if ssid is None and pw_file is None:
        return None
    if ssid is None or pw_file is None:
        fail("give both --wifi-ssid and --wifi-password-file (an empty file for an open network)")
    if not 1 <= len(ssid.encode()) <= 32:
        fail(f"bad --wifi-ssid {ssid!r}: 1-32 bytes")
    try:
        st = os.stat(pw_file)
        raw = pw_file.read_bytes()
    except OSError as e:
        fail(f"cannot read --wifi-password-file {pw_file}: {e.strerror or e}")
    if stat.S_IMODE(st.st_mode) & 0o077:
        fail(f"--wifi-password-file {pw_file} is readable by others (mode {stat.S_IMODE(st.st_mode):o}): "
             f"chmod 600 {pw_file}")
    try:
        pw = raw.decode().rstrip("\r\n")
    except UnicodeDecodeError:
        fail(f"--wifi-password-file {pw_file} is not UTF-8 text")
    # WPA2-PSK: a passphrase of 8-63 characters or 64 hex digits; empty for an open network
    hexkey = len(pw) == 64 and all(c in "0123456789abcdefABCDEF" for c in pw)
    if pw and not (8 <= len(pw) <= 63 or hexkey):
        fail(f"the Wi-Fi password in {pw_file} must be 8-63 characters (or 64 hex digits, or empty: open network)")
    return {"ssid": ssid, "password": pw}


def _is_loopback(host: str) -> bool:
    import ipaddress
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(h: str, ipaddress) -> bool:
    try:
        ipaddress.ip_address(h)
        return True
    except ValueError:
        return False


def release_keys(paths: tuple[Path, ...]) -> dict | None:
    """The config's "ota" section (SPEC §10): the release public keys a device trusts, by kid."""
    if not paths:
        return None
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from host_tools.protocol.manifest import key_id
    from host_tools.release import ReleaseError, load_public
    keys = {}
    for p in paths:
        try:
            pub = load_public(p)
        except ReleaseError as e:
            fail(str(e))
        keys[key_id(pub).hex()] = pub.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    return {"keys": keys, "revoked": []}


def _reprovision_version(reg, device: str, board: dict, asked: int | None, o: Ctx) -> int:
    """The key version a re-provisioning of `device` gives it (the highest so far + 1), after the
    refusals: only a revoked device, of the board's kind."""
    from host_tools.cloud.registry import RegistryError
    try:
        d = reg.get(device)
    except RegistryError:
        reg.close()
        fail(f"device {device!r} is not registered in {o.registry}: provision it normally (without --reprovision)")
    if d.status == "active":
        reg.close()
        fail(f"device {device!r} is active: a key not known to be compromised is rotated over the air, "
             f"rotate it with edgepay device rekey {device} (if its key is compromised: edgepay device revoke "
             f"{device}, then --reprovision)")
    if d.status == "decommissioned":
        reg.close()
        fail(f"device {device!r} is decommissioned (retired, its journal drained): to bring the board back "
             f"under this id, edgepay device revoke {device}, then --reprovision (its old key then counts "
             "as compromised); a new board elsewhere gets a new id")
    if d.kind != board["kind"]:
        reg.close()
        fail(f"device {device!r} is a {d.kind} device; {board['name']} is a {board['kind']} board")
    version = max(k.version for k in reg.keys(device)) + 1
    if asked is not None and asked != version:
        reg.close()
        fail(f"--key-version {asked}: a re-provisioned {device} gets version {version} (the highest so far + 1)",
             EXIT_USAGE)
    return version


def register(cli: click.Group) -> None:
    @cli.command()
    @click.argument("device")
    @click.option("--board", "board_name", required=True, help="a boards/*.json name or a path to a board file")
    @click.option("--out", type=click.Path(file_okay=False, path_type=Path),
                  help="where the device's files go [default: ./edgepay/devices/DEVICE]")
    @click.option("--broker-dir", type=click.Path(file_okay=False, path_type=Path),
                  default=Path("edgepay") / "broker", show_default=True,
                  help="the broker's passwd/acl (and TLS) files")
    @click.option("--device-broker", "device_brokers", multiple=True,
                  help="host:port of the broker's DEVICE listener, what the device connects to [default: the "
                  f"--broker host, port {DEVICE_PORT}]; repeat (at most {MAX_BROKERS}) for brokers it tries in turn")
    @click.option("--tls", is_flag=True, help="make TLS material (CA, broker and device certificates)")
    @click.option("--tls-host", multiple=True, help="broker certificate names (repeat) [default: the broker host]")
    @click.option("--cert-days", type=click.IntRange(1, 3650), default=LEAF_DAYS, show_default=True,
                  help=f"lifetime of the broker and device certificates (a new CA lives {CA_DAYS} days)")
    @click.option("--wifi-ssid", help="the Wi-Fi network the board joins (firmware/net.py)")
    @click.option("--wifi-password-file", type=click.Path(dir_okay=False, path_type=Path),
                  help="a file holding the Wi-Fi password (owner-only; never printed)")
    @click.option("--key-version", type=click.IntRange(min=1), default=None,
                  help="[default: 1; with --reprovision the highest so far + 1, and only that]")
    @click.option("--reprovision", is_flag=True,
                  help="a revoked device again, under its own id, with a fresh key (every earlier one compromised)")
    @click.option("--show-key", is_flag=True, help="print the device key (it is never printed otherwise)")
    @click.option("--release-pub", "release_pubs", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
                  help="a release public key the device trusts for firmware updates (repeat: two, so the "
                       "release key can be rotated; edgepay release keygen)")
    @click.pass_obj
    def provision(o: Ctx, device: str, board_name: str, out: Path | None, broker_dir: Path,
                  device_brokers: tuple[str, ...], tls: bool, tls_host: tuple[str, ...], cert_days: int,
                  wifi_ssid: str | None, wifi_password_file: Path | None, key_version: int | None,
                  show_key: bool, release_pubs: tuple[Path, ...], reprovision: bool) -> None:
        """Give DEVICE its identity: key, config.json, broker credentials, registry entry."""
        from host_tools.cloud.registry import DEVICE_ID, RegistryError
        if not DEVICE_ID.fullmatch(device):
            fail(f"bad device id {device!r}: use 1-32 of a-z 0-9 - (not starting with -), e.g. gate-001")
        board = load_board(board_name)
        if not device_brokers and not is_sim_board(board):
            # a real board reaches the broker over the network: 127.0.0.1 would be the board itself
            fail(f"{board['name']} is a real board: give --device-broker HOST:PORT, the broker's device "
                 f"listener as the board reaches it over the network (e.g. 192.168.1.10:{DEVICE_PORT}, "
                 f"or mqtt.example.com:8883 with --tls)", EXIT_USAGE)
        if not device_brokers:  # --broker is the cloud listener: the device gets the device port
            device_brokers = (f"{parse_hostport(o.broker, '--broker / EDGEPAY_BROKER')[0]}:{DEVICE_PORT}",)
        if len(device_brokers) > MAX_BROKERS:
            fail(f"--device-broker given {len(device_brokers)} times: a device tries at most {MAX_BROKERS} "
                 "brokers", EXIT_USAGE)
        addrs = [parse_hostport(b, "--device-broker") for b in device_brokers]
        host, port = addrs[0]
        for h, _ in addrs:
            if not is_sim_board(board) and _is_loopback(h):
                o.note(f"[yellow]warning:[/] --device-broker {h}: on {board['name']} that is the board itself, "
                       "not this machine; give the address the board reaches the broker at")
        wifi = read_wifi(wifi_ssid, wifi_password_file)
        ota = release_keys(release_pubs)
        out = Path(out) if out is not None else Path("edgepay") / "devices" / device
        if (out / "config.json").exists() and not reprovision:
            fail(f"{out / 'config.json'} exists: {device} looks provisioned already (remove it first)")
        reg = o.open_registry(create=True)
        if reprovision:
            key_version = _reprovision_version(reg, device, board, key_version, o)
        else:
            try:
                reg.get(device)
                fail(f"device {device!r} is already registered in {o.registry}"
                     + (" (revoked: give --reprovision to give it a fresh key under its id)"
                        if reg.get(device).status == "revoked" else ""))
            except RegistryError:
                pass
            key_version = key_version or 1
        key = secrets.token_bytes(32)
        password = secrets.token_urlsafe(18)
        kid = f"{device}:{key_version}"
        make_private_dir(out)
        make_private_dir(broker_dir)
        board_file = device_bytes(board)  # checked in full (load_board did): the device checks only its stamp
        cfg = {"device": device, "kid": kid, "key": key.hex(),
               "broker": broker_section(addrs, password),
               "board": section(board, board_file), "settings": {}}
        if isinstance(board.get("wdt_ms"), int):
            cfg["wdt_ms"] = board["wdt_ms"]
        if wifi:
            cfg["wifi"] = wifi
        if ota:
            cfg["ota"] = ota
        tls_files = None
        if tls:
            names = list(tls_host) or list(dict.fromkeys(h for h, _ in addrs))  # every broker's host
            tls_files = tls_material(broker_dir, out, device, names, cert_days, o)
            # one certificate for every broker, carrying every name: the device checks the first
            cfg["broker"].update(tls=True, ca="ca.pem", server_hostname=names[0],
                                 cert="device.der", certkey="device.key.der")
        (out / BOARD_FILE).write_bytes(board_file)
        write_private(out / "config.json", json.dumps(cfg, indent=1) + "\n")
        update_passwd(broker_dir / "passwd", device, password)
        ensure_acl(broker_dir / "acl")
        try:
            if reprovision:  # conditional on the status and the version seen above
                if reg.reprovision(device, key, board["kind"], board["name"]).key_version != key_version:
                    fail(f"{device}: its keys changed while it was re-provisioned; run it again")
            else:
                reg.add(device, key, board["kind"], board["name"], key_version=key_version)
        except RegistryError as e:
            fail(str(e))
        finally:
            reg.close()
        from host_tools.cli.reload import reload_broker
        reload = reload_broker(broker_dir)  # Mosquitto refuses the new device until it rereads passwd
        result = {"device": device, "kid": kid, "board": board["name"], "kind": board["kind"],
                  "reprovisioned": reprovision,
                  "broker_reload": reload or None,
                  "config": str(out / "config.json"), "board_file": str(out / BOARD_FILE),
                  "board_sha256": cfg["board"]["sha256"], "registry": str(o.registry),
                  "passwd": str(broker_dir / "passwd"), "acl": str(broker_dir / "acl"),
                  "broker": f"{host}:{port}", "brokers": [f"{h}:{p}" for h, p in addrs], "tls": tls_files,
                  "wifi": {"ssid": wifi["ssid"]} if wifi else None,  # the password: never
                  "release_keys": sorted(ota["keys"]) if ota else []}
        if show_key:
            result["key"] = key.hex()

        def human() -> None:
            c = o.console
            c.print(f"[bold green]{'re-provisioned' if reprovision else 'provisioned'}[/] {device} "
                    f"({board['name']}, {board['kind']}) kid {kid}"
                    + (": every earlier key is compromised (audit only, never money)" if reprovision else ""))
            c.print(f"  config    {out / 'config.json'}  (0600; holds the key)")
            c.print(f"  board     {out / BOARD_FILE}  (checked; sha256 {cfg['board']['sha256'][:16]}... in the config)")
            c.print(f"  broker    {broker_dir / 'passwd'}, {broker_dir / 'acl'}  -> device connects to {host}:{port}")
            c.print(f"  registry  {o.registry}")
            if wifi:
                c.print(f"  wifi      {wifi['ssid']!r} (password from {wifi_password_file}, not shown)")
            if tls_files:
                c.print(f"  tls       CA {tls_files['ca']}, broker {tls_files['server']}, device {tls_files['device_cert']}")
            if show_key:
                c.print(f"  key       {key.hex()}")
            if "reloaded" in reload:
                c.print(f"  reloaded  the broker (mosquitto pid {reload['reloaded']}, SIGHUP): it knows {device} now")
            c.print(f"next: edgepay flash --board {board['name']} --port PORT --config {out / 'config.json'}")
        if not ota and not o.json:  # under --json: release_keys [] says it
            o.note("[yellow]note:[/] no --release-pub: this device refuses every firmware update (unknown_key) "
                   "until it is provisioned again with release keys")
        elif ota and len(ota["keys"]) < 2 and not o.json:
            o.note("[yellow]note:[/] one release key: give two (--release-pub twice) so the release key can be "
                   "rotated without a site visit")
        if "reload" in reload:  # stderr, also under --json: a step the user must take
            o.note(f"[yellow]warning:[/] Mosquitto (pid {', '.join(map(str, reload['pids']))}) reads "
                   f"{broker_dir / 'passwd'} and refuses {device} (CONNACK 5, not authorised) until it rereads "
                   f"it: {reload['reload']}")
        o.emit(result, human)
