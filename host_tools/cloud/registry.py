"""The device registry: identity, key and the cloud->device sequence counter of every device.

SPEC §5: everything the cloud sends one device is numbered from one per-device counter shared by
all cloud senders, so the counter lives here and is taken atomically. Keys sit in the database for
now; a deployment would keep them in a KMS and hand out only per-device handles.
"""
from __future__ import annotations

import re
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

DEVICE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
KINDS = ("gate", "vending", "rental")


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

    @property
    def kid(self) -> bytes:
        return f"{self.device_id}:{self.key_version}".encode()


class Registry:
    """SQLite-backed; safe to share between threads and between processes (WAL, short transactions)."""

    def __init__(self, path: str | Path = ":memory:"):
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            # A crash may lose the last few counter increments; the device then refuses the reused
            # numbers as stale_seq and nothing runs, so the counter need not sync on every call.
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS devices ("
            " device_id TEXT PRIMARY KEY, key BLOB NOT NULL, key_version INTEGER NOT NULL,"
            " kind TEXT NOT NULL, board TEXT NOT NULL, dn_seq INTEGER NOT NULL DEFAULT 0)")

    def add(self, device_id: str, key: bytes, kind: str, board: str, key_version: int = 1) -> Device:
        if not DEVICE_ID.fullmatch(device_id):
            raise RegistryError(f"bad device id {device_id!r}: use [a-z0-9][a-z0-9-]{{0,31}}")
        if len(key) != 32:
            raise RegistryError("a device key is 256 bits")
        if kind not in KINDS:
            raise RegistryError(f"unknown device kind {kind!r}: one of {', '.join(KINDS)}")
        if key_version < 1:
            raise RegistryError("key version starts at 1")
        with self._lock:
            try:
                self._db.execute("INSERT INTO devices (device_id, key, key_version, kind, board) VALUES (?,?,?,?,?)",
                                 (device_id, key, key_version, kind, board))
            except sqlite3.IntegrityError:
                raise RegistryError(f"device {device_id!r} is already registered") from None
        return Device(device_id, key, key_version, kind, board)

    def get(self, device_id: str) -> Device:
        with self._lock:
            row = self._db.execute("SELECT device_id, key, key_version, kind, board FROM devices WHERE device_id=?",
                                   (device_id,)).fetchone()
        if row is None:
            raise RegistryError(f"unknown device {device_id!r}")
        return Device(row[0], bytes(row[1]), row[2], row[3], row[4])

    def devices(self) -> list[Device]:
        with self._lock:
            rows = self._db.execute("SELECT device_id, key, key_version, kind, board FROM devices ORDER BY device_id").fetchall()
        return [Device(r[0], bytes(r[1]), r[2], r[3], r[4]) for r in rows]

    def next_seq(self, device_id: str) -> int:
        """Take the next cloud->device sequence number (atomic across threads and processes)."""
        with self._lock:
            row = self._db.execute("UPDATE devices SET dn_seq = dn_seq + 1 WHERE device_id=? RETURNING dn_seq",
                                   (device_id,)).fetchone()
        if row is None:
            raise RegistryError(f"unknown device {device_id!r}")
        return int(row[0])

    def close(self) -> None:
        self._db.close()
