"""Device presence (issue 13 §1 "devices online", §2 the device list's online filter): each
device's retained `up/status` (online true, or false: also its MQTT will, sent by the broker when
the connection drops) and its `up/hello` (the firmware version), verified under the device's key
and kept per device: online, since (when it last changed), seen (the last message), fw.

The table is in the registry's database (schema component `presence`), so the device list joins it
in the database: a page of a 10,000-device fleet filtered by online or firmware costs an index walk.

    pr = Presence(registry.db)
    pr.mark("lot1-gate-1", online=True, at=1796280000, fw="1.4.0")
    pr.get("lot1-gate-1")   # {"online": True, "since": ..., "seen": ..., "fw": "1.4.0"}
    pr.page(after="", limit=100, online=False)   # registry rows joined with presence
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from host_tools.cloud.ledger_db import Database, where_prefixes
from host_tools.cloud.registry import Registry
from host_tools.cloud.uplink_queue import VerifiedQueue

log = logging.getLogger("edgepay.presence")

PRESENCE_VERSION = 1


def _schema(db: Database) -> list[str]:
    return [
        """CREATE TABLE IF NOT EXISTS presence (
            device TEXT PRIMARY KEY, online BOOLEAN NOT NULL, since DOUBLE PRECISION NOT NULL,
            seen DOUBLE PRECISION NOT NULL, fw TEXT)""",
        "CREATE INDEX IF NOT EXISTS presence_fw ON presence (fw)",
    ]


class Presence:
    def __init__(self, db: Database):
        self.db = db
        db.ensure_schema("presence", _schema(db), PRESENCE_VERSION)

    def mark_many(self, rows: list[tuple[str, bool | None, float, str | None]]) -> None:
        """(device, online or None (unchanged), at, fw or None (unchanged)) in one transaction. `since`
        moves only when `online` changes: a retained status delivered again at a resubscribe is the
        same state, not a new one."""
        db = self.db

        def run(cur: Any) -> None:
            for dev, online, at, fw in rows:
                cur.execute(db._sql("SELECT online FROM presence WHERE device=?"), (dev,))
                row = cur.fetchone()
                if row is None:
                    # another instance may insert it first (each gets every status): then its row stands
                    cur.execute(db._sql("INSERT INTO presence (device, online, since, seen, fw) VALUES (?,?,?,?,?) "
                                        "ON CONFLICT (device) DO NOTHING"),
                                (dev, bool(online) if online is not None else True, at, at, fw))
                    continue
                if online is not None and bool(online) != bool(row[0]):
                    cur.execute(db._sql("UPDATE presence SET online=?, since=?, seen=?, fw=COALESCE(?, fw) "
                                        "WHERE device=?"), (bool(online), at, at, fw, dev))
                else:
                    cur.execute(db._sql("UPDATE presence SET seen=?, fw=COALESCE(?, fw) WHERE device=?"),
                                (at, fw, dev))
        if rows:
            db._write(run)

    def mark(self, device: str, online: bool | None, at: float, fw: str | None = None) -> None:
        self.mark_many([(device, online, at, fw)])

    def get(self, device: str) -> dict | None:
        rows = self.db._read("SELECT online, since, seen, fw FROM presence WHERE device=?", (device,))
        if not rows:
            return None
        on, since, seen, fw = rows[0]
        return {"online": bool(on), "since": float(since), "seen": float(seen), "fw": fw}

    def online_count(self) -> int:
        return int(self.db._read("SELECT COUNT(*) FROM presence WHERE online = ?", (True,))[0][0])

    def offline(self) -> list[tuple[str, float]]:
        """(device, since) of every device known offline."""
        return [(r[0], float(r[1])) for r in self.db._read("SELECT device, since FROM presence WHERE online = ?",
                                                            (False,))]

    def page(self, *, after: str = "", limit: int = 100, status: str | None = None, kind: str | None = None,
             board: str | None = None, prefixes: tuple[str, ...] | None = None, online: bool | None = None,
             fw: str | None = None) -> list[tuple]:
        """Registry.page's rows joined with presence, in the database: (device_id, key_version, kind,
        board, status, online or None (never seen), since, fw). online=False: not known online
        (offline, or never seen)."""
        where: list[str] = ["d.device_id > ?"]
        args: list[Any] = [after]
        for col, v in (("d.status", status), ("d.kind", kind), ("d.board", board), ("p.fw", fw)):
            if v is not None:
                where.append(f"{col} = ?")
                args.append(v)
        if online is True:
            where.append("p.online = ?")
            args.append(True)
        elif online is False:
            where.append("(p.online IS NULL OR p.online = ?)")
            args.append(False)
        if not where_prefixes(where, args, "d.device_id", prefixes):
            return []
        return self.db._read("SELECT d.device_id, d.key_version, d.kind, d.board, d.status, p.online, p.since, p.fw "
                             "FROM devices d LEFT JOIN presence p ON p.device = d.device_id WHERE "
                             + " AND ".join(where) + " ORDER BY d.device_id LIMIT ?", (*args, int(limit)))


class Tracker(VerifiedQueue):
    """Feeds Presence from `up/status` and `up/hello`, each verified under its device's key (the rest
    is counted as refused and dropped: a forged status must not make a device look online), stamped
    with the cloud's clock on arrival. Like heartbeats.Recorder: `on_message` (the MQTT network
    thread) only queues, bounded; `run` verifies and writes, one transaction per batch."""

    TOPICS = ("v1/dev/+/up/status", "v1/dev/+/up/hello")

    def __init__(self, presence: Presence, registry: Registry, queue_max: int = VerifiedQueue.QUEUE,
                 clock: Callable[[], float] = time.time):
        super().__init__(registry, queue_max, clock)
        self.presence = presence

    def subscribe(self, mqtt: Any) -> None:
        for t in self.TOPICS:
            mqtt.subscribe(t, self.on_message, qos=1)

    def row(self, device: str, msg: dict, at: float) -> tuple | None:
        kind = msg.get("type")
        if kind == "status":
            return (device, bool(msg["online"]), at, None)
        if kind == "hello":   # a hello is sent on connecting: online, and its firmware
            return (device, True, at, str(msg["fw"]))
        return None

    def store(self, rows: list) -> None:
        self.presence.mark_many(rows)

    def run(self, stop: threading.Event, poll_s: float = 0.5) -> None:
        while not stop.is_set():
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - a database hiccup: the next turn tries again
                log.exception("presence: recording failed")
            stop.wait(poll_s)
