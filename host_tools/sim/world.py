"""A simulated site: the whole cloud side and a handful of simulated boards, on one simulated clock.

    with World(rate=90, seed=1) as w:            # Mosquitto, registry, ledger, ingest, provider, sessions
        w.add_devices([("gate-1", "gate"), ("vend-1", "vending"), ("rent-1", "rental")])
        w.bind("A12345", "acct-1")
        ...drive w.devices["gate-1"].hw (SimPeripherals)...
        w.partition(600)                         # a 10-minute (simulated) network outage
        w.power_cut("gate-1")                    # SIGKILL the VM, boot it again
        w.drain(); print(w.reconcile())

What runs (all on loopback, in a private directory):
- Mosquitto (host_tools.broker.Broker: devices on one listener, cloud workers on `cloud_port`), or
  an operator's broker (`ExternalBroker`);
- the registry (SQLite), an SQLite ledger, `ingest_workers` IngestWorkers (shared subscription), the
  ScriptedProvider (pay-after, unlimited credit up to `credit`) and the SessionService, whose
  `on_commit` settles every committed sess_close and whose state is kept in the ledger's database
  (`restart_cloud` stops and starts the cloud side on it);
- per device: a SimBoard (the firmware on the MicroPython VM, its board file sim-gate /
  sim-vending / sim-rental), its SimPeripherals, optionally behind the site's FaultyProxy (one
  proxy for the site's uplink: `partition` cuts every device behind it); a board whose firmware
  resets itself (exit 4: an update's install or trial) is booted again, reset cause "soft";
- firmware updates (`updates`, host_tools/sim/updates.py): the site's release key, trusted by
  every board it provisions, the chunk server, and campaigns through the rollout engine.

The simulated clock (`SimClock`) starts at `start` (a fixed Monday 08:00 UTC by default) and runs
`rate` times real time. The cloud follows it: the session service (and the commands it signs) and
the provider take it as their `clock`. The devices follow it too: the site's TimeServer
(host_tools/cloud/timeserver.py) answers each device's time_req with the simulated time, and the
device clock runs `rate` x real time (the sim-only `clock_rate`, firmware/clock.py). Command
lifetimes are in simulated seconds, so the devices' `cmd_ttl_s` and `clock_skew_s` are scaled to
last as long in real time as they would at rate 1 (`self.cmd_ttl`: a minute of real time). The
gate's barrier hold follows clock_rate too; other app timers (take window, door alarms) stay in
real time.

Observation: `status()` rows for a live view (state of each machine from the console's FSM lines,
online from the retained status, journal depth and heap from heartbeats, sessions from the ledger);
`events` (and `on_event`) log what happened, in simulated time.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from host_tools.broker import Broker
from host_tools.build import compile_firmware
from host_tools.cloud.ingest import IngestWorker
from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.mqtt import BrokerSettings, CloudMQTT
from host_tools.cloud.payafter import ScriptedProvider
from host_tools.cloud.registry import Registry
from host_tools.cloud.session_store import SessionStore
from host_tools.cloud.sessions import SessionService
from host_tools.cloud.timeserver import TimeServer
from host_tools.provision import ensure_acl, update_passwd, update_passwd_many
from host_tools.protocol import ProtocolError, open_message
from host_tools.sim.board import EXIT_REBOOT
from host_tools.sim.netfault import FaultyProxy
from host_tools.sim.peripherals import SimPeripherals
from host_tools.sim.provision import provision_sim
from host_tools.sim.reconcile import reconcile
from host_tools.sim.simclock import START, SimClock
from host_tools.sim.simdevice import SimDevice, _Gate, _Hold
from host_tools.sim.updates import SiteUpdates

__all__ = ["World", "SimClock", "SimDevice", "ExternalBroker", "START", "PARKING", "VENDING", "RENTAL",
           "TARIFFS", "POLICY", "_Gate", "_Hold"]


# Tariffs (protocol/FEES.md), minor units of CNY
PARKING = {1: 1, 2: "CNY", 3: 15, 4: 3600, 5: 500, 6: 4000, 7: 10000}
VENDING = {1: 1, 2: "CNY", 8: [["cola", 350], ["chips", 600], ["water", 200], ["nuts", 450]]}
RENTAL = {1: 1, 2: "CNY", 4: 3600, 5: 200, 6: 2000, 9: 9900}
TARIFFS = {"gate": PARKING, "vending": VENDING, "rental": RENTAL}
# The signed offline policy: per payer, total exposure, sessions, longest session
POLICY = {1: 1, 2: "CNY", 3: 5000, 4: 20000, 5: 10, 6: 86400}

FSM_LINE = re.compile(r"FSM (\S+) (\S+) -> (\S+)")



class ExternalBroker:
    """An operator's Mosquitto (`edgepay broker conf`): device users go into BROKER_DIR/passwd and
    the broker reloads it on SIGHUP (`reload_pid`); cloud workers use the cloud listener."""

    def __init__(self, host: str, cloud_port: int, device_port: int, broker_dir: Path,
                 reload_pid: int | None = None):
        self.host, self.cloud_port, self.port = host, cloud_port, device_port
        self.tls_port = None
        self.dir = Path(broker_dir)
        self.reload_pid = reload_pid

    def add_user(self, name: str, password: str, cloud: bool = False) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        update_passwd(self.dir / "passwd", name, password)
        ensure_acl(self.dir / "acl")
        if self.reload_pid:
            os.kill(self.reload_pid, signal.SIGHUP)
            time.sleep(0.1)

    def add_users(self, users: dict[str, str]) -> None:
        """Many device users: one passwd write, one reload (a fleet, host_tools/sim/fleet.py)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        update_passwd_many(self.dir / "passwd", users)
        ensure_acl(self.dir / "acl")
        if self.reload_pid:
            os.kill(self.reload_pid, signal.SIGHUP)
            time.sleep(0.2)



