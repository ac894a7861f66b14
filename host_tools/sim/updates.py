"""Firmware updates at a simulated site (host_tools/sim/world.py, SPEC §10): the site's release key,
the trust every board is provisioned with, the cloud's chunk server, and campaigns through the
rollout engine with the OTA action, as `edgepay ota deploy` runs them.

    u = world.updates
    r = u.build("sim-gate", "0.2.0", 2)            # a signed release of the board's bundle (firmware/)
    u.deploy(r, ["gate-1"])                        # a campaign: the ota command, then the device's events
    u.progress("gate-1")                           # the device's last ota event detail {"st", "n", "of", ...}

The release key is made when the site starts, in a directory of the site's root (or, when that root
lies in a git work tree, a private temporary one: release.keygen refuses a work tree), never in the
repo; a second key is trusted beside it, as a device always trusts two (SPEC §10).

Each device's ota events are the world's "update" events. From a device's first step (its
manifest verified: a download takes a fraction of a second on loopback, then the install may come
at any moment) until its update is final and it is back up, new actions of the site's actors wait
(its _Gate, as for a power cut): a camera or QR scan sent to a VM that is rebooting is lost (a
real camera would read the plate again; the scripted actors do not). Actors already acting finish
first, and it is the device that decides when it installs: a session in progress defers it
("deferred": busy). A deferral for the install window (outside_window) lets them go again: that
wait may be long; the install then comes without a hold.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from host_tools.cloud.chunkserver import ChunkServer, ReleaseStore
from host_tools.protocol.manifest import key_id
from host_tools.release import Release, build_release, inside_git_tree, keygen, load_private
from host_tools.sim.provision import board_definition

if TYPE_CHECKING:
    from host_tools.cloud.rollout import Rollouts
    from host_tools.sim.world import World

FINAL = ("confirmed", "failed", "rolled_back")
HOLD_S = 120.0        # real seconds a device is kept from actors at most
CAMPAIGN_TIMEOUT_S = 180.0


class SiteUpdates:
    def __init__(self, world: "World"):
        self.w = world
        root = world.root.resolve()
        self._tmp_keys = inside_git_tree(root) is not None
        self.keydir = Path(tempfile.mkdtemp(prefix="edgepay-release-key-")) / "keys" if self._tmp_keys \
            else root / "release-keys"
        _, priv, _ = keygen(self.keydir)
        _, spare, _ = keygen(self.keydir)   # trusted too: the key a rotation would move to
        self.key = load_private(priv)
        keys = {}
        for k in (self.key, load_private(spare)):
            pub = k.public_key()
            keys[key_id(pub).hex()] = pub.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
        self.trust = {"keys": keys, "revoked": []}   # the device config's "ota" section
        self.dir = root / "releases"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.store = ReleaseStore(self.dir)
        self.chunks: ChunkServer | None = None
        self.ro: "Rollouts | None" = None
        self._client: Any = None
        self._rstore: Any = None
        self._stop = threading.Event()
        self._runner: threading.Thread | None = None
        self._lock = threading.Lock()
        self.events: dict[str, list[dict]] = {}     # device -> its ota event details, in order
        self.campaigns: dict[str, str] = {}          # campaign id -> last state seen
        self._holds: dict[str, threading.Event] = {}

    # ---- life cycle --------------------------------------------------------------------------
    def start(self) -> None:
        """The chunk server, on a connection of its own (chunks never queue command results)."""
        self.chunks = ChunkServer.connect(self.w.registry, self.w.cloud_broker, self.store)

    def _engine(self) -> "Rollouts":
        """The rollout engine and its runner, made at the first campaign."""
        from host_tools.cloud.commands import CommandClient
        from host_tools.cloud.ota_action import OtaAction, OtaProgress
        from host_tools.cloud.rollout import Rollouts
        from host_tools.cloud.rollout_store import RolloutStore
        if self.ro is None:
            self._rstore = RolloutStore.open(str(self.w.root / "rollouts.db"))
            # the operator's deploy: a client of its own, signing on the site's clock
            self._client = CommandClient(self.w.registry, self.w.cloud_broker, clock=self.w.clock).connect()
            self.ro = Rollouts(self._rstore, {"ota": OtaAction(self._client, OtaProgress(self._rstore.db))})
            self._runner = threading.Thread(target=self._run, name="world-rollouts", daemon=True)
            self._runner.start()
        return self.ro

    def _run(self) -> None:
        ro = self.ro
        assert ro is not None
        while not self._stop.wait(0.2):
            try:
                for c in ro.tick():
                    self._note(c.id, c.state, c.reason)
            except Exception as e:  # noqa: BLE001 - a database hiccup skips one pass
                self.w.event("site", "error", f"rollout tick: {e!r}"[:160])

    def _note(self, cid: str, state: str, reason: str | None) -> None:
        with self._lock:
            if self.campaigns.get(cid) == state:
                return
            self.campaigns[cid] = state
        if state != "running":
            self.w.event("site", "campaign", f"{cid} {state}: {reason or ''}".strip(), campaign=cid, state=state)

    def close(self) -> None:
        self._stop.set()
        for ev in list(self._holds.values()):
            ev.set()
        if self._runner is not None:
            self._runner.join(timeout=3)
        if self.chunks is not None:
            self.chunks.close()
        if self._client is not None:
            self._client.close()
        if self._rstore is not None:
            self._rstore.close()
        if self._tmp_keys:
            shutil.rmtree(self.keydir.parent, ignore_errors=True)

    # ---- releases and campaigns --------------------------------------------------------------
    def build(self, board: str, version: str, seq: int, chunk: int = 1536) -> Release:
        """A signed release of `board`'s bundle (firmware/ as it is), stored where the chunk
        server serves it."""
        r = build_release(board_definition(board), version, seq, self.key, chunk=chunk)
        stem = self.dir / f"{board}-{version}"
        Path(f"{stem}.bin").write_bytes(r.payload)
        Path(f"{stem}.manifest").write_bytes(r.signed)
        self.store.scan()
        return r

    def deploy(self, r: Release, devices: list[str], cid: str | None = None) -> str:
        """A campaign of `r` to `devices` (all at once: the site has one or two of each class);
        its id."""
        from host_tools.cloud.ota_action import OtaAction
        m = r.manifest
        cid = cid or f"{m.board}-{m.version}"
        self._engine().create(cid, "ota", OtaAction.spec(r.signed, m, f"{m.board}-{m.version}", ttl=self.w.cmd_ttl),
                              devices, cohorts=(100,), rate=600, timeout_s=CAMPAIGN_TIMEOUT_S, abort_share=1.0)
        with self._lock:
            self.campaigns[cid] = "running"
        self.w.event("site", "campaign", f"{cid}: {m.version} (seq {m.seq}, {m.size} B) to {', '.join(devices)}",
                     campaign=cid, state="running")
        return cid

    def outcome(self, cid: str) -> dict[str, tuple[str, str | None]]:
        """device -> (target state, reason) in campaign `cid`."""
        assert self._rstore is not None
        return {t.device: (t.state, t.reason) for t in self._rstore.targets(cid)}

    # ---- the devices' ota events (World._on_up, verified) --------------------------------------
    def on_event(self, device: str, det: dict) -> None:
        st = str(det.get("st"))
        with self._lock:
            self.events.setdefault(device, []).append(det)
        extra = f" {det['n']}/{det['of']}" if "n" in det else f": {det['why']}" if det.get("why") else ""
        self.w.event(device, "update", f"{st}{extra} ({det.get('v')})", st=st, v=det.get("v"), seq=det.get("seq"),
                     n=det.get("n"), of=det.get("of"), why=det.get("why"))
        with self._lock:
            hold = self._holds.get(device)
            waits = st == "deferred" and det.get("why") == "outside_window"
            if hold is None and st not in FINAL and not waits and not self._stop.is_set():
                hold = self._holds[device] = threading.Event()
                threading.Thread(target=self._hold, args=(device, hold), name=f"world-hold-{device}",
                                 daemon=True).start()
        if hold is not None and (st in FINAL or waits):
            hold.set()

    def _hold(self, device: str, done: threading.Event) -> None:
        d = self.w.devices[device]
        try:
            with d.gate.exclusive():   # after the actors acting now: none starts until it is over
                done.wait(HOLD_S)
                deadline = time.monotonic() + 30
                while self.w.booting(device) and time.monotonic() < deadline and not self._stop.is_set():
                    time.sleep(0.05)
        finally:
            with self._lock:
                self._holds.pop(device, None)

    def progress(self, device: str) -> dict:
        """The device's last ota event detail ({} before any)."""
        with self._lock:
            ev = self.events.get(device)
            return dict(ev[-1]) if ev else {}

    def states(self, device: str) -> list[str]:
        with self._lock:
            return [str(e.get("st")) for e in self.events.get(device, [])]

    def wait(self, device: str, pred, timeout: float, stop: threading.Event | None = None) -> bool:
        """Wait until pred(last ota detail) holds for `device`; False at the timeout or `stop`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self.progress(device)):
                return True
            if (stop is not None and stop.is_set()) or self._stop.is_set():
                return False
            time.sleep(0.02)
        return False

    def summary(self) -> dict[str, dict]:
        """Per device: the ota states it reported, why it deferred (if it did), the version it
        confirmed (if it did)."""
        out = {}
        with self._lock:
            for dev, evs in self.events.items():
                out[dev] = {"states": [e.get("st") for e in evs],
                            "deferred": next((e.get("why") for e in evs if e.get("st") == "deferred"), None),
                            "confirmed": next((e.get("v") for e in evs if e.get("st") == "confirmed"), None)}
        return out
