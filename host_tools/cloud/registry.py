"""The device registry: identity, key and the cloud->device sequence counter of every device.

SPEC §5: everything the cloud sends one device is numbered from one per-device counter shared by
all cloud senders, so the counter lives here and is taken atomically. Keys sit in the database for
now; a deployment would keep them in a KMS and hand out only per-device handles. The registry
lives on the ledger's backends (SQLite or PostgreSQL: host_tools/cloud/ledger_db.py), as the
schema component "registry".
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from host_tools.cloud.keyvault import KeyVault, VaultError, master_key_from_env
from host_tools.cloud.ledger_db import Database, where_prefixes
from host_tools.cloud.ledger_open import is_postgres, open_ledger

DEVICE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
KINDS = ("gate", "vending", "rental")
REGISTRY_VERSION = 2   # 2: devices.status
STATUSES = ("active", "revoked", "decommissioned")


class RegistryError(Exception):
    pass


@dataclass(frozen=True)
class Device:
    """A registered device: its id, 256-bit key, key version (kid = "<id>:<version>"), kind and board."""
    device_id: str
    key: bytes
    key_version: int
    kind: str
    board: str
    status: str = "active"   # revoked: stolen or compromised; decommissioned: retired, journal drained

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


class Registry:
    """On the ledger's backends: a SQLite file (the embedded default; WAL, short transactions) or
    PostgreSQL (`postgresql://...`), so N command senders on one database share each device's
    counter: next_seq() is one UPDATE ... RETURNING, atomic across threads, processes and hosts.
    Safe to share between threads (the connection's lock)."""

    def __init__(self, path: str | Path = ":memory:", master_key: bytes | None = None):
        """master_key (32 bytes; default: the file named by EDGEPAY_MASTER_KEY_FILE, if set): device
        keys are stored sealed under it (AES-256-GCM, keyvault.py); without one they are stored as
        they are and a sealed one cannot be read."""
        self.path = str(path)
        self.vault = KeyVault(master_key if master_key is not None else master_key_from_env())
        self.db = _connect(self.path)
        self.db.ensure_schema("registry", [
            f"CREATE TABLE IF NOT EXISTS devices ("
            f" device_id TEXT PRIMARY KEY, key {self.db.blob} NOT NULL, key_version INTEGER NOT NULL,"
            f" kind TEXT NOT NULL, board TEXT NOT NULL, dn_seq {self.db.bigint} NOT NULL DEFAULT 0,"
            f" status TEXT NOT NULL DEFAULT 'active')"], REGISTRY_VERSION)

    def add(self, device_id: str, key: bytes, kind: str, board: str, key_version: int = 1) -> Device:
        if not DEVICE_ID.fullmatch(device_id):
            raise RegistryError(f"bad device id {device_id!r}: use [a-z0-9][a-z0-9-]{{0,31}}")
        if len(key) != 32:
            raise RegistryError("a device key is 256 bits")
        if kind not in KINDS:
            raise RegistryError(f"unknown device kind {kind!r}: one of {', '.join(KINDS)}")
        if key_version < 1:
            raise RegistryError("key version starts at 1")
        db = self.db

        def run(cur) -> int:
            cur.execute(db._sql("INSERT INTO devices (device_id, key, key_version, kind, board) VALUES (?,?,?,?,?) "
                                "ON CONFLICT (device_id) DO NOTHING"),
                        (device_id, self.vault.seal(key, device_id, key_version), key_version, kind, board))
            return cur.rowcount
        if db._write(run) != 1:
            raise RegistryError(f"device {device_id!r} is already registered")
        return Device(device_id, key, key_version, kind, board)

    def add_many(self, devices: list[tuple[str, bytes, str, str]], key_version: int = 1) -> int:
        """Register many (device_id, key, kind, board) in one transaction (a fleet of thousands:
        one commit, not one per device); the same checks as add(); how many were added."""
        rows = []
        for device_id, key, kind, board in devices:
            if not DEVICE_ID.fullmatch(device_id) or len(key) != 32 or kind not in KINDS:
                raise RegistryError(f"bad device {device_id!r}: id [a-z0-9][a-z0-9-]{{0,31}}, 256-bit key, "
                                    f"kind one of {', '.join(KINDS)}")
            rows.append((device_id, self.vault.seal(key, device_id, key_version), key_version, kind, board))
        db = self.db

        def run(cur) -> int:
            n = 0
            for row in rows:
                cur.execute(db._sql("INSERT INTO devices (device_id, key, key_version, kind, board) VALUES (?,?,?,?,?) "
                                    "ON CONFLICT (device_id) DO NOTHING"), row)
                n += cur.rowcount
            return n
        n = db._write(run)
        if n != len(rows):
            raise RegistryError(f"{len(rows) - n} of {len(rows)} devices were already registered")
        return n

    def get(self, device_id: str) -> Device:
        rows = self.db._read("SELECT device_id, key, key_version, kind, board, status FROM devices WHERE device_id=?",
                             (device_id,))
        if not rows:
            raise RegistryError(f"unknown device {device_id!r}")
        return self._device(rows[0])

    def _device(self, r: tuple) -> Device:
        try:
            key = self.vault.open(bytes(r[1]), r[0], r[2])
        except VaultError as e:
            raise RegistryError(str(e)) from None
        return Device(r[0], key, r[2], r[3], r[4], r[5])

    def page(self, *, after: str = "", limit: int = 100, status: str | None = None, kind: str | None = None,
             board: str | None = None, prefixes: tuple[str, ...] | None = None) -> list[DeviceInfo]:
        """Up to `limit` devices after `after`, in id order, filtered in the database (an index walk:
        a page of a 10,000-device fleet costs what a page costs). No keys: nothing is unsealed.
        prefixes: device-id prefixes the caller may see (None: all)."""
        where, args = ["device_id > ?"], [after]
        for col, v in (("status", status), ("kind", kind), ("board", board)):
            if v is not None:
                where.append(f"{col} = ?")
                args.append(v)
        if not where_prefixes(where, args, "device_id", prefixes):
            return []
        rows = self.db._read("SELECT device_id, key_version, kind, board, status FROM devices WHERE "
                             + " AND ".join(where) + " ORDER BY device_id LIMIT ?", (*args, int(limit)))
        return [DeviceInfo(*r) for r in rows]

    def devices(self) -> list[Device]:
        rows = self.db._read("SELECT device_id, key, key_version, kind, board, status FROM devices ORDER BY device_id")
        return [self._device(r) for r in rows]

    def reseal(self, new: "KeyVault") -> int:
        """Store every device key sealed under `new` (from plaintext or from this registry's master
        key: a first encryption, or a rotation of the master key); one transaction; how many."""
        db = self.db

        def run(cur) -> int:
            cur.execute(db._sql("SELECT device_id, key, key_version FROM devices"))
            rows = cur.fetchall()
            for dev, blob, ver in rows:
                try:
                    plain = self.vault.open(bytes(blob), dev, ver)
                except VaultError as e:
                    raise RegistryError(str(e)) from None
                cur.execute(db._sql("UPDATE devices SET key=? WHERE device_id=?"), (new.seal(plain, dev, ver), dev))
            return len(rows)
        n = db._write(run)
        self.vault = new
        return n

    def set_status(self, device_id: str, status: str) -> Device:
        """Mark a device revoked (the cloud then refuses to command it and quarantines its records)
        or decommissioned; its key is kept, verify-only, so what it journaled can still be audited."""
        if status not in STATUSES:
            raise RegistryError(f"status is one of {', '.join(STATUSES)}")
        db = self.db

        def run(cur) -> int:
            cur.execute(db._sql("UPDATE devices SET status=? WHERE device_id=?"), (status, device_id))
            return cur.rowcount
        if db._write(run) != 1:
            raise RegistryError(f"unknown device {device_id!r}")
        return self.get(device_id)

    def next_seq(self, device_id: str) -> int:
        """Take the next cloud->device sequence number (atomic across threads, processes and, on
        PostgreSQL, hosts: the row is locked by the UPDATE until its transaction commits)."""
        db = self.db

        def run(cur) -> tuple | None:
            cur.execute(db._sql("UPDATE devices SET dn_seq = dn_seq + 1 WHERE device_id=? RETURNING dn_seq"),
                        (device_id,))
            return cur.fetchone()
        row = db._write(run)
        if row is None:
            raise RegistryError(f"unknown device {device_id!r}")
        return int(row[0])

    def close(self) -> None:
        self.db.close()


def _connect(url: str) -> Database:
    """A connection of the ledger's backends, without the ledger's tables."""
    if is_postgres(url):
        return open_ledger(url, schema=False)
    # A crash may lose the last few counter increments; the device then refuses the reused
    # numbers as stale_seq and nothing runs (the sender re-signs), so the counter need not sync
    # on every call: synchronous NORMAL.
    return open_ledger(url, synchronous="NORMAL", timeout=30.0, schema=False)


def open_uplink(registry: "Registry", cache: dict, topic: str, payload: bytes) -> tuple[str, dict | None, str | None]:
    """A device's message verified under its key (looked up once into `cache`) and decoded:
    (device, message or None, error code or None: bad_topic, unknown_device, bad_mac, ...)."""
    from host_tools.protocol import ProtocolError, open_message, parse_topic
    try:
        device, _ = parse_topic(topic)
    except ProtocolError as e:
        return "?", None, e.code
    dev = cache.get(device)
    if dev is None:
        try:
            dev = cache[device] = registry.get(device)
        except RegistryError:
            return device, None, "unknown_device"
    try:
        return device, open_message(dev.key, dev.kid, topic, payload), None
    except ProtocolError as e:
        return device, None, e.code