class World:
    def __init__(self, root: str | Path | None = None, *, rate: float = 60, seed: int = 0,
                 start: float = START, ingest_workers: int = 1,
                 proxy: bool = True, broker: ExternalBroker | None = None, cloud_user: str = "cloud",
                 cloud_password: str | None = None, credit: int = 100_000, heapsize: str | None = None,
                 on_event: Callable[[dict], None] | None = None, echo: bool = False,
                 ingest_options: dict | None = None, ingest_hold_ms: float | None = None,
                 ledger_url: str | None = None):
        self._own_root = root is None
        self.ledger_url = ledger_url   # None: an SQLite ledger in root (a PostgreSQL URL: bench/fleet.py --pg)
        self.root = Path(root or tempfile.mkdtemp(prefix="edgepay-world-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.rate = rate
        self.seed = seed
        self.clock = SimClock(start, rate)
        # A command's life in simulated seconds: a minute of real time (the device's bounds follow).
        self.cmd_ttl = min(604800, max(600, int(60 * rate)))
        self.skew_s = min(3600, max(120, int(5 * rate)))
        self.ingest_workers = ingest_workers
        self.ingest_options = ingest_options   # IngestWorker feed_options (JetStream: ack_wait_s ...)
        self.ingest_hold_ms = ingest_hold_ms
        self.use_proxy = proxy
        self.cloud = (cloud_user, cloud_password or os.urandom(9).hex())
        self.credit = credit
        self.heapsize = heapsize
        self.on_event = on_event
        self.echo = echo
        self._ext = broker
        self.broker: Any = broker
        self.devices: dict[str, SimDevice] = {}
        self.events: list[dict] = []
        self.phase = "starting"
        self.outages = 0
        self.power_cuts = 0
        self.errors: list[str] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._keys: dict[str, Any] = {}
        self.proxy: FaultyProxy | None = None
        self.updates: SiteUpdates | None = None
        self.reboots = 0
        self.fw: dict[str, str] = {}                  # device -> the release its last hello named
        self._life: dict[str, threading.Lock] = {}   # device -> held while its VM is killed or started
        self._rebooting: set[str] = set()             # devices booting again after a reset of their own
        self._boot_hooks: dict[str, list[Callable[[], None]]] = {}
        self.started = False

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "World":
        user, pw = self.cloud
        self.clock.reset()
        if self._ext is None:
            self.broker = Broker(users={user: pw}, cloud_users=(user,)).start()
            host = "127.0.0.1"
        else:
            host = self._ext.host
        self.host = host
        if hasattr(self.broker, "cloud_settings"):  # a cluster (host_tools/sim/fleetcluster.py): its engine
            self.cloud_broker = self.broker.cloud_settings(user, pw)
        else:
            self.cloud_broker = BrokerSettings(host, self.broker.cloud_port, user, pw)  # every cloud worker's
        self.registry = Registry(self.root / "registry.db")
        self.updates = SiteUpdates(self)  # the release key first: every board provisioned trusts it
        self.provider = ScriptedProvider(clock=self.clock, default_credit=self.credit)
        self._start_cloud()
        self.mq = CloudMQTT(self.cloud_broker)
        # Only what _on_up reads: with up/# this connection also had a copy of every record, result
        # and time_req, and the broker delivers a message once per matching filter, so the
        # TimeServer's up/time on the same connection answered every request twice.
        for suffix in ("status", "hb", "evt", "hello"):
            self.mq.subscribe(f"v1/dev/+/up/{suffix}", self._on_up, qos=1)
        self.time = TimeServer(self.registry, self.mq, clock=self.clock)
        self.mq.connect()
        self.updates.start()
        if self.use_proxy:
            self.proxy = FaultyProxy(self.broker.port, host, seed=self.seed)
        for fn, name in ((self._tail, "console"), (self._resets, "resets")):
            t = threading.Thread(target=fn, name=f"world-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self.started = True
        self.phase = "running"
        self.event("site", "start", f"site up: broker :{self.broker.port}, clock x{self.rate:g}")
        return self

    def _start_cloud(self) -> None:
        """The ledger, the session service (its state in the ledger's database) and ingest."""
        url = self.ledger_url or str(self.root / "ledger.db")
        self.ledger = open_ledger(url)
        self.store = SessionStore.open(url)
        self.svc = SessionService(self.registry, self.provider, self.cloud_broker,
                                  clock=self.clock, cmd_ttl=self.cmd_ttl, store=self.store).start()
        self.ingest: list[IngestWorker] = []
        for _ in range(self.ingest_workers):
            self.add_ingest()

    def add_ingest(self) -> IngestWorker:
        """One more ingest worker in the group (started; in `self.ingest`, stopped with the cloud)."""
        hold = self.ingest_hold_ms if self.ingest_hold_ms is not None else (500 if self.ingest_workers > 1 else 0)
        w = IngestWorker(self.registry, self.ledger, self.cloud_broker, hold_ms=hold, on_commit=self.svc.on_commit,
                         feed_options=self.ingest_options).start()
        self.ingest.append(w)
        return w

    def _stop_cloud(self) -> None:
        for w in self.ingest:
            w.stop()
        self.svc.stop()
        self.store.close()
        self.ledger.close()

    def restart_cloud(self, down_s: float = 0.5) -> dict:
        """Stop the cloud (ingest, session service, ledger connections: everything but the broker and
        the provider, which is another company's), leave it down `down_s` real seconds, start it again
        on the same database and recover (host_tools/cloud/session_settle.py). Devices keep their
        records until the new ingest acknowledges them."""
        self._stop_cloud()
        self.event("site", "cloud down", "session service and ingest stopped")
        time.sleep(down_s)
        self._start_cloud()
        out = self.svc.recover(self.ledger)
        self.event("site", "cloud up", f"recovered: {out['settled']} settled, {out['items']} items")
        return out

    def close(self) -> None:
        self._stop.set()
        for d in self.devices.values():
            with self._life_lock(d.name):  # no reset of its own boots it again after this
                d.board.kill()
            d.hw.close()
        for t in self._threads:
            t.join(timeout=2)
        if self.updates is not None:
            self.updates.close()
        if not self.started:
            return
        self._stop_cloud()
        self.mq.close()
        if self.proxy:
            self.proxy.close()
        self.registry.close()
        if self._ext is None:
            self.broker.close()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "World":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- the log -----------------------------------------------------------------------------
    def event(self, device: str, what: str, detail: str = "", **data: Any) -> dict:
        e = {"t": round(self.clock.elapsed(), 1), "sim": self.clock.stamp(), "device": device,
             "event": what, "detail": detail}
        e.update(data)
        with self._lock:
            self.events.append(e)
            d = self.devices.get(device)
            if d is not None:
                d.last = f"{what} {detail}".strip()
        if what == "error":
            self.errors.append(f"{device}: {detail}")
        if self.on_event:
            try:
                self.on_event(e)
            except Exception:  # noqa: BLE001 - a broken view must not stop the site
                pass
        return e

    # ---- devices -----------------------------------------------------------------------------
    def add_devices(self, specs: list[tuple[str, str]], timeout: float = 30.0) -> list[SimDevice]:
        """Several boards, booted in parallel."""
        compile_firmware()  # once, before the boards race for it
        devs = [self._provision(n, k, True) for n, k in specs]
        errs: list[BaseException] = []

        def up(d: SimDevice) -> None:
            try:
                self._boot(d, None, POLICY, timeout)
            except BaseException as e:  # noqa: BLE001
                errs.append(e)
        ts = [threading.Thread(target=up, args=(d,)) for d in devs]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errs:
            raise errs[0]
        return devs

    def _provision(self, name: str, kind: str, proxied: bool) -> SimDevice:
        hw = SimPeripherals()
        port = self.proxy.port if (proxied and self.proxy) else None
        rate = int(round(self.rate))
        extra: dict[str, Any] = {"ota": self.updates.trust} if self.updates is not None else {}
        b = provision_sim(self.broker, self.registry, self.root / "boards", name, board_file=f"sim-{kind}",
                          peripherals=hw, clock_rate=rate if rate > 1 else None, broker_port=port,
                          heapsize=self.heapsize,
                          settings={"cmd_ttl_s": self.cmd_ttl, "clock_skew_s": self.skew_s}, **extra)
        b.echo = self.echo
        d = SimDevice(name, kind, b, hw, bool(port))
        with self._lock:
            self.devices[name] = d
            self._keys[name] = self.registry.get(name)
        return d

    def _boot(self, d: SimDevice, tariff: dict | None, policy: dict | None, timeout: float) -> None:
        d.board.start()
        d.board.wait_for("online", timeout)
        d.hw.wait_connected(timeout)
        self._trust(d, 0, timeout)
        r = self.svc.set_tariff(d.name, tariff or TARIFFS[d.kind], wait=True, timeout=timeout)
        if not r.ok:
            raise RuntimeError(f"{d.name}: set_tariff {r.state.value} {r.code} {r.data}")
        if policy:
            r = self.svc.cmd.send(d.name, "set_policy", dict(policy), timeout=timeout, ttl=self.cmd_ttl)
            if not r.ok:
                raise RuntimeError(f"{d.name}: set_policy {r.state.value} {r.code} {r.data}")
        self.event(d.name, "boot", f"{d.kind} on the VM, online, tariff set")

    def _trust(self, d: SimDevice, start: int, timeout: float) -> None:
        """Until the device's clock is set: it asks at connect (and again after 2, 4, 8 s), the
        site's TimeServer answers."""
        d.board.wait_for("time set", timeout, start=start)

    def bind(self, payer: str, account: str) -> None:
        self.svc.bind(payer, account)

    def allowlist(self, device: str, entries: dict[str, int], version: int = 1) -> None:
        """Install a full offline allowlist {payer: cap} (the device decides offline within it)."""
        r = self.svc.cmd.send(device, "set_allowlist", {1: version, 2: 0, 4: [[p, c] for p, c in entries.items()]},
                              timeout=10, ttl=self.cmd_ttl)
        if not r.ok:
            raise RuntimeError(f"{device}: set_allowlist {r.state.value} {r.code} {r.data}")

    def get_state(self, device: str, timeout: float = 10.0) -> dict | None:
        r = self.svc.cmd.send(device, "get_state", timeout=timeout, ttl=self.cmd_ttl)
        return r.data if r.ok else None

    # ---- faults ------------------------------------------------------------------------------
    def partition(self, sim_seconds: float) -> None:
        """A network outage of the site's uplink: every device behind the proxy loses the broker
        for `sim_seconds` of simulated time (at least 3 real seconds, so devices notice it)."""
        if self.proxy is None:
            raise RuntimeError("no proxy: the world was made with proxy=False")
        real = max(3.0, self.clock.real(sim_seconds))
        self.outages += 1
        self.phase = "network outage"
        self.event("site", "outage", f"uplink down for {sim_seconds / 60:.0f} min ({real:.1f} s real)")
        self.proxy.partition(real)

        def heal() -> None:
            if self._stop.wait(real):
                return
            self.proxy.heal() if self.proxy else None
            self.phase = "running"
            self.event("site", "outage over", "uplink back")
        t = threading.Thread(target=heal, daemon=True)
        t.start()
        self._threads.append(t)

    def power_cut(self, device: str, off_s: float = 0.5, timeout: float = 30.0) -> None:
        """Cut the board's power (SIGKILL: nothing runs), leave it off `off_s` real seconds, boot it
        again; waits (between the device's actions) until it is back with a trusted clock."""
        d = self.devices[device]
        with d.gate.exclusive():
            with self._life_lock(device):
                start = len(d.board.lines)
                hellos = d.hw.hellos
                d.board.kill()
                d.link = "power off"
                d.power_cuts += 1
                self.power_cuts += 1
                self.event(device, "power cut", "SIGKILL: the board loses power")
                time.sleep(off_s)
                d.board.restart()
                d.link = "booting"
            d.board.wait_for("online", timeout, start=start)
            d.hw.wait_connected(timeout, after=hellos)
            self._trust(d, start, timeout)
            self._booted(device)
            self.event(device, "power back", f"boot {d.board.boots}: resumed from flash")

    def on_boot(self, device: str, fn: Callable[[], None]) -> None:
        """Call `fn` each time the device is back after a power cut or a reset of its own, before
        the actors may act on it: what its peripherals do by themselves at power-up (a cabinet's
        RFID reader reports the inventory; the sim peripherals replay held inputs, not scans)."""
        with self._lock:
            self._boot_hooks.setdefault(device, []).append(fn)

    def _booted(self, device: str) -> None:
        with self._lock:
            hooks = list(self._boot_hooks.get(device, ()))
        for fn in hooks:
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                self.event(device, "error", f"after boot: {e!r}"[:200])

    def _life_lock(self, device: str) -> threading.Lock:
        with self._lock:
            return self._life.setdefault(device, threading.Lock())

    def booting(self, device: str) -> bool:
        """Whether the device is down or booting after a reset of its own (not yet back with a
        trusted clock)."""
        with self._lock:
            return device in self._rebooting

    # ---- resets of the firmware's own ------------------------------------------------------
    def _resets(self) -> None:
        """A board whose firmware ended with exit 4 (it asked for a reset: an update's install, a
        trial that failed) boots again, as the chip would. Only exit 4: a power cut (SIGKILL) is
        power_cut's to restore, and a clean stop (0) or a bad config (3) stays down."""
        while not self._stop.wait(0.05):
            with self._lock:
                devs = [d for d in self.devices.values() if d.name not in self._rebooting]
            for d in devs:
                if d.board.returncode == EXIT_REBOOT:
                    with self._lock:
                        self._rebooting.add(d.name)
                    threading.Thread(target=self._soft_reset, args=(d,), name=f"world-reset-{d.name}",
                                     daemon=True).start()

    def _soft_reset(self, d: SimDevice, timeout: float = 30.0) -> None:
        try:
            with self._life_lock(d.name):
                if self._stop.is_set() or d.board.returncode != EXIT_REBOOT:
                    return  # closing, or a power cut got there first and booted it
                start = len(d.board.lines)
                hellos = d.hw.hellos
                d.link = "rebooting"
                self.reboots += 1
                self.event(d.name, "reboot", "the firmware reset itself (exit 4): booting again")
                d.board.start(reset_cause="soft")
                d.link = "booting"
            d.board.wait_for("online", timeout, start=start)
            d.hw.wait_connected(timeout, after=hellos)
            self._trust(d, start, timeout)
            self._booted(d.name)
            self.event(d.name, "rebooted", f"boot {d.board.boots} ({d.board.booted}): online, clock set")
        except Exception as e:  # noqa: BLE001 - a board that does not come back is the run's error
            if not self._stop.is_set():
                self.event(d.name, "error", f"soft reset: {e!r}"[:200])
        finally:
            with self._lock:
                self._rebooting.discard(d.name)

    # ---- background --------------------------------------------------------------------------
    def _tail(self) -> None:
        """The boards' consoles: FSM transitions, link state, actuations."""
        while not self._stop.wait(0.05):
            with self._lock:
                devs = list(self.devices.values())
            for d in devs:
                lines = d.board.lines
                n = len(lines)
                for i in range(d._line, n):
                    line = lines[i]
                    m = FSM_LINE.search(line)
                    if m:
                        d.states[m.group(1)] = m.group(3)
                    elif " mqtt up" in line or line.endswith(" online"):
                        d.link = "up"
                    elif " mqtt down" in line:
                        d.link = "down"
                    elif "Traceback" in line or "MemoryError" in line:
                        self.event(d.name, "error", f"console: {line[:80]}")
                d._line = n

    def _on_up(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        name = parts[2]
        d = self.devices.get(name)
        dev = self._keys.get(name)
        if d is None or dev is None:
            return
        try:
            m = open_message(dev.key, dev.kid, topic, payload)
        except ProtocolError:
            return
        t = m.get("type")
        if t == "status":
            d.online = bool(m.get("online"))
        elif t == "hello":
            self.fw[name] = str(m.get("fw"))
        elif t == "heartbeat":
            d.jdepth, d.heap_free = m.get("jdepth"), m.get("heap")
        elif t == "alarm":
            d.alarms.append(m.get("code"))
            self.event(name, "alarm", f"{m.get('code')} {'on' if m.get('active') else 'off'}")
        elif t == "event" and m.get("code") == "ota" and isinstance(m.get("detail"), dict) and self.updates:
            self.updates.on_event(name, m["detail"])
        elif t == "event":
            self.event(name, "device event", str(m.get("code")))

    # ---- views -------------------------------------------------------------------------------
    def status(self) -> list[dict]:
        """One row per device for a live view."""
        counts: dict[str, list[int]] = {}
        try:
            for s in self.ledger.sessions():
                c = counts.setdefault(s.device, [0, 0])
                c[0 if s.state == "open" else 1] += 1
        except Exception:  # noqa: BLE001 - the ledger may be busy: show what we have
            pass
        rows = []
        for d in list(self.devices.values()):
            c = counts.get(d.name, [0, 0])
            link = d.link
            if link == "up" and d.proxied and self.phase == "network outage":
                link = "down"
            rows.append({"device": d.name, "kind": d.kind, "state": d.state,
                         "online": link == "up" and d.board.running, "link": link, "last": d.last,
                         "jdepth": d.jdepth, "sessions_open": c[0], "sessions_closed": c[1],
                         "boots": d.board.boots, "alarms": len(d.alarms), "fw": self.fw.get(d.name, "-")})
        return rows

    # ---- the end -----------------------------------------------------------------------------
    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every device's journal is empty (all records acknowledged), ingest is idle
        and the session service has nothing pending."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            depths = []
            for name in self.devices:
                st = self.get_state(name, timeout=5)
                depths.append(None if st is None else st.get("jdepth"))
            idle = all(w.stats["queued"] == 0 and w.stats["held_now"] == 0 for w in self.ingest)
            if idle and all(x == 0 for x in depths) and not self.svc._pending:
                time.sleep(0.3)  # settles run in the service's pool after the commit
                return True
            time.sleep(0.3)
        return False

    def reconcile(self, expected: dict[tuple[str, str], int] | None = None) -> dict:
        """Every ledger session: the amount the device signed (its sess_close, verified again from
        the raw envelope) vs the ledger's vs what the provider charged, plus the scenario's
        expectation where it has one; flags; devices' journals; orders left open
        (host_tools/sim/reconcile.py); the firmware each device runs (get_state fw) and what
        its updates reported."""
        rep = reconcile(self, expected)
        fw = {}
        for name in self.devices:
            st = self.get_state(name, timeout=5) or {}
            fw[name] = st.get("fw")
        rep["firmware"] = fw
        rep["updates"] = self.updates.summary() if self.updates is not None else {}
        rep["reboots"] = self.reboots
        return rep
