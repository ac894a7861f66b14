"""Signed firmware releases (SPEC §10): release keys, the payload a board's slot receives, and its
manifest. Used by `edgepay release` (cli/release.py).

A release key is Ed25519; its private half lives only where `edgepay release keygen` writes it
(outside any git work tree, owner-only), never in the device registry or the repo. A payload is,
for an RP2040 or a simulated board, the board's bundle (host_tools/bundle.py) packed as an EPB1
archive for a flash slot; for an ESP32 board, an OTA image of the MicroPython port with the
bundle frozen in (format "image"), which needs the port's own build and is not made here yet.

EPB1 archive: b"EPB1", then per file in path order: u8 path length, the UTF-8 path, u32 size
(big-endian), the bytes. Streamable: a device unpacks it chunk by chunk, holding one header.
"""
from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (Encoding, NoEncryption, PrivateFormat, PublicFormat,
                                                          load_pem_private_key, load_pem_public_key)

from host_tools.bundle import build_bundle
from host_tools.protocol.manifest import Manifest, key_id, sign_manifest

MAGIC = b"EPB1"
JOURNAL_FORMAT = 1   # the journal layout firmware/journal.py writes today


class ReleaseError(Exception):
    pass


def inside_git_tree(p: Path) -> Path | None:
    """The git work tree `p` would land in, if any."""
    p = p.resolve()
    for d in (p, *p.parents):
        if (d / ".git").exists():
            return d
    return None


def keygen(out: Path) -> tuple[bytes, Path, Path]:
    """A new release key in `out` (0700): release-<kid>.pem (private, 0600) and .pub.pem; (kid, paths)."""
    repo = inside_git_tree(out)
    if repo is not None:
        raise ReleaseError(f"{out} is inside the git work tree {repo}: a release key never goes into a repository")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(out, 0o700)
    key = Ed25519PrivateKey.generate()
    kid = key_id(key.public_key())
    priv, pub = out / f"release-{kid.hex()}.pem", out / f"release-{kid.hex()}.pub.pem"
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return kid, priv, pub


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ReleaseError(f"{path}: not a release key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseError(f"{path}: not an Ed25519 key")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    try:
        key = load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError) as e:
        raise ReleaseError(f"{path}: not a release public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ReleaseError(f"{path}: not an Ed25519 public key")
    return key


def pack(files: dict[str, bytes]) -> bytes:
    out = bytearray(MAGIC)
    for path in sorted(files):
        p = path.encode()
        if not 0 < len(p) < 256:
            raise ReleaseError(f"path {path!r}: 1-255 bytes")
        out += bytes([len(p)]) + p + struct.pack(">I", len(files[path])) + files[path]
    return bytes(out)


def unpack(data: bytes) -> dict[str, bytes]:
    if data[:4] != MAGIC:
        raise ReleaseError("not an EPB1 archive")
    files, i = {}, 4
    while i < len(data):
        n = data[i]
        path = data[i + 1:i + 1 + n].decode()
        (size,) = struct.unpack(">I", data[i + 1 + n:i + 5 + n])
        start = i + 5 + n
        if start + size > len(data):
            raise ReleaseError("truncated archive")
        files[path] = data[start:start + size]
        i = start + size
    return files


@dataclass
class Release:
    manifest: Manifest
    signed: bytes       # the COSE_Sign1 manifest
    payload: bytes
    kid: bytes


def build_release(board: dict, version: str, seq: int, key: Ed25519PrivateKey, *, chunk: int = 1024,
                  window: tuple[int, int] | None = None, from_version: str | None = None,
                  allow_lower: bool = False, root: Path | None = None) -> Release:
    """The signed release of `board`'s bundle, compiled from `root` (the firmware tree, firmware/
    by default: another tree for a test release that must fail)."""
    if board.get("mcu") == "esp32" and not board.get("sim"):
        raise ReleaseError(f"{board['name']}: an ESP32 release carries an OTA image of the MicroPython port with "
                           "the bundle frozen in (format 'image'); that needs the port's own build, not made here yet")
    with tempfile.TemporaryDirectory(prefix="edgepay-release-") as tmp:
        out = (build_bundle(board, Path(tmp), root) if root else build_bundle(board, Path(tmp))).out / "bundle"
        files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    payload = pack(files)
    m = Manifest(board=board["name"], kind=board["kind"], version=version, seq=seq, size=len(payload),
                 sha256=hashlib.sha256(payload).digest(), chunk=chunk, journal=JOURNAL_FORMAT, format="bundle",
                 window=window, from_version=from_version, allow_lower=allow_lower)
    return Release(m, sign_manifest(key, m), payload, key_id(key.public_key()))
