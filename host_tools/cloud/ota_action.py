"""A firmware update as a rollout engine Action (host_tools/cloud/rollout.py): start a device's
update with the signed `ota` command carrying the release manifest, then follow the device's own
signed `ota` events (SPEC §10) to the outcome.

    act = OtaAction(client, OtaProgress(store.db))
    ro = Rollouts(store, {"ota": act, "command": CommandAction(client)})
    ro.create("gate-1.4.0", "ota", OtaAction.spec(release.signed, release.manifest, "sim-gate-1.4.0"), devices,
              cohorts=(5, 25, 50, 100), rate=30, timeout_s=1800, abort_share=0.2)

Outcomes: a final `confirmed` event succeeds; `failed` fails with its why, `rolled_back` with
"rolled_back: <why>"; a command refused (`refused` with data {"why"}, or any other code:
`unsupported` on a board without slots) fails with that reason, except a `downgrade` from a device
whose get_state says it runs the campaign's version: it is already current, which succeeds (a
campaign run again after a halt must not count its confirmed devices as failures). An event counts only if it
verifies under the device's key (registry.open_uplink) and names the campaign's release (detail
"v" and "seq" equal the manifest's), so an earlier update's late report never decides this one.
abort() sends `ota_abort` (a device mid-download drops its staged slot).

The last state and progress of each device ("st", "n" of "of", "why") are kept in memory as events
arrive (paho's thread only updates a dict) and written to the database by poll() on the engine's
thread (table ota_progress, schema component "ota"), so `edgepay ota status` in another process
shows them. A runner restarted mid-campaign adopts the started devices it did not start: their
events still decide them (the command's own result is lost with the old process).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from host_tools.cloud.commands import Command, CommandClient
from host_tools.cloud.ledger_db import Database
from host_tools.cloud.registry import open_uplink
from host_tools.cloud.rollout import Outcome
from host_tools.cloud.rollout_store import Campaign
from host_tools.protocol.manifest import Manifest

log = logging.getLogger("edgepay.ota")
EVENTS = "v1/dev/+/up/evt"
CONFIRMED = "confirmed"
FAILED_STATES = ("failed", "rolled_back")
PROGRESS_VERSION = 1
MAX_WHY = 64   # a device's reason as stored and shown (the detail map is not bounded by the codec)


@dataclass(frozen=True)
class Progress:
    """A device's last update state in a campaign: an event's "st" (or sent / refused / aborting,
    the cloud's own steps), chunks written n of of, the reason, when (the cloud's clock)."""
    st: str
    n: int | None = None
    of: int | None = None
    why: str | None = None
    at: float = 0.0

    def to_json(self) -> dict:
        return {"st": self.st, "n": self.n, "of": self.of, "why": self.why, "at": self.at}


class OtaProgress:
    """ota_progress (campaign, device) PRIMARY KEY, st, n, of_n, why, at: in the rollouts' database."""

    def __init__(self, db: Database):
        self.db = db
        db.ensure_schema("ota", [
            f"""CREATE TABLE IF NOT EXISTS ota_progress (
                campaign TEXT NOT NULL, device TEXT NOT NULL, st TEXT NOT NULL, n {db.bigint}, of_n {db.bigint},
                why TEXT, at DOUBLE PRECISION NOT NULL, PRIMARY KEY (campaign, device))"""], PROGRESS_VERSION)

    def put(self, cid: str, device: str, p: Progress) -> None:
        db = self.db
        db._write(lambda cur: cur.execute(db._sql(
            "INSERT INTO ota_progress (campaign, device, st, n, of_n, why, at) VALUES (?,?,?,?,?,?,?) "
            "ON CONFLICT (campaign, device) DO UPDATE SET st=excluded.st, n=excluded.n, of_n=excluded.of_n, "
            "why=excluded.why, at=excluded.at"), (cid, device, p.st, p.n, p.of, p.why, p.at)))

    def get(self, cid: str, device: str) -> Progress | None:
        rows = self.db._read("SELECT st, n, of_n, why, at FROM ota_progress WHERE campaign=? AND device=?", (cid, device))
        return Progress(*rows[0]) if rows else None

    def all(self, cid: str) -> dict[str, Progress]:
        rows = self.db._read("SELECT device, st, n, of_n, why, at FROM ota_progress WHERE campaign=?", (cid,))
        return {r[0]: Progress(*r[1:]) for r in rows}


