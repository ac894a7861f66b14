"""Device keys at rest: sealed under a master key (AES-256-GCM), so a copy of the registry's
database is not a copy of the fleet's keys. The master key is 32 bytes in a file named by
EDGEPAY_MASTER_KEY_FILE (hex or raw, owner-only), never in the repository or the database.

A sealed key is b"EPK1" | master key id (4 bytes: SHA-256 of the master key) | nonce (12) |
ciphertext+tag (48), with the device id and key version as associated data: a sealed key moved to
another device's row does not open. A 32-byte value is a key stored as it is (a registry made
without a master key, or before one was given); `Registry.reseal` turns those into sealed ones.
Rotating the master key: `edgepay registry reseal --new-master-key-file NEW` (one transaction).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"EPK1"
ENV = "EDGEPAY_MASTER_KEY_FILE"


class VaultError(Exception):
    pass


def read_master_key(path: str | Path) -> bytes:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise VaultError(f"cannot read the master key {p}: {e.strerror or e}") from None
    if p.stat().st_mode & 0o077:
        raise VaultError(f"{p} is readable by others: chmod 600 it")
    text = raw.strip()
    try:
        key = bytes.fromhex(text.decode()) if len(text) == 64 else raw
    except (UnicodeDecodeError, ValueError):
        key = raw
    if len(key) != 32:
        raise VaultError(f"{p}: a master key is 32 bytes (or 64 hex digits)")
    return key


def master_key_from_env() -> bytes | None:
    path = os.environ.get(ENV)
    return read_master_key(path) if path else None


def write_master_key(path: Path) -> bytes:
    key = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return key


class KeyVault:
    def __init__(self, master: bytes | None):
        if master is not None and len(master) != 32:
            raise VaultError("a master key is 32 bytes")
        self.master = master
        self.mkid = hashlib.sha256(master).digest()[:4] if master else b""

    def seal(self, key: bytes, device: str, version: int) -> bytes:
        if self.master is None:
            return bytes(key)
        nonce = os.urandom(12)
        return MAGIC + self.mkid + nonce + AESGCM(self.master).encrypt(nonce, bytes(key), _aad(device, version))

    def open(self, blob: bytes, device: str, version: int) -> bytes:
        if not blob.startswith(MAGIC):
            return blob  # stored as it is
        if self.master is None:
            raise VaultError(f"{device}'s key is sealed under a master key: set {ENV}")
        if blob[4:8] != self.mkid:
            raise VaultError(f"{device}'s key is sealed under another master key (id {blob[4:8].hex()})")
        try:
            return AESGCM(self.master).decrypt(blob[8:20], blob[20:], _aad(device, version))
        except InvalidTag:
            raise VaultError(f"{device}'s sealed key does not open: tampered, or moved from another row") from None


def _aad(device: str, version: int) -> bytes:
    return f"edgepay-device-key:{device}:{version}".encode()
