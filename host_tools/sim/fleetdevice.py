"""One protocol-level simulated device of the fleet (host_tools/sim/fleet.py): a real MQTT 3.1.1
client with its own credentials and key that speaks protocol/SPEC.md through the host codec
(host_tools/protocol) only. It is a load generator that obeys SPEC, not firmware: the firmware
runs on the VM (host_tools/sim/board.py).

What it does, as SPEC says:
- connects as its id (persistent session, will = a retained status online:false, §1), subscribes
  dn/cmd (QoS 1), dn/ack (QoS 1), dn/time (QoS 0) as the firmware does (`subs="firmware"`), or
  the one wildcard dn/+ (QoS 1; a QoS 0 time answer still arrives at QoS 0) with `subs="single"`:
  on NATS each QoS 1 subscription is a replicated JetStream consumer, so one instead of two
  (docs/cluster.md "Subscriptions"); once per boot a hello, at every connect the retained status
  online:true and a time_req;
- heartbeats every `hb_s` (QoS 0) with its journal depth and clock state;
- time by challenge (§5): a fresh 8-byte nonce per request, at each connect, then every `time_s`
  while trusted, after 2, 4, 8 ... s while not; only a verified answer for it echoing the
  outstanding nonce within 5 s sets the clock (iat + rtt/2), and the nonce is then spent;
- records (§6): each sealed once, the chain link prev = SHA-256(previous payload)[:16] (16 zero
  bytes first), kept in an in-memory journal and sent until a verified ack covers it (an MQTT
  PUBACK acknowledges nothing); everything unacknowledged again at each connect, on `resend`, and
  when acks make no progress for `retry_s`;
- commands (§5 pipeline in its order): MAC, aud, redelivery (same seq and cti: the first outcome
  again with data {"dup": true}), seq, clock, TTL, future iat, exp/nbf, cti replay, handler;
  refusals of what did not authenticate carry no cti/cseq;
- auth requests answered by the cloud's `auth` / `paid` commands.

Every number a device sends comes from one counter; its clock runs `rate` x real time like the
site's (host_tools/sim/simclock.py). The apps (gate, vending, rental) are in fleetscenario.py.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import random
import time
from typing import Any

from host_tools.protocol import ProtocolError, build_mac0, encode_payload, open_message
from host_tools.protocol import topic as topic_for
from host_tools.sim.fleetcommands import FW, CommandPipeline
from host_tools.sim.fleetmqtt import AsyncMQTT

ZERO_PREV = bytes(16)
CAPS = ["rec", "fleet"]
# what a device subscribes at each connect (SPEC §1 topics; the ACL allows any of dn/#):
# "firmware" as firmware/agent.py, uplink.py and clock.py do (two QoS 1 subscriptions); "single"
# one dn/+ at QoS 1 (commands and acks at QoS 1, time answers still at the QoS 0 they are sent
# with). Not dn/#: NATS subscribes `dn` and `dn.>` for it, two consumers again.
SUBS = {"firmware": lambda dn: [(dn + "cmd", 1), (dn + "ack", 1), (dn + "time", 0)],
        "single": lambda dn: [(dn + "+", 1)]}


class Stats:
    """Counters of one worker process, summed over its devices (sent to the parent each second)."""

    def __init__(self) -> None:
        self.c: collections.Counter = collections.Counter()
        self.ack_lag: list[float] = []     # seconds from a record's sealing to the ack covering it
        self.auth_lat: list[float] = []    # seconds from an auth_req to its answer

    def take(self) -> dict:
        out = {"c": dict(self.c), "ack_lag": self.ack_lag, "auth_lat": self.auth_lat}
        self.c = collections.Counter()
        self.ack_lag, self.auth_lat = [], []
        return out


class FleetDevice(CommandPipeline):
    def __init__(self, spec: dict, host: str, port: int, loop: asyncio.AbstractEventLoop, stats: Stats, *,
                 rate: float = 1.0, hb_s: float = 60.0, time_s: float = 600.0, keepalive: int = 60,
                 retry_s: float = 15.0, cmd_ttl_s: int = 600, clock_skew_s: int = 120, seed: int = 0,
                 brokers: list[tuple[str, int]] | None = None, subs: str = "firmware"):
        self.id: str = spec["id"]
        self.kind: str = spec["kind"]
        self.key = bytes.fromhex(spec["key"])
        self.kid = f"{self.id}:1".encode()
        self.password: str = spec["password"]
        self.loop = loop
        self.stats = stats
        self.rate = rate
        self.hb_s, self.time_s, self.retry_s = hb_s, time_s, retry_s
        self.cmd_ttl_s, self.clock_skew_s = cmd_ttl_s, clock_skew_s
        self.rng = random.Random(f"{seed}:{self.id}")
        self.t_up = f"v1/dev/{self.id}/up/"
        self.t_dn = f"v1/dev/{self.id}/dn/"
        if subs not in SUBS:
            raise ValueError(f"subs is one of {', '.join(SUBS)}")
        self.subs = SUBS[subs](self.t_dn)
        self.mark_seq = 0                  # the last probe record's seq (bench/fleet.py failover)
        self.seq = 0                       # everything this device sends is numbered from here
        self.boots = 1
        self.up_mono = time.monotonic()
        # the journal: seq -> (raw envelope, sealed at (monotonic)); everything ever journaled is
        # also in `history` for the final reconciliation (seq, sha256(raw)[:16], type, sid, amount, cur)
        self.journal: collections.OrderedDict[int, tuple[bytes, float]] = collections.OrderedDict()
        self.history: list[tuple] = []
        self.last_hash = ZERO_PREV
        self.acked = 0
        self.sent = 0
        self.progress = time.monotonic()
        # clock (untrusted until a time exchange)
        self._t_base: float | None = None
        self._m_base = 0.0
        self._nonce: bytes | None = None
        self._nonce_at = 0.0
        self._time_wake = asyncio.Event()
        # commands
        self.cmd_seq = 0
        self.ctis: collections.deque = collections.deque(maxlen=64)
        self.answered: collections.OrderedDict[tuple[int, bytes], tuple[str, Any]] = collections.OrderedDict()
        self.tariff: dict | None = None
        self.settings: dict = {}
        self.policy: dict | None = None
        self.allowlist: dict | None = None
        self.waits: dict[str, asyncio.Future] = {}   # sid -> the auth/paid answer awaited
        self.online_since: float | None = None
        self.running = True
        self._link_wake = asyncio.Event()
        self._hello_sent = False
        # the broker addresses tried in turn (a cluster's nodes), as the firmware's config "brokers":
        # a refused or timed-out connect moves to the next at once; a lost connection is retried on
        # the same broker first (it holds the session), then on the next
        self.brokers = [(str(h), int(p)) for h, p in (brokers or [(host, port)])]
        self.broker_i = self.rng.randrange(len(self.brokers)) if brokers else 0
        host, port = self.brokers[self.broker_i]
        will = self._seal("status", {"online": False})
        self.mq = AsyncMQTT(loop, self.id, self.password, host, port, keepalive=keepalive,
                            will=(self.t_up + "status", will, 1, True), on_message=self._on_message,
                            on_up=self._on_up, on_down=self._on_down)
        self.tasks: list[asyncio.Task] = []

    # ---- time --------------------------------------------------------------------------------
    def now(self) -> int | None:
        if self._t_base is None:
            return None
        return int(self._t_base + (time.monotonic() - self._m_base) * self.rate)

    def trusted(self) -> bool:
        return self._t_base is not None

    # ---- sending -----------------------------------------------------------------------------
    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def _seal(self, type_name: str, fields: dict) -> bytes:
        msg = {"type": type_name, "seq": self._next(), **fields}
        now = self.now()
        if now is not None and type_name in ("hello", "status", "heartbeat", "event", "alarm", "cmd_result",
                                             "auth_req"):
            msg.setdefault("iat", now)
        t = topic_for(self.id, type_name)
        return build_mac0(self.key, self.kid, t, encode_payload(msg, t))

    def send(self, type_name: str, fields: dict, qos: int = 1, retain: bool = False) -> bool:
        raw = self._seal(type_name, fields)
        self.stats.c["sent_" + type_name] += 1
        return self.mq.publish(topic_for(self.id, type_name), raw, qos, retain)

    def record(self, type_name: str, fields: dict) -> int:
        """Seal a money record once, journal it, send it until acknowledged (SPEC §6)."""
        seq = self._next()
        msg = {"type": type_name, "seq": seq, "prev": self.last_hash, **fields}
        t = self.t_up + "rec"
        payload = encode_payload(msg, t)
        raw = build_mac0(self.key, self.kid, t, payload)
        self.last_hash = hashlib.sha256(payload).digest()[:16]
        self.journal[seq] = (raw, time.monotonic())
        self.history.append((seq, hashlib.sha256(raw).digest()[:16].hex(), type_name, fields.get("sid"),
                             fields.get("amount"), fields.get("cur")))
        self.stats.c["records"] += 1
        self.pump()
        return seq

    def pump(self) -> None:
        if not self.mq.up:
            return
        t = self.t_up + "rec"
        for seq, (raw, _) in self.journal.items():
            if seq <= self.sent:
                continue
            if not self.mq.publish(t, raw, 1):
                return
            self.stats.c["record_sends"] += 1
            self.sent = seq

    def depth(self) -> int:
        return len(self.journal)

    # ---- the link ----------------------------------------------------------------------------
    def start(self) -> None:
        for coro in (self._link(), self._heartbeats(), self._time_loop(), self._uplink_tick()):
            self.tasks.append(self.loop.create_task(coro))

    async def _link(self) -> None:
        backoff = 0.2
        failed = 0   # connects failed in a row
        while self.running:
            if not self.mq.up:
                ok = await self.mq.connect()
                if not ok:
                    self.stats.c["connect_failed"] += 1
                    failed += 1
                    if len(self.brokers) > 1:
                        self.broker_i = (self.broker_i + 1) % len(self.brokers)
                        self.mq.host, self.mq.port = self.brokers[self.broker_i]
                        self.stats.c["broker_moves"] += 1
                        if failed % len(self.brokers):  # the usual backoff once every address has failed
                            await asyncio.sleep(0.05 * self.rng.random())
                            continue
                    await asyncio.sleep(backoff * (0.5 + self.rng.random()))
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.2
                failed = 0
            self._link_wake.clear()
            await self._link_wake.wait()

    def _on_up(self, session_present: bool) -> None:
        self.stats.c["connects"] += 1
        self.online_since = time.monotonic()
        self.mq.subscribe(self.subs)
        if not self._hello_sent:
            self.send("hello", {"fw": FW, "board": f"fleet-{self.kind}", "reset": "power_on", "caps": CAPS,
                                "kind": self.kind, "boots": self.boots})
            self._hello_sent = True
        self.send("status", {"online": True}, 1, True)
        self.sent = self.acked  # everything unacknowledged again (SPEC §6)
        self.progress = time.monotonic()
        self._ask_time()
        self.pump()

    def _on_down(self) -> None:
        self.stats.c["disconnects"] += 1
        self.online_since = None
        self._nonce = None
        self._link_wake.set()

    def drop(self) -> None:
        """Lose the connection (no DISCONNECT: the broker publishes the will); reconnects itself."""
        self.mq.drop()
        if self.mq.up:  # paho did not notice yet
            self.mq.up = False
            self._on_down()

    async def stop(self) -> None:
        """An orderly stop: offline status (retained), DISCONNECT (no will)."""
        self.running = False
        if self.mq.up:
            self.send("status", {"online": False}, 1, True)
            await asyncio.sleep(0.05)
            self.mq.disconnect()
        for t in self.tasks:
            t.cancel()
        self._link_wake.set()

    async def _heartbeats(self) -> None:
        await asyncio.sleep(self.rng.uniform(0, self.hb_s))  # spread the fleet's heartbeats
        while self.running:
            if self.mq.up:
                self.send("heartbeat", {"uptime": int(time.monotonic() - self.up_mono), "heap": 40000,
                                        "jdepth": self.depth(), "clock": 1 if self.trusted() else 0}, 0)
                self.stats.c["heartbeats"] += 1
            await asyncio.sleep(self.hb_s)

    async def _uplink_tick(self) -> None:
        while self.running:
            await asyncio.sleep(1.0 + self.rng.random())
            if self.journal and time.monotonic() - self.progress > self.retry_s:
                # no ack progress: the cloud may never have had them (a broker crash after PUBACK)
                self.sent = self.acked
                self.progress = time.monotonic()
                self.stats.c["resend_all"] += 1
                self.pump()

    # ---- time by challenge (SPEC §5) ---------------------------------------------------------
    def _ask_time(self) -> None:
        if not self.mq.up:
            return
        self._nonce = os.urandom(8)
        self._nonce_at = time.monotonic()
        self.send("time_req", {"nonce": self._nonce}, 0)

    async def _time_loop(self) -> None:
        wait = 2.0
        while self.running:
            try:
                await asyncio.wait_for(self._time_wake.wait(), wait)
            except asyncio.TimeoutError:
                pass
            self._time_wake.clear()
            if self.trusted():
                wait = self.time_s
                if time.monotonic() - self._nonce_at < self.time_s - 0.5:
                    continue
            else:
                wait = min(wait * 2, self.time_s)
            self._ask_time()

    def _on_time(self, m: dict) -> None:
        at = time.monotonic()
        if m.get("aud") != self.id or self._nonce is None or m.get("nonce") != self._nonce:
            self.stats.c["time_refused"] += 1
            return
        rtt = at - self._nonce_at
        self._nonce = None  # spent
        if rtt > 5.0:
            self.stats.c["time_late"] += 1
            return
        self._t_base = m["iat"] + rtt * self.rate / 2
        self._m_base = at
        self.stats.c["time_set"] += 1

    # ---- downlink ----------------------------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes) -> None:
        suffix = topic[len(self.t_dn) - 3:]
        try:
            if suffix == "dn/cmd":
                self._on_cmd(topic, payload)
                return
            m = open_message(self.key, self.kid, topic, payload)
        except ProtocolError:
            self.stats.c["rx_refused"] += 1
            return
        if m["type"] == "ack":
            self._on_ack(m)
        elif m["type"] == "time":
            self._on_time(m)

    def _on_ack(self, m: dict) -> None:
        if m.get("aud") != self.id:
            self.stats.c["rx_refused"] += 1
            return
        upto = m["upto"]
        self.stats.c["acks"] += 1
        if upto > self.acked:
            now = time.monotonic()
            for seq in [s for s in self.journal if s <= upto]:
                _, at = self.journal.pop(seq)
                self.stats.ack_lag.append(now - at)
                self.stats.c["acked"] += 1
            self.acked = upto
            self.progress = now
        if m.get("quarantined"):
            self.send("alarm", {"code": "record_quarantined", "detail": {"seqs": list(m["quarantined"])},
                                "active": True})
        if m.get("resend") or self.sent < self.acked:
            self.sent = self.acked
        self.pump()

    def reboot(self) -> None:
        """A reset: RAM is lost (clock, nonce, waits), the journal is on 'flash' and survives."""
        self.boots += 1
        self._t_base = None
        self._nonce = None
        self._hello_sent = False
        for w in self.waits.values():
            if not w.done():
                w.cancel()
        self.waits.clear()
        self.drop()

    # ---- asking the cloud --------------------------------------------------------------------
    async def authorize(self, sid: str, payer: str, purpose: str, timeout: float = 10.0, tries: int = 3,
                        **fields: Any) -> dict | None:
        """An auth_req; the cloud's `auth` args, or None if no answer came. A retry is the same
        request again under a new seq (the service re-runs its idempotent decision) and the same
        iat: the cloud prices an exit at the request's iat, so a retry 20 s later must not move it."""
        f = {"sid": sid, "payer": payer, "purpose": purpose, **{k: v for k, v in fields.items() if v is not None}}
        now = self.now()
        if now is not None:
            f.setdefault("iat", now)
        for _ in range(tries):
            waited = 0.0
            while not self.mq.up and waited < timeout:  # offline: the request waits for the link
                await asyncio.sleep(0.2)
                waited += 0.2
            fut = self.loop.create_future()
            self.waits[sid] = fut
            t0 = time.monotonic()
            self.send("auth_req", f)
            try:
                ans = await asyncio.wait_for(asyncio.shield(fut), timeout)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self.stats.c["auth_timeout"] += 1
                continue
            finally:
                self.waits.pop(sid, None)
            self.stats.auth_lat.append(time.monotonic() - t0)
            return ans
        return None