@dataclass
class _Flight:
    version: str
    seq: int
    cmd: Command | None = None
    progress: Progress | None = None
    outcome: Outcome | None = None
    dirty: bool = False
    check: Command | None = None   # get_state, after a `downgrade` refusal: is it running this release?
    checking: bool = False


def _text(v: Any) -> str | None:
    return v[:MAX_WHY] if isinstance(v, str) and v else None


def _count(v: Any) -> int | None:
    return v if type(v) is int and 0 <= v < 2 ** 53 else None


class OtaAction:
    def __init__(self, client: CommandClient, progress: OtaProgress | None = None, *,
                 publish_timeout: float = 2.0, clock: Callable[[], float] = time.time):
        self.client = client
        self.progress = progress
        self.publish_timeout = publish_timeout
        self.clock = clock
        self.unverified = 0                       # events of followed devices that did not verify
        self._flights: dict[tuple[str, str], _Flight] = {}
        self._by_device: dict[str, set[str]] = {}  # device -> campaigns following it
        self._keys: dict = {}                      # open_uplink's key cache (refreshed at each start)
        self._lock = threading.Lock()
        client.mqtt.subscribe(EVENTS, self._on_event, qos=1)

    @staticmethod
    def spec(signed: bytes, m: Manifest, release: str, ttl: int = 60) -> dict:
        """A campaign's spec (JSON): the manifest the command carries and what events must name."""
        return {"release": release, "manifest": signed.hex(), "rel": m.sha256[:8].hex(), "board": m.board,
                "kind": m.kind, "version": m.version, "seq": m.seq, "size": m.size, "chunk": m.chunk,
                "ttl": int(ttl)}

    # ---- the Action -------------------------------------------------------------------------
    def start(self, c: Campaign, device: str) -> None:
        key = (c.id, device)
        with self._lock:
            self._follow(key, _Flight(str(c.spec["version"]), int(c.spec["seq"])))
            self._keys.pop(device, None)  # its events verify under the key as it is now
        try:
            cmd = self.client.submit(device, "ota", {1: bytes.fromhex(c.spec["manifest"])},
                                     ttl=int(c.spec.get("ttl", 60)), publish_timeout=self.publish_timeout)
        except BaseException:
            with self._lock:
                self._unfollow(key)
            raise
        with self._lock:
            f = self._flights.get(key)
            if f is not None:
                f.cmd = cmd
                if f.progress is None:
                    f.progress, f.dirty = Progress("sent", at=self.clock()), True

    def poll(self, c: Campaign, device: str) -> Outcome | None:
        key = (c.id, device)
        with self._lock:
            f = self._flights.get(key)
            adopt = f is None
            if adopt:  # started by a runner before a restart: follow its events from here
                f = _Flight(str(c.spec["version"]), int(c.spec["seq"]))
                self._follow(key, f)
            assert f is not None
            if f.outcome is None and f.cmd is not None and f.cmd.state.final:
                self._settle_command(f)
            if f.check is not None and f.check.state.final:
                self._settle_check(f)
            ask = f.checking and f.check is None and f.outcome is None
            out, p, dirty = f.outcome, f.progress, f.dirty
            f.dirty = False
            if out is not None:
                self._unfollow(key)
        if ask:  # outside the lock: a publish may wait
            chk = self.client.submit(device, "get_state", None, ttl=int(c.spec.get("ttl", 60)),
                                     publish_timeout=self.publish_timeout)
            with self._lock:
                f.check = chk
        if adopt and self.progress is not None:
            log.info("campaign %s: following %s (started before this runner)", c.id, device)
        if dirty and p is not None and self.progress is not None:
            self.progress.put(c.id, device, p)
        return out

    def abort(self, c: Campaign, device: str) -> None:
        with self._lock:
            self._unfollow((c.id, device))
        self.client.submit(device, "ota_abort", None, ttl=int(c.spec.get("ttl", 60)),
                           publish_timeout=self.publish_timeout)
        if self.progress is not None:
            old = self.progress.get(c.id, device)
            self.progress.put(c.id, device, Progress("aborting", old.n if old else None, old.of if old else None,
                                                     None, self.clock()))

    def last(self, cid: str, device: str) -> Progress | None:
        """The device's last state as this process knows it (None once final or not followed)."""
        with self._lock:
            f = self._flights.get((cid, device))
            return f.progress if f else None

    # ---- under self._lock ---------------------------------------------------------------------
    def _follow(self, key: tuple[str, str], f: _Flight) -> None:
        self._flights[key] = f
        self._by_device.setdefault(key[1], set()).add(key[0])

    def _unfollow(self, key: tuple[str, str]) -> None:
        self._flights.pop(key, None)
        cids = self._by_device.get(key[1])
        if cids is not None:
            cids.discard(key[0])
            if not cids:
                del self._by_device[key[1]]

    def _settle_command(self, f: _Flight) -> None:
        cmd, f.cmd = f.cmd, None
        assert cmd is not None
        data = cmd.data if isinstance(cmd.data, dict) else {}
        if cmd.ok:  # accepted: the events decide; the result says where it stands
            if f.progress is None or f.progress.st == "sent":
                f.progress, f.dirty = Progress(_text(data.get("st")) or "accepted", at=self.clock()), True
            return
        if cmd.code == "refused":
            why = _text(data.get("why")) or "refused"
        else:
            why = cmd.code or cmd.state.value.lower()
        if why == "downgrade":  # already on this release (a campaign run again)? its running version says
            f.checking, f.progress, f.dirty = True, Progress("checking", why=why, at=self.clock()), True
            return
        f.outcome = (False, why)
        f.progress, f.dirty = Progress("refused" if cmd.code == "refused" else "failed", why=why, at=self.clock()), True

    def _settle_check(self, f: _Flight) -> None:
        chk, f.check, f.checking = f.check, None, False
        assert chk is not None
        if chk.ok and isinstance(chk.data, dict) and chk.data.get("fw") == f.version:
            f.outcome = (True, None)  # it runs this release: nothing to do, and not a failure
            f.progress, f.dirty = Progress("current", at=self.clock()), True
        else:
            f.outcome = (False, "downgrade")
            f.progress, f.dirty = Progress("refused", why="downgrade", at=self.clock()), True

    # ---- events (paho's network thread) --------------------------------------------------------
    def _on_event(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        device = parts[2] if len(parts) == 5 else ""
        with self._lock:
            if device not in self._by_device:
                return  # nobody follows it: not even verified (a flood of others' events costs nothing)
        device, msg, err = open_uplink(self.client.registry, self._keys, topic, payload)
        if msg is None:
            with self._lock:
                self.unverified += 1
            log.warning("unverified event on %s: %s", topic, err)
            return
        if msg["type"] != "event" or msg["code"] != "ota":
            return
        d = msg.get("detail") or {}
        st = _text(d.get("st"))
        if st is None:
            return
        p = Progress(st, _count(d.get("n")), _count(d.get("of")), _text(d.get("why")), self.clock())
        with self._lock:
            for cid in self._by_device.get(device, ()):
                f = self._flights[(cid, device)]
                if f.outcome is not None or d.get("v") != f.version or d.get("seq") != f.seq:
                    continue
                q = p
                if q.n is None and f.progress is not None and f.progress.n is not None:  # keep how far it got
                    q = Progress(q.st, f.progress.n, f.progress.of, q.why, q.at)
                f.progress, f.dirty = q, True
                if st == CONFIRMED:
                    f.outcome = (True, None)
                elif st in FAILED_STATES:
                    why = p.why or st
                    f.outcome = (False, f"rolled_back: {why}" if st == "rolled_back" else why)
