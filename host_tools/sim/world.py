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
  `on_commit` settles every committed sess_close;
- per device: a SimBoard (the firmware on the MicroPython VM, its board file sim-gate /
  sim-vending / sim-rental), its SimPeripherals, optionally behind the site's FaultyProxy (one
  proxy for the site's uplink: `partition` cuts every device behind it).

The simulated clock (`SimClock`) starts at `start` (a fixed Monday 08:00 UTC by default, in the past
so commands signed with the real time never look expired to a device) and runs `rate` times real
time. The cloud follows it: the session service and the provider take it as their `clock`. The
devices follow it too: a beacon thread sends every device a signed time beacon carrying the
simulated time every `beacon_s` real seconds (never backwards: each carries a newer seq and a time
no earlier than the last), and between beacons the device clock runs `rate` x real time (the
sim-only `clock_rate`, firmware/clock.py). App timers (barrier hold, take window) stay in real time.

Observation: `status()` rows for a live view (state of each machine from the console's FSM lines,
online from the retained status, journal depth and heap from heartbeats, sessions from the ledger);
`events` (and `on_event`) log what happened, in simulated time.
"""
from __future__ import annotations

import calendar
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from host_tools.broker import Broker
from host_tools.build import compile_firmware
from host_tools.cloud.ingest import IngestWorker
from host_tools.cloud.ledger import open_ledger
from host_tools.cloud.mqtt import CloudMQTT
from host_tools.cloud.payafter import OrderState, ScriptedProvider
from host_tools.cloud.registry import Registry
from host_tools.cloud.sessions import SessionService
from host_tools.protocol import ProtocolError, open_message, seal
from host_tools.protocol import topic as topic_for
from host_tools.sim.netfault import FaultyProxy
from host_tools.sim.peripherals import SimPeripherals
from host_tools.sim.provision import provision_sim

START = calendar.timegm((2025, 6, 2, 8, 0, 0))  # Monday 2 June 2025, 08:00 UTC

# Tariffs (protocol/FEES.md), minor units of CNY
PARKING = {1: 1, 2: "CNY", 3: 15, 4: 3600, 5: 500, 6: 4000, 7: 10000}
VENDING = {1: 1, 2: "CNY", 8: [["cola", 350], ["chips", 600], ["water", 200], ["nuts", 450]]}
RENTAL = {1: 1, 2: "CNY", 4: 3600, 5: 200, 6: 2000, 9: 9900}
TARIFFS = {"gate": PARKING, "vending": VENDING, "rental": RENTAL}
# The signed offline policy: per payer, total exposure, sessions, longest session
POLICY = {1: 1, 2: "CNY", 3: 5000, 4: 20000, 5: 10, 6: 86400}

FSM_LINE = re.compile(r"FSM (\S+) (\S+) -> (\S+)")


class SimClock:
    """Simulated Unix time: `start` + `rate` x the real time since creation (callable)."""

    def __init__(self, start: float = START, rate: float = 1.0):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.start = float(start)
        self.rate = float(rate)
        self._t0 = time.monotonic()

    def reset(self) -> None:
        """Start again from `start` now."""
        self._t0 = time.monotonic()

    def __call__(self) -> float:
        return self.start + (time.monotonic() - self._t0) * self.rate

    def elapsed(self) -> float:
        """Simulated seconds since the start."""
        return self() - self.start

    def real(self, sim_seconds: float) -> float:
        """Real seconds that `sim_seconds` of simulated time take."""
        return sim_seconds / self.rate

    def sleep(self, sim_seconds: float) -> None:
        if sim_seconds > 0:
            time.sleep(sim_seconds / self.rate)

    def wait_until(self, t: float, stop: threading.Event | None = None) -> bool:
        """Sleep until simulated time `t` (absolute); False if `stop` was set first."""
        while True:
            left = (t - self()) / self.rate
            if left <= 0:
                return True
            if stop is not None:
                if stop.wait(min(left, 0.2)):
                    return False
            else:
                time.sleep(min(left, 0.2))

    def stamp(self, t: float | None = None) -> str:
        """HH:MM:SS of simulated time (UTC)."""
        return time.strftime("%H:%M:%S", time.gmtime(self() if t is None else t))


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
        from host_tools.cli.provision import ensure_acl, update_passwd
        self.dir.mkdir(parents=True, exist_ok=True)
        update_passwd(self.dir / "passwd", name, password)
        ensure_acl(self.dir / "acl")
        if self.reload_pid:
            os.kill(self.reload_pid, signal.SIGHUP)
            time.sleep(0.1)


class _Gate:
    """Device actors hold it shared while they act; a power cut holds it alone."""

    def __init__(self) -> None:
        self._c = threading.Condition()
        self._n = 0
        self._excl = False

    def shared(self) -> "_Hold":
        return _Hold(self, False)

    def exclusive(self) -> "_Hold":
        return _Hold(self, True)


class _Hold:
    def __init__(self, g: _Gate, excl: bool):
        self.g, self.excl = g, excl

    def __enter__(self) -> None:
        g = self.g
        with g._c:
            if self.excl:
                while g._excl:
                    g._c.wait()
                g._excl = True
                while g._n:
                    g._c.wait()
            else:
                while g._excl:
                    g._c.wait()
                g._n += 1

    def __exit__(self, *exc: Any) -> None:
        g = self.g
        with g._c:
            if self.excl:
                g._excl = False
            else:
                g._n -= 1
            g._c.notify_all()


@dataclass
class SimDevice:
    name: str
    kind: str
    board: Any                      # SimBoard
    hw: SimPeripherals
    proxied: bool
    online: bool = False            # the retained status the cloud sees
    link: str = "booting"           # the device's own view: up | down | booting | power off
    states: dict = field(default_factory=dict)   # machine -> state (console FSM lines)
    last: str = ""
    jdepth: int | None = None
    heap_free: int | None = None
    alarms: list = field(default_factory=list)
    power_cuts: int = 0
    gate: _Gate = field(default_factory=_Gate)
    _line: int = 0

    @property
    def state(self) -> str:
        if self.link == "power off":
            return "power off"
        if not self.states:
            return {"rental": "all in", "gate": "idle", "vending": "idle"}.get(self.kind, "-")
        busy = {k: v for k, v in self.states.items() if v not in ("idle", "stocked")}
        if self.kind == "rental":
            out = sum(1 for v in self.states.values() if v == "empty")
            offered = [k for k, v in self.states.items() if v == "offered"]
            return (f"{out} out" if out else "all in") + (f", {offered[0]} offered" if offered else "")
        if not busy:
            return "idle"
        return ", ".join(f"{k}:{v}" for k, v in sorted(busy.items()))


class World:
    def __init__(self, root: str | Path | None = None, *, rate: float = 60, seed: int = 0,
                 start: float = START, beacon_s: float = 5.0, ingest_workers: int = 1,
                 proxy: bool = True, broker: ExternalBroker | None = None, cloud_user: str = "cloud",
                 cloud_password: str | None = None, credit: int = 100_000, heapsize: str | None = None,
                 on_event: Callable[[dict], None] | None = None, echo: bool = False):
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="edgepay-world-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.rate = rate
        self.seed = seed
        self.clock = SimClock(start, rate)
        self.beacon_s = beacon_s
        self.ingest_workers = ingest_workers
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
        self._beacon_t: dict[str, int] = {}
        self.proxy: FaultyProxy | None = None
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
        self.registry = Registry(self.root / "registry.db")
        self.ledger = open_ledger(str(self.root / "ledger.db"))
        self.provider = ScriptedProvider(clock=self.clock, default_credit=self.credit)
        self.svc = SessionService(self.registry, self.provider, host, self.broker.cloud_port, user, pw,
                                  clock=self.clock, cmd_ttl=600).start()
        self.ingest = [IngestWorker(self.registry, self.ledger, host, self.broker.cloud_port, user, pw,
                                    hold_ms=500 if self.ingest_workers > 1 else 0, on_commit=self.svc.on_commit).start()
                       for _ in range(self.ingest_workers)]
        self.mq = CloudMQTT(host, self.broker.cloud_port, user, pw)
        self.mq.subscribe("v1/dev/+/up/#", self._on_up, qos=1)
        self.mq.connect()
        if self.use_proxy:
            self.proxy = FaultyProxy(self.broker.port, host, seed=self.seed)
        for fn, name in ((self._beacons, "beacons"), (self._tail, "console")):
            t = threading.Thread(target=fn, name=f"world-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self.started = True
        self.phase = "running"
        self.event("site", "start", f"site up: broker :{self.broker.port}, clock x{self.rate:g}")
        return self

    def close(self) -> None:
        self._stop.set()
        for d in self.devices.values():
            d.board.kill()
            d.hw.close()
        for t in self._threads:
            t.join(timeout=2)
        if not self.started:
            return
        for w in self.ingest:
            w.stop()
        self.svc.stop()
        self.mq.close()
        if self.proxy:
            self.proxy.close()
        self.ledger.close()
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
    def add_device(self, name: str, kind: str, *, tariff: dict | None = None, policy: dict | None = POLICY,
                   proxied: bool = True, timeout: float = 30.0) -> SimDevice:
        """Provision, boot and bring up one board: online, clock trusted, tariff and policy set."""
        d = self._provision(name, kind, proxied)
        self._boot(d, tariff, policy, timeout)
        return d

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
        b = provision_sim(self.broker, self.registry, self.root / "boards", name, board_file=f"sim-{kind}",
                          peripherals=hw, clock_rate=rate if rate > 1 else None, broker_port=port,
                          heapsize=self.heapsize)
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
            r = self.svc.cmd.send(d.name, "set_policy", dict(policy), timeout=timeout, ttl=600)
            if not r.ok:
                raise RuntimeError(f"{d.name}: set_policy {r.state.value} {r.code} {r.data}")
        self.event(d.name, "boot", f"{d.kind} on the VM, online, tariff set")

    def _trust(self, d: SimDevice, start: int, timeout: float) -> None:
        """A beacon now (the next round may be seconds away) until the device's clock is set."""
        deadline = time.monotonic() + timeout
        while True:
            self.send_time(d.name)
            try:
                d.board.wait_for("time set", 1.0, start=start)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    def bind(self, payer: str, account: str) -> None:
        self.svc.bind(payer, account)

    def allowlist(self, device: str, entries: dict[str, int], version: int = 1) -> None:
        """Install a full offline allowlist {payer: cap} (the device decides offline within it)."""
        r = self.svc.cmd.send(device, "set_allowlist", {1: version, 2: 0, 4: [[p, c] for p, c in entries.items()]},
                              timeout=10, ttl=600)
        if not r.ok:
            raise RuntimeError(f"{device}: set_allowlist {r.state.value} {r.code} {r.data}")

    def get_state(self, device: str, timeout: float = 10.0) -> dict | None:
        r = self.svc.cmd.send(device, "get_state", timeout=timeout, ttl=600)
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
            self.event(device, "power back", f"boot {d.board.boots}: resumed from flash")

    # ---- background --------------------------------------------------------------------------
    def _beacons(self) -> None:
        """A signed time beacon with the simulated time to every device, every beacon_s."""
        while not self._stop.wait(self.beacon_s):
            with self._lock:
                devs = list(self.devices)
            for name in devs:
                try:
                    self.send_time(name)
                except Exception:  # noqa: BLE001 - the next round tries again
                    pass

    def send_time(self, device: str) -> None:
        dev = self._keys.get(device) or self.registry.get(device)
        with self._lock:
            t = max(int(self.clock()), self._beacon_t.get(device, 0))  # never backwards
            self._beacon_t[device] = t
        tp = topic_for(device, "time")
        msg = {"type": "time", "aud": device, "iat": t, "seq": self.registry.next_seq(device)}
        # QoS 0: a beacon is never queued for a device that is offline (a power cut, an outage) and
        # delivered late: a stale beacon would set the device's clock back (see _on_time).
        self.mq.publish(tp, seal(dev.key, dev.kid, tp, msg), qos=0, timeout=None)

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
        elif t == "heartbeat":
            d.jdepth, d.heap_free = m.get("jdepth"), m.get("heap")
        elif t == "alarm":
            d.alarms.append(m.get("code"))
            self.event(name, "alarm", f"{m.get('code')} {'on' if m.get('active') else 'off'}")
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
                         "boots": d.board.boots, "alarms": len(d.alarms)})
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
        expectation where it has one; flags; devices' journals; orders left open."""
        rows = []
        problems: list[str] = []
        orders = {o.order_no: o for o in self.provider.orders()}
        seen_orders = set()
        flags = self.svc.flags()
        flag_keys: dict[tuple[str, str], list[str]] = {}
        for f in flags:
            flag_keys.setdefault((f.device, f.sid), []).append(f.kind)
        offline_sids = {(r.device, r.sid) for r in self.ledger.records() if r.offline}
        for s in sorted(self.ledger.sessions(), key=lambda s: (s.device, s.t0 or 0, s.sid)):
            close = None
            if s.close_seq is not None:
                for r in self.ledger.records(s.device):
                    if r.seq == s.close_seq:
                        close = r
                        break
            dev_amount = None
            if close is not None:
                k = self._keys[s.device]
                msg = open_message(k.key, k.kid, topic_for(s.device, "sess_close"), close.raw)
                dev_amount = msg.get("amount")
            order_no = f"{s.device}:{s.sid}"
            o = orders.get(order_no)
            if o is not None:
                seen_orders.add(order_no)
            charged = o.amount if (o is not None and o.state is OrderState.DONE) else (None if o else 0)
            exp = (expected or {}).get((s.device, s.sid))
            st = self.svc.settle_status(s.device, s.sid)
            why = []
            if s.state != "closed":
                why.append("still open")
            if dev_amount != s.amount:
                why.append(f"ledger {s.amount} != device {dev_amount}")
            if charged != s.amount and not (charged is None and not s.amount):
                why.append(f"charged {charged} != ledger {s.amount}")
            if exp is not None and exp != s.amount:
                why.append(f"expected {exp} != {s.amount}")
            fl = flag_keys.get((s.device, s.sid), [])
            if fl:
                why.append("flags " + ",".join(fl))
            rows.append({"device": s.device, "sid": s.sid, "payer": s.payer, "state": s.state,
                         "offline": (s.device, s.sid) in offline_sids, "reason": s.reason, "t0": s.t0, "t1": s.t1,
                         "minutes": round((s.t1 - s.t0) / 60) if (s.t0 and s.t1) else None,
                         "device_amount": dev_amount, "ledger_amount": s.amount, "charged": charged,
                         "expected": exp, "order": o.state.value if o else None, "settle": st.get("status"),
                         "ok": not why, "why": "; ".join(why)})
            if why:
                problems.append(f"{s.device}/{s.sid}: {'; '.join(why)}")
        stray = [no for no, o in orders.items() if no not in seen_orders and o.state is not OrderState.DONE
                 and o.state is not OrderState.REVOKED]
        for no in stray:
            problems.append(f"provider order {no} is {orders[no].state.value} with no ledger session")
        open_orders = [no for no, o in orders.items() if o.state in (OrderState.CREATED, OrderState.DOING)]
        for no in open_orders:
            if no in seen_orders:
                problems.append(f"provider order {no} still {orders[no].state.value}")
        for f in flags:
            if (f.device, f.sid) not in {(r["device"], r["sid"]) for r in rows}:
                problems.append(f"flag {f.kind} on {f.device}/{f.sid} (no ledger session): {f.detail}")
        devices = {}
        for name, d in self.devices.items():
            st = self.get_state(name, timeout=5) or {}
            devices[name] = {"kind": d.kind, "jdepth": st.get("jdepth"), "boots": st.get("boots"),
                             "power_cuts": d.power_cuts, "heap_used": st.get("heap_used")}
            if st.get("jdepth") != 0:
                problems.append(f"{name}: journal depth {st.get('jdepth')} (records not acknowledged)")
        problems += [f"scenario error: {e}" for e in self.errors]
        by_kind: dict[str, int] = {}
        for r in rows:
            k = self.devices[r["device"]].kind if r["device"] in self.devices else "?"
            by_kind[k] = by_kind.get(k, 0) + 1
        total_ledger = sum(r["ledger_amount"] or 0 for r in rows)
        total_device = sum(r["device_amount"] or 0 for r in rows)
        total_charged = sum(r["charged"] or 0 for r in rows)
        if not (total_ledger == total_device == total_charged):
            problems.append(f"totals differ: device {total_device}, ledger {total_ledger}, charged {total_charged}")
        ingest = [w.stats for w in self.ingest]
        return {"ok": not problems, "sessions": len(rows), "by_kind": by_kind,
                "offline_sessions": sum(1 for r in rows if r["offline"]),
                "totals": {"device": total_device, "ledger": total_ledger, "charged": total_charged, "cur": "CNY"},
                "orders": len(orders), "flags": [{"kind": f.kind, "device": f.device, "sid": f.sid, "detail": f.detail}
                                                 for f in flags],
                "outages": self.outages, "power_cuts": self.power_cuts, "devices": devices,
                "ingest": {"committed": sum(s["committed"] for s in ingest),
                           "duplicates": sum(s["duplicates"] for s in ingest),
                           "refused": sum(sum(s["refused"].values()) for s in ingest)},
                "problems": problems, "rows": rows}
