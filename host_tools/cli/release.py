"""`edgepay release keygen|build|verify|keylist|push-keys`: release keys, signed firmware releases
and signed release key lists (SPEC §10; host_tools/release.py, host_tools/protocol/keylist.py). The
private key stays where keygen writes it: never in the registry, never in a git work tree.

    edgepay release keygen --out ~/.edgepay/release-keys
    edgepay release build --board sim-gate --version 1.4.0 --seq 7 --key ~/.edgepay/release-keys/release-<kid>.pem
    edgepay release verify build/releases/sim-gate-1.4.0.manifest --pub .../release-<kid>.pub.pem
    edgepay release keylist --sign-with OLD.pem --version 2 --trust OLD.pub.pem --trust NEW.pub.pem -o keys-2.cose
    edgepay release push-keys gate-001 gate-002 --file keys-2.cose
    edgepay release push-keys --file keys-2.cose --kind gate --cohorts 5,25,100 --rate 30   # a campaign
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import click

from host_tools.cli.common import EXIT_USAGE, Ctx, fail, load_board
from host_tools.cli.fleet_campaign import fleet_campaign, fleet_options

# push-keys: exit 0 when every device took the list, else 10 (a device refused it or failed), 12
# when one did not answer in time
_PUSH_EXIT = {"SUCCEEDED": 0, "TIMED_OUT": 12, "EXPIRED": 12}

DEFAULT_KEYS = Path.home() / ".edgepay" / "release-keys"


def _manifest_json(m, kid: bytes | None = None) -> dict:
    d = {"board": m.board, "kind": m.kind, "version": m.version, "seq": m.seq, "size": m.size,
         "sha256": m.sha256.hex(), "chunk": m.chunk, "journal": m.journal, "format": m.format,
         "window": list(m.window) if m.window else None, "from": m.from_version, "allow_lower": m.allow_lower}
    if kid is not None:
        d["kid"] = kid.hex()
    return d


def register(cli: click.Group) -> None:
    @cli.group()
    def release() -> None:
        """Signed firmware releases: release keys, build, verify."""

    @release.command()
    @click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_KEYS,
                  show_default=True, help="where the key pair goes (0700; refused inside a git work tree)")
    @click.pass_obj
    def keygen(o: Ctx, out: Path) -> None:
        """Make an Ed25519 release key pair. Keep two trusted on every device (by key id), so the
        release key can be rotated; the private file signs releases and nothing else."""
        from host_tools.release import ReleaseError, keygen as make
        try:
            kid, priv, pub = make(out)
        except ReleaseError as e:
            fail(str(e))
        o.emit({"kid": kid.hex(), "private": str(priv), "public": str(pub)},
               lambda: o.console.print(f"[bold green]release key[/] {kid.hex()}\n  private {priv} (0600)\n  public  {pub}"))

    @release.command()
    @click.option("--board", "board_name", required=True, help="a boards/*.json name or a path")
    @click.option("--version", required=True, help="the release's version, e.g. 1.4.0")
    @click.option("--seq", type=click.IntRange(min=1, max=2 ** 32 - 1), required=True,
                  help="anti-rollback sequence: above every release this class has installed")
    @click.option("--key", "key_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
                  help="the release private key (from keygen)")
    @click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("build") / "releases",
                  show_default=True)
    @click.option("--chunk", type=click.IntRange(256, 1536), default=1024, show_default=True, help="bytes per chunk")
    @click.option("--window", help="install only between START,END (Unix seconds)")
    @click.option("--from", "from_version", help="the oldest installed version it may update")
    @click.option("--allow-lower", is_flag=True, help="an emergency rollback: may install below the installed seq")
    @click.pass_obj
    def build(o: Ctx, board_name: str, version: str, seq: int, key_file: Path, out: Path, chunk: int,
              window: str | None, from_version: str | None, allow_lower: bool) -> None:
        """Build the board's payload and its signed manifest: OUT/BOARD-VERSION.bin and .manifest."""
        from host_tools.protocol.manifest import ManifestError
        from host_tools.release import ReleaseError, build_release, load_private
        board = load_board(board_name)
        win = None
        if window:
            try:
                a, b = (int(x) for x in window.split(","))
                win = (a, b)
            except ValueError:
                fail(f"--window {window!r}: START,END in Unix seconds", EXIT_USAGE)
        try:
            rel = build_release(board, version, seq, load_private(key_file), chunk=chunk, window=win,
                                from_version=from_version, allow_lower=allow_lower)
        except (ReleaseError, ManifestError) as e:
            fail(str(e))
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"{board['name']}-{version}"
        Path(f"{stem}.bin").write_bytes(rel.payload)
        Path(f"{stem}.manifest").write_bytes(rel.signed)
        data = {**_manifest_json(rel.manifest, rel.kid), "payload": f"{stem}.bin", "manifest": f"{stem}.manifest",
                "manifest_bytes": len(rel.signed)}
        o.emit(data, lambda: o.console.print(
            f"[bold green]release[/] {board['name']} {version} seq {seq}: {rel.manifest.size:,} B payload "
            f"(sha256 {rel.manifest.sha256.hex()[:16]}...), signed by {rel.kid.hex()}\n  {stem}.bin\n  {stem}.manifest"))

    @release.command()
    @click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--pub", "pubs", multiple=True, required=True, type=click.Path(dir_okay=False, path_type=Path),
                  help="a trusted release public key (repeat)")
    @click.option("--revoked", multiple=True, help="a revoked key id (hex; repeat)")
    @click.option("--payload", type=click.Path(dir_okay=False, path_type=Path), help="check the payload's size and digest too")
    @click.pass_obj
    def verify(o: Ctx, manifest: Path, pubs: tuple[Path, ...], revoked: tuple[str, ...], payload: Path | None) -> None:
        """Verify a manifest as a device does (signature, key trusted and not revoked), and a payload."""
        from host_tools.protocol.manifest import ManifestError, key_id, verify_manifest
        from host_tools.release import ReleaseError, load_public
        try:
            trusted = {key_id(k): k for k in (load_public(p) for p in pubs)}
            revoked_ids = {bytes.fromhex(r) for r in revoked}
        except (ReleaseError, ValueError) as e:
            fail(str(e))
        try:
            raw = manifest.read_bytes()
        except OSError as e:
            fail(f"cannot read {manifest}: {e}")
        try:
            m = verify_manifest(raw, trusted, revoked_ids)
        except ManifestError as e:
            fail(f"refused: {e}")
        if payload is not None:
            data = payload.read_bytes()
            if len(data) != m.size or hashlib.sha256(data).digest() != m.sha256:
                fail("refused: digest_mismatch: the payload is not the one the manifest names")
        o.emit({**_manifest_json(m), "ok": True}, lambda: o.console.print(
            f"[bold green]verified[/] {m.board} {m.version} seq {m.seq}" + (" and its payload" if payload else "")))

    @release.command()
    @click.option("--sign-with", "key_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
                  help="the release private key that signs the list: one the devices trust now, not one it revokes")
    @click.option("--version", "list_version", type=click.IntRange(min=1, max=2 ** 32 - 1), required=True,
                  help="the list's version: above the one the devices hold (they refuse a stale list)")
    @click.option("--trust", "pubs", multiple=True, required=True, type=click.Path(dir_okay=False, path_type=Path),
                  help="a release public key the devices are to trust (repeat, 1-4): the whole list, not an addition")
    @click.option("--revoke", "revoke", multiple=True, help="a release key id to revoke for good (hex; repeat)")
    @click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
                  help="where the signed list goes")
    @click.pass_obj
    def keylist(o: Ctx, key_file: Path, list_version: int, pubs: tuple[Path, ...], revoke: tuple[str, ...],
                out: Path) -> None:
        """Sign a release key list (SPEC §10 "The release key list"), for push-keys. Rotating: a list
        adding the new key signed by the old, then one revoking the old signed by the new."""
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        from host_tools.protocol.keylist import KeyList, KeyListError, kid_of, sign_keylist
        from host_tools.protocol.manifest import key_id
        from host_tools.release import ReleaseError, load_private, load_public
        try:
            key = load_private(key_file)
            keys = tuple(load_public(p).public_bytes(Encoding.Raw, PublicFormat.Raw) for p in pubs)
        except ReleaseError as e:
            fail(str(e))
        try:
            revoked = tuple(bytes.fromhex(r) for r in revoke)
        except ValueError:
            fail(f"--revoke {revoke}: key ids are hex (8 bytes)", EXIT_USAGE)
        signer = key_id(key.public_key())
        if signer in revoked:
            fail(f"self_revoked: {signer.hex()} signs this list and is revoked by it; sign with another "
                 "trusted release key (the devices refuse it)", EXIT_USAGE)
        if all(kid_of(k) in revoked for k in keys):
            fail("empty: every key the list trusts is revoked by it", EXIT_USAGE)
        try:
            raw = sign_keylist(key, KeyList(list_version, keys, revoked))
        except KeyListError as e:
            fail(str(e), EXIT_USAGE)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(raw)
        data = {"file": str(out), "version": list_version, "signed_by": signer.hex(),
                "keys": [kid_of(k).hex() for k in keys], "revoked": [r.hex() for r in revoked], "bytes": len(raw)}
        o.emit(data, lambda: o.console.print(
            f"[bold green]key list[/] v{list_version} signed by {signer.hex()}: trusts {', '.join(data['keys'])}"
            + (f"; revokes {', '.join(data['revoked'])}" if revoked else "") + f"\n  {out} ({len(raw)} B)"))

    @release.command("push-keys")
    @click.argument("devices", metavar="[DEVICE]...", nargs=-1)
    @click.option("--file", "list_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
                  help="a signed key list (from keylist)")
    @click.option("--timeout", type=click.FloatRange(min=0.1), default=15.0, show_default=True,
                  help="seconds per device for its signed result")
    @fleet_options("keys-v<list version>-YYYYmmddTHHMMSS")
    @click.pass_obj
    def push_keys(o: Ctx, devices: tuple[str, ...], list_file: Path, timeout: float, every: bool, kind: str | None,
                  board: str | None, cid: str | None, cohorts: str, rate: float, abort_share: float, no_wait: bool,
                  every_s: float, db: str) -> None:
        """Send a signed release key list to DEVICES (the set_release_keys command) and report each
        device's answer: {"v", "keys"} when taken, or the reason it was refused (nothing changed).
        Or to a fleet (--all, --kind, --board) as a campaign on the rollout engine (action keylist):
        cohorts, rate, halting past --abort-share; a device already on that list version counts as
        succeeded; pause/resume/cancel/status with edgepay campaign."""
        from host_tools.protocol.keylist import KeyListError, peek_keylist
        try:
            raw = list_file.read_bytes()
        except OSError as e:
            fail(f"cannot read {list_file}: {e}")
        try:
            peek_keylist(raw)
        except KeyListError as e:
            fail(f"{list_file} is not a release key list: {e}", EXIT_USAGE)
        if every or kind or board:
            if devices:
                fail("name devices, or select a fleet with --all/--kind/--board: not both", EXIT_USAGE)
            from host_tools.cloud.keylist_action import ACTION, KeylistAction
            spec = KeylistAction.spec(raw, ttl=max(1, int(timeout)))
            return fleet_campaign(o, ACTION, spec, kind=kind,
                                  board=board, cid=cid, id_format=f"keys-v{spec['v']}-%Y%m%dT%H%M%S",
                                  what="send the list to", cohorts=cohorts, rate=rate, abort_share=abort_share,
                                  timeout_s=timeout + 5,   # a device's budget: its answer, and the wait for a link
                                  no_wait=no_wait, every_s=every_s, db=db)
        if not devices:
            fail("name the devices to send the list to (or --all, --kind, --board)", EXIT_USAGE)
        from host_tools.cli.cmd import connect
        reg, client = connect(o)
        results = []
        try:
            for d in devices:
                o.device(reg, d)
            for d in devices:
                c = client.send(d, "set_release_keys", {1: raw}, timeout=timeout)
                results.append({"device": d, "state": c.state.value, "code": c.code, "data": c.data})
        finally:
            client.close()
            reg.close()

        def human() -> None:
            for r in results:
                ok = r["state"] == "SUCCEEDED"
                o.console.print(f"[bold {'green' if ok else 'red'}]{r['state']}[/] {r['device']} "
                                + (f"list v{r['data']['v']}, {r['data']['keys']} keys" if ok else
                                   f"{r['code']} {(r['data'] or {}).get('why', '')}"))
        o.emit({"results": results}, human)
        code = max(_PUSH_EXIT.get(r["state"], 10) for r in results)
        if code:
            raise click.exceptions.Exit(code)
