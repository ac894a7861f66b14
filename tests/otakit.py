"""Test kit for firmware updates on VM boards (SPEC §10): a release key made for the test, releases
of a board's bundle (from firmware/ or from a patched copy of it, for releases that must fail),
and the device's verified `ota` events."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from host_tools.protocol.manifest import key_id
from host_tools.release import Release, build_release
from host_tools.sim.board import FIRMWARE
from host_tools.sim.provision import board_definition


class Releases:
    """Release keys (two trusted, as a device holds: the second to rotate to) and releases."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.dir = self.root / "releases"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = Ed25519PrivateKey.generate()
        self.spare = Ed25519PrivateKey.generate()
        self.built: dict[str, Release] = {}

    def config(self, revoked: tuple[bytes, ...] = ()) -> dict:
        """The device config's "ota" section: the release keys it trusts, by kid (hex)."""
        keys = {}
        for k in (self.key, self.spare):
            pub = k.public_key()
            keys[key_id(pub).hex()] = pub.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
        return {"keys": keys, "revoked": [r.hex() for r in revoked]}

    def build(self, board: str, version: str, seq: int, *, key: Ed25519PrivateKey | None = None,
              root: Path | None = None, chunk: int = 1536, **kw) -> Release:
        rel = build_release(board_definition(board), version, seq, key or self.key, chunk=chunk, root=root, **kw)
        stem = self.dir / f"{board}-{version}"
        Path(f"{stem}.bin").write_bytes(rel.payload)
        Path(f"{stem}.manifest").write_bytes(rel.signed)
        self.built[version] = rel
        return rel

    def patched(self, name: str, edits: dict[str, tuple[str, str]]) -> Path:
        """A copy of firmware/ with `edits` {relative path: (old, new)} applied: a release that
        fails its self-test, or crashes at import."""
        dst = self.root / f"fw-{name}"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(FIRMWARE, dst, ignore=shutil.ignore_patterns("__pycache__"))
        for rel, (old, new) in edits.items():
            p = dst / rel
            s = p.read_text()
            assert old in s, (rel, old)
            p.write_text(s.replace(old, new, 1))
        return dst


def ota_events(watcher, device: str) -> list[dict]:
    """The device's verified `ota` event details, in order."""
    out = []
    for t, m, _ in list(watcher.all):
        if t == f"v1/dev/{device}/up/evt" and m.get("type") == "event" and m.get("code") == "ota":
            out.append(dict(m.get("detail") or {}))
    return out


def wait_state(watcher, device: str, state: str, timeout: float = 60.0, after: int = 0) -> dict:
    """The first `ota` event with st == state among the device's events after the first `after`."""
    deadline = time.monotonic() + timeout
    while True:
        for e in ota_events(watcher, device)[after:]:
            if e.get("st") == state:
                return e
        if time.monotonic() > deadline:
            raise AssertionError(f"no ota {state!r} from {device} in {timeout}s; saw {ota_events(watcher, device)}")
        time.sleep(0.1)
