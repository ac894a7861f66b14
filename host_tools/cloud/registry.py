"""The device registry: identity, key and the cloud->device sequence counter of every device.

SPEC §5: everything the cloud sends one device is numbered from one per-device counter shared by
all cloud senders, so the counter lives here and is taken atomically. Keys sit in the database for
now; a deployment would keep them in a KMS and hand out only per-device handles. The registry
lives on the ledger's backends (SQLite or PostgreSQL: host_tools/cloud/ledger_db.py), as the
schema component "registry".

Key history (SPEC §11): the current key is the device's row; every other version is a row of
device_keys, sealed the same way: the `next` one offered by a rotation (at most one), and the
`retired` ones with their switch point (the lowest seq verified under the successor), kept
verify-only for records journaled before the switch and for audit. verify_uplink() picks the key
by the envelope's kid.

Re-provisioning (reprovision()): a revoked device given a fresh key over its serial link, under
its own id; every earlier version becomes `compromised`: kept for audit, and a message that
verifies under one is never the device's (CompromisedKey: refused bad_kid; ingest keeps a record
in quarantine, reason compromised_key). No schema change: the state column is free text, and
code from before this state refuses such a kid (bad_kid) anyway.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import replace
from pathlib import Path

from host_tools.cloud.keyvault import KeyVault, VaultError, master_key_from_env
from host_tools.cloud.ledger_db import Database, where_prefixes
from host_tools.cloud.ledger_open import is_postgres, open_ledger
from host_tools.cloud.registry_model import (CompromisedKey, Device, DeviceInfo, KeyVersion,  # noqa: F401 (re-exported)
                                             RegistryError)

log = logging.getLogger("edgepay.registry")

DEVICE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
KINDS = ("gate", "vending", "rental")
REGISTRY_VERSION = 3   # 2: devices.status; 3: device_keys (key history; created with the schema)
KEY_STATES = ("current", "next", "retired", "compromised")  # compromised: revoked, then re-provisioned
STATUSES = ("active", "revoked", "decommissioned")


# device -> time.monotonic() of the last key switch seen in this process: a Device read before it
# is read again by verify_uplink (another process's switch is seen within key_fresh_s)
_KEY_CHANGED: dict[str, float] = {}


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
        # verify_uplink() reads a device again if the one it is given is older than this: a key
        # retired by a rotation elsewhere stops verifying new messages within it (SPEC §11)
        self.key_fresh_s = 30.0
        self.vault = KeyVault(master_key if master_key is not None else master_key_from_env())
        self.db = _connect(self.path)
        # SQLite in this process, unsynced (below): a counter write is ~30 us, cheaper than the
        # thread hop an event loop would pay to make it elsewhere (CommandClient.asend)
        self.local = not is_postgres(self.path)
        self.db.ensure_schema("registry", [
            f"CREATE TABLE IF NOT EXISTS devices ("
            f" device_id TEXT PRIMARY KEY, key {self.db.blob} NOT NULL, key_version INTEGER NOT NULL,"
            f" kind TEXT NOT NULL, board TEXT NOT NULL, dn_seq {self.db.bigint} NOT NULL DEFAULT 0,"
            f" status TEXT NOT NULL DEFAULT 'active')",
            f"CREATE TABLE IF NOT EXISTS device_keys ("
            f" device_id TEXT NOT NULL, version INTEGER NOT NULL, key {self.db.blob} NOT NULL,"
            f" state TEXT NOT NULL, switch_seq {self.db.bigint}, PRIMARY KEY (device_id, version))"],
            REGISTRY_VERSION)

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
        return Device(device_id, key, key_version, kind, board, read_at=time.monotonic())

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
        rows = self.db._read("SELECT d.device_id, d.key, d.key_version, d.kind, d.board, d.status, k.switch_seq "
                             "FROM devices d LEFT JOIN device_keys k ON k.device_id = d.device_id "
                             "AND k.version = d.key_version - 1 AND k.state = 'retired' WHERE d.device_id=?",
                             (device_id,))
        if not rows:
            raise RegistryError(f"unknown device {device_id!r}")
        return self._device(rows[0])

    def _device(self, r: tuple) -> Device:
        key = self._open_key(r[1], r[0], r[2])
        return Device(r[0], key, r[2], r[3], r[4], r[5], None if len(r) < 7 or r[6] is None else int(r[6]),
                      time.monotonic())

    def _open_key(self, blob, device_id: str, version: int) -> bytes:
        try:
            return self.vault.open(bytes(blob), device_id, version)
        except VaultError as e:
            raise RegistryError(str(e)) from None

    # ---- key history and rotation (SPEC §11) ----------------------------------------------
    def keys(self, device_id: str) -> list[KeyVersion]:
        """Every key version of a device, oldest first: retired ones, the current, a next one."""
        dev = self.get(device_id)
        rows = self.db._read("SELECT version, key, state, switch_seq FROM device_keys WHERE device_id=? "
                             "ORDER BY version", (device_id,))
        out = [KeyVersion(device_id, int(v), st, self._open_key(b, device_id, int(v)),
                          None if sw is None else int(sw)) for v, b, st, sw in rows if int(v) != dev.key_version]
        out.append(KeyVersion(device_id, dev.key_version, "current", dev.key))
        return sorted(out, key=lambda k: k.version)

    def key_version(self, device_id: str, version: int) -> KeyVersion | None:
        """The device's key of this version (its kid's), or None if it has none."""
        rows = self.db._read("SELECT key_version, key FROM devices WHERE device_id=?", (device_id,))
        if not rows:
            return None
        if int(rows[0][0]) == version:
            return KeyVersion(device_id, version, "current", self._open_key(rows[0][1], device_id, version))
        rows = self.db._read("SELECT key, state, switch_seq FROM device_keys WHERE device_id=? AND version=?",
                             (device_id, version))
        if not rows:
            return None
        b, st, sw = rows[0]
        return KeyVersion(device_id, version, st, self._open_key(b, device_id, version), None if sw is None else int(sw))

    def next_key(self, device_id: str) -> KeyVersion | None:
        """The key a rotation offered and the device has not yet been seen to use, if any."""
        dev = self.get(device_id)
        kv = self.key_version(device_id, dev.key_version + 1)
        return kv if kv is not None and kv.state == "next" else None

    def offer_next(self, device_id: str) -> tuple[int, bytes]:
        """The next key version and key of a rotation: a fresh random 256-bit key stored sealed
        (state next) before anything is sent; the one already stored if a rotation is under way
        (idempotent: a rotation resumed sends the same wrapped key)."""
        dev = self.get(device_id)
        if not dev.active:
            raise RegistryError(f"device {device_id!r} is {dev.status}: its key is not rotated")
        version = dev.key_version + 1
        db = self.db

        def run(cur) -> None:
            # a next key left from before the current one (it can no longer be used): dropped
            cur.execute(db._sql("DELETE FROM device_keys WHERE device_id=? AND state='next' AND version<>?"),
                        (device_id, version))
            cur.execute(db._sql("INSERT INTO device_keys (device_id, version, key, state) VALUES (?,?,?,'next') "
                                "ON CONFLICT (device_id, version) DO NOTHING"),
                        (device_id, version, self.vault.seal(os.urandom(32), device_id, version)))
        db._write(run)
        kv = self.key_version(device_id, version)
        if kv is None or kv.state != "next":  # promoted meanwhile by a concurrent rotation
            raise RegistryError(f"{device_id}: key version {version} is {kv.state if kv else 'gone'}; try again")
        return version, kv.key

    def promote(self, device_id: str, version: int, seq: int) -> bool:
        """Make the next key `version` current, the first time a message of seq `seq` verifies
        under it: the current one is retired with its switch point at `seq`. A conditional
        UPDATE, so concurrent workers promote once; the others (and later calls) only lower the
        switch point to `seq` if it is lower. True if this call promoted."""
        db = self.db

        def run(cur) -> bool:
            cur.execute(db._sql("SELECT key FROM device_keys WHERE device_id=? AND version=? AND state='next'"),
                        (device_id, version))
            nxt = cur.fetchone()
            cur.execute(db._sql("SELECT key FROM devices WHERE device_id=? AND key_version=?"),
                        (device_id, version - 1))
            old = cur.fetchone()
            if nxt is not None and old is not None:
                cur.execute(db._sql("UPDATE devices SET key=?, key_version=? WHERE device_id=? AND key_version=?"),
                            (nxt[0], version, device_id, version - 1))
                if cur.rowcount == 1:
                    cur.execute(db._sql("INSERT INTO device_keys (device_id, version, key, state, switch_seq) "
                                        "VALUES (?,?,?,'retired',?) ON CONFLICT (device_id, version) DO UPDATE "
                                        "SET key=excluded.key, state='retired', switch_seq=excluded.switch_seq"),
                                (device_id, version - 1, old[0], int(seq)))
                    cur.execute(db._sql("DELETE FROM device_keys WHERE device_id=? AND version=?"),
                                (device_id, version))
                    return True
            self._lower(cur, device_id, version - 1, seq)
            return False
        promoted = db._write(run)
        _KEY_CHANGED[device_id] = time.monotonic()  # devices read before now are read again
        if promoted:
            log.info("device %s: key version %d is current (switch at seq %d)", device_id, version, seq)
        return promoted

    def lower_switch(self, device_id: str, version: int, seq: int) -> None:
        """A message of seq `seq` verified under the successor of retired key `version`: the
        switch point is the lowest such seq."""
        self.db._write(lambda cur: self._lower(cur, device_id, version, seq))

    def _lower(self, cur, device_id: str, version: int, seq: int) -> None:
        cur.execute(self.db._sql("UPDATE device_keys SET switch_seq=? WHERE device_id=? AND version=? "
                                 "AND state='retired' AND switch_seq > ?"), (int(seq), device_id, version, int(seq)))

    def verify_uplink(self, dev: Device, topic: str, data: bytes) -> tuple[bytes, Device]:
        """A device's message verified under the key its envelope's kid names (SPEC §11): the
        payload bytes (not decoded) and the device as it now is (refreshed if its key changed).
        Current kid: verified (and the previous key's switch point lowered if this seq is below
        it). Next kid: verified, and the next key made current. Retired kid: verified only for a
        seq below its switch point (a record resent unchanged from the journal), else bad_kid.
        Compromised kid (from before a re-provisioning): CompromisedKey (bad_kid) if it verifies.
        A device that is not active is read again first (it may have been re-provisioned).
        Raises ProtocolError as verify_mac0 does (bad_kid for any other kid)."""
        return self._verify_uplink(dev, topic, data, 2)

    def _verify_uplink(self, dev: Device, topic: str, data: bytes, tries: int) -> tuple[bytes, Device]:
        from host_tools.protocol import ProtocolError, parse_kid, verify_mac0
        if (time.monotonic() - dev.read_at > self.key_fresh_s or not dev.active
                or _KEY_CHANGED.get(dev.device_id, 0.0) >= dev.read_at):
            dev = self.get(dev.device_id)  # read long ago, or before a switch this process saw
        try:
            payload = verify_mac0(dev.key, dev.kid, topic, data)
        except ProtocolError as e:
            if e.code != "bad_kid":
                raise
            kid = envelope_kid(data)
            if kid is None:
                raise
            try:
                device, version = parse_kid(kid)
            except ProtocolError:
                raise e from None
            kv = self.key_version(dev.device_id, version) if device == dev.device_id else None
            if kv is None:
                raise
            if kv.state == "current":  # promoted since `dev` was read
                if tries <= 0:
                    raise
                return self._verify_uplink(self.get(dev.device_id), topic, data, tries - 1)
            payload = verify_mac0(kv.key, kid, topic, data)  # bad_mac for a forgery
            if kv.state == "compromised":  # the thief holds this key: audit only, never the device's
                raise CompromisedKey(kid, payload) from None
            seq = payload_seq(payload)
            if seq is None:
                raise ProtocolError("bad_kid", f"kid {kid.decode()} is not current and the message has no seq") from None
            if kv.state == "next":
                self.promote(dev.device_id, version, seq)
                return payload, self.get(dev.device_id)
            if kv.switch_seq is not None and seq < kv.switch_seq:
                return payload, dev  # signed before the switch: a record resent from the journal
            raise ProtocolError("bad_kid", f"kid {kid.decode()} was retired at seq {kv.switch_seq}") from None
        if dev.switch_seq is not None:
            seq = payload_seq(payload)
            if seq is not None and seq < dev.switch_seq:
                self.lower_switch(dev.device_id, dev.key_version - 1, seq)
                dev = replace(dev, switch_seq=seq)
        return payload, dev

    def open_uplink_message(self, dev: Device, topic: str, data: bytes) -> tuple[dict, Device]:
        """verify_uplink() and the payload decoded (SPEC §4): (message, device as it now is)."""
        from host_tools.protocol import decode_payload
        payload, dev = self.verify_uplink(dev, topic, data)
        return decode_payload(payload, topic), dev

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
                plain = self._open_key(blob, dev, ver)
                cur.execute(db._sql("UPDATE devices SET key=? WHERE device_id=?"), (new.seal(plain, dev, ver), dev))
            cur.execute(db._sql("SELECT device_id, version, key FROM device_keys"))
            for dev, ver, blob in cur.fetchall():  # the key history too (next and retired keys)
                plain = self._open_key(blob, dev, ver)
                cur.execute(db._sql("UPDATE device_keys SET key=? WHERE device_id=? AND version=?"),
                            (new.seal(plain, dev, ver), dev, ver))
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

    def reprovision(self, device_id: str, key: bytes, kind: str, board: str) -> Device:
        """A revoked device given a fresh key under its own id (it reaches the board over its
        serial link, never the network): `key` is current at version = the highest so far + 1
        (above any key a rotation left on the board, so the new config's wins at boot), every
        earlier version compromised (verify-only for audit, never money again), the device active.
        One transaction, conditional on the status: refused unless the device is revoked."""
        if len(key) != 32:
            raise RegistryError("a device key is 256 bits")
        if kind not in KINDS:
            raise RegistryError(f"unknown device kind {kind!r}: one of {', '.join(KINDS)}")
        db = self.db

        def run(cur) -> int | str:
            cur.execute(db._sql("SELECT key, key_version, status FROM devices WHERE device_id=?"), (device_id,))
            row = cur.fetchone()
            if row is None:
                return "unknown"
            old_key, old_version, status = row[0], int(row[1]), row[2]
            if status != "revoked":
                return status
            cur.execute(db._sql("SELECT MAX(version) FROM device_keys WHERE device_id=?"), (device_id,))
            top = cur.fetchone()[0]
            version = max(old_version, int(top) if top is not None else 0) + 1
            cur.execute(db._sql("UPDATE devices SET key=?, key_version=?, kind=?, board=?, status='active' "
                                "WHERE device_id=? AND key_version=? AND status='revoked'"),
                        (self.vault.seal(key, device_id, version), version, kind, board, device_id, old_version))
            if cur.rowcount != 1:
                return "changed"
            cur.execute(db._sql("INSERT INTO device_keys (device_id, version, key, state) VALUES (?,?,?,'compromised') "
                                "ON CONFLICT (device_id, version) DO UPDATE SET key=excluded.key, state='compromised'"),
                        (device_id, old_version, old_key))
            cur.execute(db._sql("UPDATE device_keys SET state='compromised' WHERE device_id=? AND version<?"),
                        (device_id, version))
            return version
        got = db._write(run)
        _KEY_CHANGED[device_id] = time.monotonic()  # devices read before now are read again
        if got == "unknown":
            raise RegistryError(f"unknown device {device_id!r}")
        if isinstance(got, str):
            raise RegistryError(f"device {device_id!r} is {'being changed' if got == 'changed' else got}: "
                                "only a revoked device is re-provisioned")
        log.warning("device %s re-provisioned: key version %d is current, every earlier one compromised",
                    device_id, got)
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


def envelope_kid(data: bytes) -> bytes | None:
    """The kid an envelope's protected header names, or None if it cannot be read (the full
    verification then says what is wrong)."""
    from host_tools.protocol import ProtocolError
    from host_tools.protocol.cbor import ENVELOPE_TAG, Tag, decode
    try:
        env = decode(data, envelope=True)
        if not (isinstance(env, Tag) and env.tag == ENVELOPE_TAG and isinstance(env.value, list)
                and len(env.value) == 4 and isinstance(env.value[0], bytes)):
            return None
        header = decode(env.value[0])
    except ProtocolError:
        return None
    kid = header.get(4) if isinstance(header, dict) else None
    return kid if isinstance(kid, bytes) else None


def payload_seq(payload: bytes) -> int | None:
    """A verified payload's seq (key 8), if it is a map with an unsigned integer there; None
    otherwise. cbor2's C decoder (a few µs, not the strict codec's tens: this runs on every message
    of a rotated device); the strict decode that follows judges the payload as always."""
    import cbor2
    try:
        m = cbor2.loads(payload)
    except Exception:  # noqa: BLE001 - anything cbor2 refuses has no seq to give
        return None
    seq = m.get(8) if isinstance(m, dict) else None
    return seq if type(seq) is int and seq >= 0 else None


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
    from host_tools.protocol import ProtocolError, parse_topic
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
        msg, fresh = registry.open_uplink_message(dev, topic, payload)
    except ProtocolError as e:
        return device, None, e.code
    if fresh is not dev:
        cache[device] = fresh
    return device, msg, None
