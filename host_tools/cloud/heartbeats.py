"""Heartbeat history (issue 13 §4): every verified heartbeat at full resolution for `keep_s`
(default 7 days), then folded into one row per device and hour (count, heap min/max/sum, RSSI
min/max, journal depth max) that is kept: 10,000 devices at one heartbeat a minute are 14.4 M rows
a day at full resolution and 240,000 a day downsampled. Plus each device's last heartbeat, for
"online" and the device page, with the offline budget used it reported (SPEC §4 heartbeat 18
off_amt, 19 off_n; absent = 0): what the device charged and opened offline that the cloud has not
re-authorised yet (alerts.py `offline_budget`).

The tables are in the registry's database (schema component `heartbeats`); `downsample()` runs in
one transaction and is safe to run from several instances at once (a row is folded and deleted in
the same transaction; a second run finds nothing left to fold).

    hb = Heartbeats(db, keep_s=7 * 86400)
    hb.add("lot1-gate-1", at=1796280000, heap=27000, rssi=-61, jdepth=0, uptime=3600)
    hb.downsample(now)             # rows folded
    hb.history("lot1-gate-1", since, until)   # [{"at", "n", "heap_min", "heap_max", "heap_avg", ...}]
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from host_tools.cloud.ledger_db import MIGRATIONS, Database
from host_tools.cloud.registry import Registry
from host_tools.cloud.uplink_queue import VerifiedQueue

log = logging.getLogger("edgepay.heartbeats")

HEARTBEATS_VERSION = 2  # 2: hb_last.off_amt, off_n
KEEP_S = 7 * 86400
HOUR = 3600


def _schema(db: Database) -> list[str]:
    big = db.bigint
    return [
        f"""CREATE TABLE IF NOT EXISTS hb_raw (
            device TEXT NOT NULL, at {big} NOT NULL, heap {big}, rssi {big}, jdepth {big}, uptime {big},
            PRIMARY KEY (device, at))""",
        f"""CREATE TABLE IF NOT EXISTS hb_hour (
            device TEXT NOT NULL, hour {big} NOT NULL, n {big} NOT NULL, heap_min {big}, heap_max {big},
            heap_sum {big}, rssi_min {big}, rssi_max {big}, jdepth_max {big}, PRIMARY KEY (device, hour))""",
        f"""CREATE TABLE IF NOT EXISTS hb_last (
            device TEXT PRIMARY KEY, at {big} NOT NULL, heap {big}, rssi {big}, jdepth {big}, uptime {big},
            off_amt {big} NOT NULL DEFAULT 0, off_n {big} NOT NULL DEFAULT 0)""",
    ]


def _add_offline_budget(db: Database, cur: Any) -> None:
    for column in ("off_amt", "off_n"):
        if column not in db._columns(cur, "hb_last"):
            cur.execute(f"ALTER TABLE hb_last ADD COLUMN {column} {db.bigint} NOT NULL DEFAULT 0")


MIGRATIONS["heartbeats"] = [(2, _add_offline_budget)]


def offline_budget(off_amt: int, off_n: int, policy: dict | None) -> dict:
    """The offline budget used, as the device page and the `offline_budget` alert show it: what the
    last heartbeat reported (off_amt minor units, off_n sessions) and, with the offline policy the
    cloud last sent the device (set_policy args by SPEC §4 key), its version, currency, total_cap
    and max_sessions and the fractions of them used (None for a cap of 0)."""
    out: dict[str, Any] = {"off_amt": int(off_amt), "off_n": int(off_n)}
    if policy:
        cap, most = policy.get(4), policy.get(5)
        out.update(policy_version=policy.get(1), cur=policy.get(2), total_cap=cap, max_sessions=most,
                   amt_used=round(off_amt / cap, 4) if cap else None,
                   n_used=round(off_n / most, 4) if most else None)
    return out


class Heartbeats:
    def __init__(self, db: Database, keep_s: int = KEEP_S):
        if keep_s < HOUR:
            raise ValueError("keep heartbeats at full resolution for an hour at least")
        self.db = db
        self.keep_s = int(keep_s)
        db.ensure_schema("heartbeats", _schema(db), HEARTBEATS_VERSION)

    def add(self, device: str, at: int, heap: int | None = None, rssi: int | None = None,
            jdepth: int | None = None, uptime: int | None = None, off_amt: int = 0, off_n: int = 0) -> None:
        """One heartbeat (a second one at the same second is the same heartbeat: ignored)."""
        self.add_many([(device, int(at), heap, rssi, jdepth, uptime, off_amt, off_n)])

    def add_many(self, rows: list[tuple]) -> None:
        """(device, at, heap, rssi, jdepth, uptime[, off_amt, off_n]) rows in one transaction."""
        db = self.db

        def run(cur: Any) -> None:
            for row in rows:
                row = (*row, 0, 0) if len(row) == 6 else tuple(row)  # no offline budget: none used
                cur.execute(db._sql("INSERT INTO hb_raw (device, at, heap, rssi, jdepth, uptime) "
                                    "VALUES (?,?,?,?,?,?) ON CONFLICT (device, at) DO NOTHING"), row[:6])
                cur.execute(db._sql("INSERT INTO hb_last (device, at, heap, rssi, jdepth, uptime, off_amt, off_n) "
                                    "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (device) DO UPDATE SET at=excluded.at, "
                                    "heap=excluded.heap, rssi=excluded.rssi, jdepth=excluded.jdepth, "
                                    "uptime=excluded.uptime, off_amt=excluded.off_amt, off_n=excluded.off_n "
                                    "WHERE excluded.at >= hb_last.at"), row)
        if rows:
            db._write(run)

    def downsample(self, now: float) -> int:
        """Fold every full-resolution row older than keep_s into its hour; how many were folded.
        Only whole hours are folded, so an hour is never half raw and half folded."""
        cut = (int(now) - self.keep_s) // HOUR * HOUR
        db = self.db

        def run(cur: Any) -> int:
            cur.execute(db._sql(
                "INSERT INTO hb_hour (device, hour, n, heap_min, heap_max, heap_sum, rssi_min, rssi_max, jdepth_max) "
                "SELECT device, at / 3600 * 3600, COUNT(*), MIN(heap), MAX(heap), SUM(heap), MIN(rssi), MAX(rssi), "
                "MAX(jdepth) FROM hb_raw WHERE at < ? GROUP BY device, at / 3600 * 3600 "
                "ON CONFLICT (device, hour) DO UPDATE SET n = hb_hour.n + excluded.n, "
                "heap_min = CASE WHEN excluded.heap_min < hb_hour.heap_min OR hb_hour.heap_min IS NULL "
                "THEN excluded.heap_min ELSE hb_hour.heap_min END, "
                "heap_max = CASE WHEN excluded.heap_max > hb_hour.heap_max OR hb_hour.heap_max IS NULL "
                "THEN excluded.heap_max ELSE hb_hour.heap_max END, "
                "heap_sum = COALESCE(hb_hour.heap_sum, 0) + COALESCE(excluded.heap_sum, 0), "
                "rssi_min = CASE WHEN excluded.rssi_min < hb_hour.rssi_min OR hb_hour.rssi_min IS NULL "
                "THEN excluded.rssi_min ELSE hb_hour.rssi_min END, "
                "rssi_max = CASE WHEN excluded.rssi_max > hb_hour.rssi_max OR hb_hour.rssi_max IS NULL "
                "THEN excluded.rssi_max ELSE hb_hour.rssi_max END, "
                "jdepth_max = CASE WHEN excluded.jdepth_max > hb_hour.jdepth_max OR hb_hour.jdepth_max IS NULL "
                "THEN excluded.jdepth_max ELSE hb_hour.jdepth_max END"), (cut,))
            cur.execute(db._sql("DELETE FROM hb_raw WHERE at < ?"), (cut,))
            return cur.rowcount
        return int(db._write(run))

    def history(self, device: str, since: int, until: int) -> list[dict]:
        """Points in [since, until), oldest first: folded hours (n > 1 possible) then raw rows.
        heap_avg is the integer mean (floor) of the hour's heaps."""
        out = []
        for r in self.db._read("SELECT hour, n, heap_min, heap_max, heap_sum, rssi_min, rssi_max, jdepth_max "
                               "FROM hb_hour WHERE device=? AND hour >= ? AND hour < ? ORDER BY hour",
                               (device, int(since), int(until))):
            n = int(r[1])
            out.append({"at": int(r[0]), "n": n, "heap_min": r[2], "heap_max": r[3],
                        "heap_avg": None if r[4] is None else int(r[4]) // n, "rssi_min": r[5], "rssi_max": r[6],
                        "jdepth_max": r[7], "resolution": "hour"})
        for r in self.db._read("SELECT at, heap, rssi, jdepth FROM hb_raw WHERE device=? AND at >= ? AND at < ? "
                               "ORDER BY at", (device, int(since), int(until))):
            out.append({"at": int(r[0]), "n": 1, "heap_min": r[1], "heap_max": r[1], "heap_avg": r[1],
                        "rssi_min": r[2], "rssi_max": r[2], "jdepth_max": r[3], "resolution": "full"})
        return out

    def last(self, device: str) -> dict | None:
        rows = self.db._read("SELECT at, heap, rssi, jdepth, uptime, off_amt, off_n FROM hb_last WHERE device=?",
                             (device,))
        if not rows:
            return None
        at, heap, rssi, jdepth, uptime, off_amt, off_n = rows[0]
        return {"at": int(at), "heap": heap, "rssi": rssi, "jdepth": jdepth, "uptime": uptime,
                "off_amt": int(off_amt or 0), "off_n": int(off_n or 0)}

    def online(self, now: float, within_s: int) -> int:
        """Devices whose last heartbeat is at most `within_s` old."""
        return int(self.db._read("SELECT COUNT(*) FROM hb_last WHERE at >= ?", (int(now) - within_s,))[0][0])


