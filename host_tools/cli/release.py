"""`edgepay release keygen|build|verify`: release keys and signed firmware releases (SPEC §10;
host_tools/release.py). The private key stays where keygen writes it: never in the registry, never
in a git work tree.

    edgepay release keygen --out ~/.edgepay/release-keys
    edgepay release build --board sim-gate --version 1.4.0 --seq 7 --key ~/.edgepay/release-keys/release-<kid>.pem
    edgepay release verify build/releases/sim-gate-1.4.0.manifest --pub .../release-<kid>.pub.pem
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import click

from host_tools.cli.common import EXIT_USAGE, Ctx, fail, load_board

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
