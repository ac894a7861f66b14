"""What the device registry hands out (host_tools/cloud/registry.py): a device, its key versions
(SPEC §11), and its errors. Apart from the registry so that each piece reads on its own; importers
keep taking them from host_tools.cloud.registry, which re-exports them."""
from __future__ import annotations

from dataclasses import dataclass, field

from host_tools.protocol.errors import ProtocolError


class RegistryError(Exception):
    pass


class CompromisedKey(ProtocolError):
    """A message that verifies under a compromised kid (a key from before a re-provisioning): it
    is never taken as the device's. Refused bad_kid; ingest keeps a record in quarantine (reason
    compromised_key, raw bytes kept) from `payload`, the verified payload bytes."""
    quarantine_code = "compromised_key"

    def __init__(self, kid: bytes, payload: bytes):
        super().__init__("bad_kid", f"kid {kid.decode()} is compromised: the device was re-provisioned")
        self.payload = payload


@dataclass(frozen=True)
class Device:
    """A registered device: its id, 256-bit key, key version (kid = "<id>:<version>"), kind and board."""
    device_id: str
    key: bytes
    key_version: int
    kind: str
    board: str
    status: str = "active"   # revoked: stolen or compromised; decommissioned: retired, journal drained
    switch_seq: int | None = None  # the previous key's switch point, if it was retired by a rotation
    read_at: float = field(default=0.0, compare=False, repr=False)  # time.monotonic() when read

    @property
    def active(self) -> bool:
        return self.status == "active"

    @property
    def kid(self) -> bytes:
        return f"{self.device_id}:{self.key_version}".encode()


@dataclass(frozen=True)
class DeviceInfo:
    """A device as a list shows it: everything but its key."""
    device_id: str
    key_version: int
    kind: str
    board: str
    status: str


@dataclass(frozen=True)
class KeyVersion:
    """One key of a device's history (SPEC §11)."""
    device_id: str
    version: int
    state: str                     # current, next, retired or compromised (verify-only for audit, never money)
    key: bytes
    switch_seq: int | None = None  # retired: the lowest seq verified under its successor

    @property
    def kid(self) -> bytes:
        return f"{self.device_id}:{self.version}".encode()