class Recorder(VerifiedQueue):
    """Feeds Heartbeats from `v1/dev/+/up/hb`: each message verified under its device's key (the
    rest is counted and dropped: a forged heartbeat must not make a device look alive), stamped
    with the cloud's clock when it arrives; and folds old rows every `fold_s`.

    `on_message` runs on the MQTT client's network thread, which also carries command results: it
    only queues (bounded: a flood beyond QUEUE is counted as dropped, never held in memory). The
    verifying and the writing, one transaction per batch, are `run`'s, on its own thread."""

    TOPIC = "v1/dev/+/up/hb"

    def __init__(self, hb: Heartbeats, registry: Registry, fold_s: float = 600.0, queue_max: int = VerifiedQueue.QUEUE):
        super().__init__(registry, queue_max, lambda: int(time.time()))
        self.hb = hb
        self.fold_s = fold_s

    def row(self, device: str, msg: dict, at: float) -> tuple | None:
        if msg.get("type") != "heartbeat":
            return None
        return (device, at, msg.get("heap"), msg.get("rssi"), msg.get("jdepth"), msg.get("uptime"),
                msg.get("off_amt", 0), msg.get("off_n", 0))  # absent = 0 (SPEC §4)

    def store(self, rows: list) -> None:
        self.hb.add_many(rows)

    def run(self, stop: threading.Event, poll_s: float = 0.5) -> None:
        """Store what arrives, and fold what is past the retention now and then, until `stop`."""
        fold_at = 0.0
        while not stop.is_set():
            try:
                self.flush()
                if time.monotonic() >= fold_at:
                    self.hb.downsample(time.time())
                    fold_at = time.monotonic() + self.fold_s
            except Exception:  # noqa: BLE001 - a database hiccup: the next turn tries again
                log.exception("heartbeats: recording failed")
            stop.wait(poll_s)
