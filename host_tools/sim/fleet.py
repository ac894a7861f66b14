"""A protocol-level fleet: thousands of simulated devices in a few asyncio processes, against the
site's real cloud side (host_tools/sim/world.py: Mosquitto, registry, SQLite ledger, ingest, the
scripted pay-after provider, the session service, the time responder), reconciled exactly.

    with Fleet(200, scenario="traffic", seconds=30) as f:     # provisions, connects, sets tariffs
        rep = f.run(on_line=print)                           # traffic, drain, reconciliation
    rep["ok"], rep["summary"]

Each device (host_tools/sim/fleetdevice.py) is a real MQTT 3.1.1 client with its own password and
256-bit key, speaking protocol/SPEC.md through the host codec only; what its customers do is in
fleetscenario.py, how its process runs in fleetworker.py. Provisioning is batched: the registry
takes the whole fleet in one transaction, the broker's password file is written once and reloaded
once (Broker.add_users).

The live summary (once a second): devices online, records/s sealed, ack lag (a record's sealing to
the signed ack that covers it, p50/p99), command latency (a get_state sent to a random device
every half second, submit to verified result, p50/p99), auth latency, journal depth.

The reconciliation: the ledger equals every simulated journal exactly. Per device, every record
the device ever journaled is in the ledger under its seq with the very bytes it signed (SHA-256 of
the envelope), its type, sid, amount and currency; the ledger has no record the device did not
journal; every journal is empty (all acknowledged); every session is closed; what the provider
charged equals the ledger's amount for every closed session; the service raised no flag; the
totals of devices, ledger and provider agree to the minor unit.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import random
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import wait as mp_wait
from typing import Any, Callable

from host_tools.sim.fleetscenario import SCENARIOS, account, payers, refused_accounts
from host_tools.sim.fleetworker import rss_kb, worker_main
from host_tools.sim.world import TARIFFS, World

__all__ = ["Fleet", "SCENARIOS", "MIX", "pct"]

MIX = (("gate", 0.4), ("vending", 0.3), ("rental", 0.3))


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(math.ceil(p / 100 * len(s))) - 1)]


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f}"


class Fleet:
    def __init__(self, n: int, *, scenario: str = "traffic", seconds: float = 30.0, rate: float = 60.0,
                 seed: int = 0, procs: int | None = None, every: float | None = None, hb_s: float = 30.0,
                 ramp: int = 500, root: str | None = None, tail: float | None = None, probe_s: float = 0.5,
                 retry_s: float = 15.0, boards: list[tuple[str, str]] | None = None,
                 broker: Any = None, cloud: tuple[str, str | None] | None = None,
                 world_options: dict | None = None, subs: str = "firmware"):
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario is one of {', '.join(SCENARIOS)}")
        self.n = n
        self.scenario = scenario
        self.seconds = seconds
        self.rate = rate
        self.seed = seed
        self.procs = procs or (1 if n <= 1500 else 2)
        # customers per device: one every `every` real seconds (a fleet of thousands: fewer each)
        self.every = every or max(8.0, n / 25.0)
        self.hb_s = hb_s
        self.ramp = ramp
        self.tail = tail if tail is not None else max(6.0, seconds * 0.25)
        self.probe_s = probe_s
        self.subs = subs  # what each device subscribes (fleetdevice.SUBS: "firmware" or "single")
        self.retry_s = retry_s  # a device sends everything unacknowledged again after this long without acks
        # VM boards (the firmware, host_tools/sim/board.py) in the same site, playing the site's
        # scenario (host_tools/sim/scenarios.py) beside the fleet: [("gate-1", "gate"), ...]
        self.boards = list(boards or [])
        self._own_root = root is None
        self.root = root or tempfile.mkdtemp(prefix="edgepay-fleet-")
        # broker: an operator's Mosquitto (world.ExternalBroker, `edgepay broker conf` layout) with
        # the cloud user (name, password) of its cloud listener; default: the site's own
        kw: dict[str, Any] = {}
        if broker is not None:
            kw["broker"] = broker
            kw["cloud_user"], kw["cloud_password"] = cloud or ("cloud", None)
        kw.update(world_options or {})  # e.g. ingest_workers, ingest_options (host_tools/sim/fleetcluster.py)
        self.world = World(self.root, rate=rate, seed=seed, proxy=False, **kw)
        self.devices: list[dict] = []
        self.workers: list[tuple[Any, Any, list[str]]] = []   # (process, conn, device ids)
        self.last: dict[int, dict] = {}                        # worker index -> last stats
        self.counts: dict[str, int] = {}
        self.window: list[dict] = []                           # stats since the last summary line
        self.cmd_lat: list[float] = []
        self.cmd_lat_all: list[float] = []
        self.cmd_failed = 0
        self.history: dict[str, list] = {}
        self.timeline: list[dict] = []
        self._stop_probe = threading.Event()
        self.started = False

    # ---- set-up ------------------------------------------------------------------------------
    def _specs(self) -> list[dict]:
        rng = random.Random(self.seed)
        out = []
        width = len(str(self.n))
        for i in range(self.n):
            r, acc = rng.random(), 0.0
            kind = MIX[-1][0]
            for k, share in MIX:
                acc += share
                if r < acc:
                    kind = k
                    break
            out.append({"id": f"f{kind[0]}-{i:0{width}d}", "kind": kind, "key": os.urandom(32).hex(),
                        "password": os.urandom(12).hex()})
        return out

    def start(self) -> "Fleet":
        w = self.world.start()
        t = time.monotonic()
        self.devices = self._specs()
        w.registry.add_many([(d["id"], bytes.fromhex(d["key"]), d["kind"], f"fleet-{d['kind']}") for d in self.devices])
        w.broker.add_users({d["id"]: d["password"] for d in self.devices})
        for kind in ("gate", "vending", "rental"):
            for p in payers(kind):
                w.svc.bind(p, account(p))
        for a in refused_accounts():
            w.provider.refuse(a)
        # An exit is priced at its request's iat unless that is over max_skew_s from the cloud's
        # clock (then the cloud's time: clock_skew). 300 s is 5 real seconds at 60x, less than a
        # loaded cloud's queueing delay (10,000 devices after a storm: up to 10 s), which flagged
        # clock_skew and priced stays across a fee boundary the device did not. A minute of real
        # time, as the site's command lifetime (World.cmd_ttl).
        w.svc.max_skew_s = max(w.svc.max_skew_s, int(60 * self.rate))
        self.provision_s = time.monotonic() - t
        cfg = {"host": w.host, "port": w.broker.port, "rate": self.rate, "hb_s": self.hb_s,
               "time_s": 600.0, "keepalive": 60, "retry_s": self.retry_s, "cmd_ttl_s": w.cmd_ttl,
               "clock_skew_s": w.skew_s, "seed": self.seed, "ramp": max(1, self.ramp // self.procs),
               "report_s": 1.0, "subs": self.subs,
               # a cluster's nodes, tried in turn (host_tools/sim/fleetcluster.py); None: the one broker
               "brokers": getattr(w.broker, "brokers", None)}
        ctx = multiprocessing.get_context("spawn")
        self.t_spawn = time.monotonic()
        for i in range(self.procs):
            share = self.devices[i::self.procs]
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(child, share, cfg), name=f"fleet-{i}", daemon=True)
            p.start()
            child.close()
            self.workers.append((p, parent, [d["id"] for d in share]))
        if self.boards:
            w.add_devices(self.boards)  # booted while the fleet's processes start and connect
        self.started = True
        return self

    def close(self) -> None:
        self._stop_probe.set()
        for p, conn, _ in self.workers:
            if p.is_alive():
                try:
                    conn.send(("finish",))
                except (OSError, BrokenPipeError):
                    pass
        for p, _, _ in self.workers:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
        self.world.close()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Fleet":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- the workers' reports ----------------------------------------------------------------
    def poll(self, timeout: float = 0.0) -> list[tuple[int, tuple]]:
        conns = {conn: i for i, (_, conn, _) in enumerate(self.workers)}
        got = []
        for c in mp_wait(list(conns), timeout):
            i = conns[c]  # type: ignore[index]
            while c.poll():  # type: ignore[union-attr]
                try:
                    msg = c.recv()  # type: ignore[union-attr]
                except EOFError:
                    break
                got.append((i, msg))
                if msg[0] == "stats":
                    self.last[i] = msg[1]
                    self.window.append(msg[1])
                    for k, v in msg[1]["c"].items():
                        self.counts[k] = self.counts.get(k, 0) + v
                elif msg[0] == "history":
                    self.history.update(msg[1])
        return got

    def total(self, key: str) -> int:
        return sum(s.get(key, 0) for s in self.last.values())

    def send_all(self, msg: tuple) -> None:
        for _, conn, _ in self.workers:
            conn.send(msg)

    def wait_for(self, pred: Callable[[], bool], timeout: float, on_line: Callable[[str], None] | None = None,
                 every: float = 1.0) -> bool:
        deadline = time.monotonic() + timeout
        next_line = time.monotonic() + every
        while time.monotonic() < deadline:
            self.poll(0.2)
            if pred():
                return True
            if on_line and time.monotonic() >= next_line:
                next_line += every
                on_line(self.summary_line())
        return pred()

    # ---- commands: tariffs and the latency probe --------------------------------------------
    def set_tariffs(self, timeout: float = 120.0) -> dict:
        """A set_tariff to every device (the session service prices by it); their outcomes."""
        svc = self.world.svc
        t = time.monotonic()
        # submitted from a few threads: each submit waits for its PUBACK (10,000 in a row took 49 s)
        with ThreadPoolExecutor(8, thread_name_prefix="fleet-tariff") as pool:
            cmds = list(pool.map(lambda d: svc.set_tariff(d["id"], TARIFFS[d["kind"]]), self.devices))
        deadline = time.monotonic() + timeout
        states: dict[str, int] = {}
        for c in cmds:
            c.wait(max(0.0, deadline - time.monotonic()))
            states[c.state.value] = states.get(c.state.value, 0) + 1
            if c.ok:
                self.cmd_lat_all.append(c.history[-1][1] - c.history[0][1])
        return {"seconds": round(time.monotonic() - t, 1), "states": states}

    def _probe(self) -> None:
        rng = random.Random(self.seed + 1)
        cmd = self.world.svc.cmd
        while not self._stop_probe.wait(self.probe_s):
            d = rng.choice(self.devices)["id"]
            t = time.monotonic()
            try:
                r = cmd.send(d, "get_state", timeout=10.0, ttl=self.world.cmd_ttl)
            except Exception:  # noqa: BLE001 - a probe never stops the run
                self.cmd_failed += 1
                continue
            if r.ok:
                lat = time.monotonic() - t
                self.cmd_lat.append(lat)
                self.cmd_lat_all.append(lat)
            else:
                self.cmd_failed += 1

    # ---- the live summary --------------------------------------------------------------------
    def summary_line(self) -> str:
        win, self.window = self.window, []
        recs = sum(s["c"].get("records", 0) for s in win)
        lag = [x for s in win for x in s["ack_lag"]]
        auth = [x for s in win for x in s["auth_lat"]]
        cl, self.cmd_lat = self.cmd_lat, []
        secs = max(1e-9, len(win) / max(1, len(self.workers)))
        ing = self.world.ingest[0].stats if self.world.ingest else {}
        row = {"t": round(time.monotonic() - self.t0, 1), "online": self.total("online"), "devices": self.n,
               "records_s": round(recs / secs, 1), "ack_p50": pct(lag, 50), "ack_p99": pct(lag, 99),
               "cmd_p50": pct(cl, 50), "cmd_p99": pct(cl, 99), "auth_p50": pct(auth, 50),
               "depth": self.total("depth"), "committed": ing.get("committed", 0)}
        self.timeline.append(row)
        return (f"{row['t']:6.1f}s  online {row['online']}/{self.n}  records/s {row['records_s']:.0f}  "
                f"ack lag p50 {_ms(row['ack_p50'])} p99 {_ms(row['ack_p99'])} ms  "
                f"cmd p50 {_ms(row['cmd_p50'])} p99 {_ms(row['cmd_p99'])} ms  auth p50 {_ms(row['auth_p50'])} ms  "
                f"depth {row['depth']}  committed {row['committed']}")

    # ---- the run -----------------------------------------------------------------------------
    def run(self, on_line: Callable[[str], None] | None = None, connect_timeout: float | None = None,
            storm_at: float | None = None, events: list[tuple[float, Callable[["Fleet"], Any]]] | None = None) -> dict:
        """Connect everyone, set tariffs, play the scenario for `seconds`, drain, reconcile.
        `events`: (seconds into the traffic, fn(fleet)) faults of the caller's (a broker restart ...)."""
        say = on_line or (lambda s: None)
        problems: list[str] = []
        if not self.connect(say, connect_timeout):
            problems.append(f"only {self.total('online')}/{self.n} online ({self.total('trusted')} trusted) "
                            f"after {self.connect_s} s")
        tariffs = {}
        if self.scenario != "idle":
            tariffs = self.set_tariffs()
            say(f"tariffs: {tariffs['states']} in {tariffs['seconds']} s")
        self.poll(1.2)
        probe = threading.Thread(target=self._probe, name="fleet-probe", daemon=True)
        probe.start()
        storm = None
        runner = runner_t = None
        if self.boards and self.scenario != "idle":
            from host_tools.sim.scenarios import TAIL, Runner, hour_plan
            span = max(300, int(self.seconds * self.rate) - TAIL)
            runner = Runner(self.world, hour_plan(self.seed, self.boards, span=span, faults=False),
                            self._stop_probe)
            runner_t = threading.Thread(target=runner.run, name="fleet-boards", daemon=True)
            runner_t.start()
        if self.scenario != "idle":
            self.send_all(("traffic", self.seconds, self.seconds + self.tail, self.every))
        if self.scenario == "storm" and storm_at is None:
            storm_at = self.seconds / 2
        end = time.monotonic() + self.seconds
        storm_t = time.monotonic() + storm_at if storm_at is not None else None
        todo = sorted(((time.monotonic() + at, i, fn) for i, (at, fn) in enumerate(events or [])),
                      key=lambda e: e[:2])
        next_line = time.monotonic() + 1.0
        while time.monotonic() < end:
            self.poll(0.2)
            while todo and time.monotonic() >= todo[0][0]:
                _, _, fn = todo.pop(0)
                say(f"event: {getattr(fn, '__name__', fn)}")
                fn(self)
            if storm_t is not None and time.monotonic() >= storm_t:
                storm_t = None
                storm = self.storm(say)
            if time.monotonic() >= next_line:
                next_line += 1.0
                say(self.summary_line())
        # the last sessions close by seconds + tail; then every journal must drain
        self.wait_for(lambda: False, self.tail, say)
        if runner_t is not None:
            self.wait_for(lambda: not runner_t.is_alive(), 120.0, say)  # the boards' plan plays to its end
        self._stop_probe.set()
        drained = self.drain(say)
        if not drained:
            problems.append(f"journals did not drain: depth {self.total('depth')}")
        boards = None
        if self.boards:
            if not self.world.drain(30):
                problems.append("the VM boards' journals did not drain")
            boards = self.world.reconcile(runner.expected() if runner else None)
            if runner is not None:
                boards["problems"] += runner.problems()
            problems += [f"VM board {p}" for p in boards["problems"]]
        self.finish()
        rep = self.reconcile()
        if boards is not None:
            rep["boards"] = {k: boards[k] for k in ("sessions", "by_kind", "totals", "devices", "problems")}
        rep["problems"] = problems + rep["problems"]
        rep["ok"] = not rep["problems"]
        rep.update(connect_s=self.connect_s, provision_s=round(self.provision_s, 1), tariffs=tariffs, storm=storm,
                   seconds=round(time.monotonic() - self.t0, 1), scenario=self.scenario, devices=self.n,
                   procs=self.procs, counts=dict(sorted(self.counts.items())),
                   commands={"p50_ms": _r(pct(self.cmd_lat_all, 50)), "p99_ms": _r(pct(self.cmd_lat_all, 99)),
                             "n": len(self.cmd_lat_all), "failed": self.cmd_failed},
                   rss_kb={"workers": [s.get("rss_kb", 0) for s in self.last.values()],
                           "broker": rss_kb(self.world.broker.proc.pid)
                           if getattr(self.world.broker, "proc", None) else 0})
        return rep

    def connect(self, say: Callable[[str], None] | None = None, timeout: float | None = None) -> bool:
        """Wait until every device is online with a trusted clock; True if they all are."""
        say = say or (lambda s: None)
        self.t0 = time.monotonic()
        up = self.wait_for(lambda: self.total("online") >= self.n and self.total("trusted") >= self.n,
                           timeout or max(30.0, self.n / 100), say)
        self.connect_s = round(time.monotonic() - self.t_spawn, 1)  # from the processes' start
        say(f"connected: {self.total('online')}/{self.n} online, {self.total('trusted')} with trusted time "
            f"in {self.connect_s} s")
        return up

    def flood(self, seconds: float, cap: int = 2000, say: Callable[[str], None] | None = None) -> None:
        """Every device journals records as fast as the broker takes them for `seconds` (the MQTT
        window of 8 is the only brake, and `cap` unacknowledged records a device)."""
        self.send_all(("flood", seconds, cap))
        self.wait_for(lambda: False, seconds, say)

    def finish(self) -> None:
        """Stop every device (offline status, DISCONNECT) and collect the journals' histories."""
        self.send_all(("finish",))
        self.wait_for(lambda: len(self.history) >= self.n, 30.0)

    def storm(self, say: Callable[[str], None], jitter: float = 1.0, timeout: float | None = None) -> dict:
        """Every device drops its connection within `jitter` s and reconnects: how long until all are back."""
        before = self.counts.get("connects", 0)
        t = time.monotonic()
        say(f"reconnect storm: {self.n} devices drop their connections")
        self.send_all(("storm", jitter))
        ok = self.wait_for(lambda: self.counts.get("connects", 0) - before >= self.n
                           and self.total("online") >= self.n, timeout or max(30.0, self.n / 50), say)
        out = {"recovered": ok, "seconds": round(time.monotonic() - t, 1),
               "reconnects": self.counts.get("connects", 0) - before}
        say(f"storm over: {out}")
        return out

    def drain(self, say: Callable[[str], None], timeout: float = 60.0) -> bool:
        w = self.world

        def idle() -> bool:
            return (self.total("depth") == 0 and self.total("busy") == 0
                    and all(x.stats["queued"] == 0 and x.stats["held_now"] == 0 for x in w.ingest)
                    and not w.svc._pending)
        ok = self.wait_for(idle, timeout, say)
        time.sleep(0.5)  # settles run in the service's pool after the commit
        return ok

    # ---- the reconciliation ------------------------------------------------------------------
    def reconcile(self, check_sessions: bool = True) -> dict:
        """The ledger against every journal (host_tools/sim/fleetreconcile.py)."""
        from host_tools.sim.fleetreconcile import reconcile
        return reconcile(self, check_sessions)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)
