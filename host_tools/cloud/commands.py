"""The cloud command client: sign a command, publish it, and follow it to its outcome.

States (after AWS IoT Commands and ThingsBoard persistent RPC): CREATED -> SENT (the broker took
it) -> SUCCEEDED / FAILED / REJECTED / EXPIRED from the device's signed result, correlated by
command id (cti) and never by arrival order; TIMED_OUT when no result came within the call's own
timeout (EXPIRED instead if the command's expiry has passed by then, so it can no longer run).
A result that arrives after the call ended is kept as `late` on the command: never dropped silently.
"""
from __future__ import annotations

import asyncio
import enum
import heapq
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from host_tools.cloud.mqtt import BrokerSettings, CloudMQTT
from host_tools.cloud.registry import Device, Registry, RegistryError
from host_tools.cloud.timeserver import TimeServer
from host_tools.protocol import ERROR_NAMES, ProtocolError, seal
from host_tools.protocol import topic as topic_for

log = logging.getLogger("edgepay.commands")


class State(str, enum.Enum):
    CREATED = "CREATED"
    SENT = "SENT"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    TIMED_OUT = "TIMED_OUT"
    EXPIRED = "EXPIRED"

    @property
    def final(self) -> bool:
        return self not in (State.CREATED, State.SENT)


# Device result codes -> outcome. Refusals before the handler ran (nothing actuated) are REJECTED;
# a handler that ran and failed (or an interrupted one: outcome unknown) is FAILED.
FAILED_CODES = {"failed", "busy"}
LATE_GRACE_S = 600  # after a command's expiry, how long a late result is still correlated


def state_for(code: str) -> State:
    if code == "ok":
        return State.SUCCEEDED
    if code == "expired":
        return State.EXPIRED
    if code in FAILED_CODES:
        return State.FAILED
    return State.REJECTED


@dataclass
class Command:
    device: str
    name: str
    args: dict | None
    cti: bytes
    seq: int
    exp: int
    state: State = State.CREATED
    code: str | None = None           # the device's result code name
    data: Any = None                  # the device's result data
    history: list[tuple[State, float]] = field(default_factory=list)
    late: dict | None = None          # a result that arrived after the call had ended
    nbf: int | None = None            # not before (Unix seconds)
    resigned: int = 0                 # times re-signed after a stale_seq refusal
    key_version: int | None = None    # signed under this key version (None: the device's current)
    clock: Callable[[], float] = field(default=time.time, repr=False)  # the signer's (exp is on it)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _waiters: list[Callable[[], None]] = field(default_factory=list, repr=False)  # asend's wake-ups

    def _to(self, state: State) -> None:
        self.state = state
        self.history.append((state, time.time()))
        if state.final:
            self._done.set()
            for w in self._waiters:
                w()

    @property
    def ok(self) -> bool:
        return self.state is State.SUCCEEDED

    def wait(self, timeout: float) -> "Command":
        if not self._done.wait(timeout):
            self._finish_unanswered()
        return self

    def _finish_unanswered(self) -> None:
        if not self.state.final:
            self._to(State.EXPIRED if self.clock() >= self.exp else State.TIMED_OUT)


def _left(deadline: float) -> float:
    """Seconds until `deadline` (time.monotonic), never negative: what remains of a call's timeout."""
    return max(0.0, deadline - time.monotonic())


class CommandClient:
    """Sync and asyncio use; one paho connection; many commands in flight, correlated by cti.

    `clock` signs iat and exp (a simulated site's SimClock: its devices keep that time). A device
    refuses a command whose exp - iat is over its `cmd_ttl_s` (600 s unless configured):
    `ttl_exceeded`, and one whose iat is ahead of its clock by over `clock_skew_s`: `future_iat`.
    """

    def __init__(self, registry: Registry, broker: BrokerSettings, *, clock: Callable[[], float] = time.time):
        self.registry = registry
        self.clock = clock
        self.time_server: TimeServer | None = None
        self.mqtt = CloudMQTT(broker)
        self._pending: dict[bytes, Command] = {}
        self._keys: dict[str, Device] = {}  # device -> as read at its last submit (results verify with it)
        # (time it may be forgotten, cti), soonest first: pruning pops only what is due, never
        # scans the rest (a scan per command grew with every command kept: 6 ms each at 3,000)
        self._forget: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()
        self._order = threading.Lock()  # seq taken and message enqueued together
        self.unverified_results = 0
        self.unattributed_refusals = 0  # device refusals of messages it could not authenticate
        self.mqtt.subscribe("v1/dev/+/up/res", self._on_result, qos=1)

    def connect(self, timeout: float = 10.0) -> "CommandClient":
        self.mqtt.connect(timeout)
        return self

    def close(self) -> None:
        self.mqtt.close()

    def __enter__(self) -> "CommandClient":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- sending
    def submit(self, device: str, name: str, args: dict | None = None, *, ttl: int = 60,
               nbf: int | None = None, publish_timeout: float = 10.0, under_next: bool = False) -> Command:
        """Sign and send; returns once the broker has the command (SENT) or `publish_timeout`.
        under_next: sign it under the device's next key (a key rotation's confirmation, SPEC §11)."""
        cmd, info = self._submit(device, name, args, ttl, nbf, under_next)
        if self.mqtt.wait_published(info, publish_timeout):
            self._sent(cmd)
        return cmd

    def _submit(self, device: str, name: str, args: dict | None, ttl: int, nbf: int | None,
                under_next: bool = False):
        dev = self.registry.get(device)  # unknown device: RegistryError before anything is created
        if not dev.active:
            raise RegistryError(f"device {device!r} is {dev.status}: it is sent nothing")
        version = None
        if under_next:
            nxt = self.registry.next_key(device)
            if nxt is None:
                raise RegistryError(f"device {device!r} has no next key (no rotation under way)")
            version = nxt.version
        self._keys[device] = dev  # the result is verified with it (refreshed at every submit)
        now = int(self.clock())
        cmd = Command(device, name, args, b"", 0, now + ttl, nbf=nbf, clock=self.clock, key_version=version)
        cmd._to(State.CREATED)
        with self._lock:
            self._prune(now)
        return cmd, self._sign_and_publish(cmd, dev)

    def _sent(self, cmd: Command) -> None:
        with self._lock:
            if cmd.state is State.CREATED:
                cmd._to(State.SENT)

    def _sign_and_publish(self, cmd: Command, dev: Device | None = None):
        """Take a seq, sign and hand the command to paho in one step, so one client's commands
        reach the device in seq order (a lower seq arriving second would be refused stale_seq)."""
        dev = dev or self.registry.get(cmd.device)
        key, kid = dev.key, dev.kid
        if cmd.key_version is not None and cmd.key_version != dev.key_version:
            kv = self.registry.key_version(cmd.device, cmd.key_version)
            if kv is None or kv.state != "next":
                raise RegistryError(f"{cmd.device}: key version {cmd.key_version} is "
                                    f"{kv.state if kv else 'unknown'}, not next")
            key, kid = kv.key, kv.kid
        t = topic_for(cmd.device, "command")
        with self._order:
            cmd.cti, cmd.seq = os.urandom(12), self.registry.next_seq(cmd.device)
            msg: dict[str, Any] = {"type": "command", "aud": cmd.device, "exp": cmd.exp, "iat": int(self.clock()),
                                   "cti": cmd.cti, "seq": cmd.seq, "name": cmd.name}
            if cmd.nbf is not None:
                msg["nbf"] = cmd.nbf
            if cmd.args:
                msg["args"] = cmd.args
            sealed = seal(key, kid, t, msg)  # ProtocolError (e.g. too_large) before it is pending
            with self._lock:
                self._pending[cmd.cti] = cmd  # before it goes: a result may come back at once
                heapq.heappush(self._forget, (cmd.exp + LATE_GRACE_S, cmd.cti))
            return self.mqtt.enqueue(t, sealed, qos=1)

    def _resign(self, cmd: Command) -> None:
        """SPEC §5: refused stale_seq means nothing ran (another cloud sender's command overtook
        this one): sign it again with a new seq and cti."""
        cmd.resigned += 1
        self.mqtt.wait_published(self._sign_and_publish(cmd), 10.0)

    def _prune(self, now: float) -> None:
        """Forget finished commands once even a late result could no longer come (past exp + grace);
        one still unfinished then (submitted, never waited for) is looked at again a grace later."""
        f = self._forget
        while f and f[0][0] < now:
            _, cti = heapq.heappop(f)
            cmd = self._pending.get(cti)
            if cmd is None:
                continue
            if cmd.state.final:
                del self._pending[cti]
            else:
                heapq.heappush(f, (now + LATE_GRACE_S, cti))

    def send(self, device: str, name: str, args: dict | None = None, *, timeout: float = 10.0,
             ttl: int = 60, nbf: int | None = None, under_next: bool = False) -> Command:
        """Send and wait for the outcome: `timeout` seconds in all, the broker's PUBACK included.
        under_next: as submit()."""
        deadline = time.monotonic() + timeout
        cmd, info = self._submit(device, name, args, ttl, nbf, under_next)
        # One wait, for the outcome: a result implies the broker had it (SENT first, _on_result);
        # only a call that ends without one asks whether the broker ever acknowledged it.
        if not cmd._done.wait(_left(deadline)) and info.is_published():
            self._sent(cmd)
        return self._settle(cmd)

    async def asend(self, device: str, name: str, args: dict | None = None, *, timeout: float = 10.0,
                    ttl: int = 60, nbf: int | None = None) -> Command:
        """send() for asyncio: one deadline `timeout` seconds away for the outcome. The signing (a
        registry read and a counter write) runs on the loop when the registry is a local SQLite
        file (tens of microseconds: less than the two thread hops of the executor), else on the
        loop's executor (PostgreSQL: a network round trip); the wait is a future the result's
        arrival resolves (no thread per call)."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        if getattr(self.registry, "local", False):
            cmd, info = self._submit(device, name, args, ttl, nbf)
        else:
            cmd, info = await loop.run_in_executor(None, self._submit, device, name, args, ttl, nbf)
        fut: asyncio.Future = loop.create_future()

        def wake() -> None:  # on paho's thread, under self._lock (every _to runs under it)
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(None))
        with self._lock:
            if cmd.state.final:
                fut.set_result(None)
            else:
                cmd._waiters.append(wake)
        try:
            await asyncio.wait_for(fut, _left(deadline))
        except asyncio.TimeoutError:
            if info.is_published():  # as send(): only a call ending without a result asks
                self._sent(cmd)
        return self._settle(cmd)

    def _settle(self, cmd: Command) -> Command:
        with self._lock:
            cmd._finish_unanswered()
        return cmd

    def serve_time(self) -> TimeServer:
        """Answer devices' time requests on this connection (SPEC §5: a device trusts its clock only
        after a signed answer to its own nonce); once per client, with the client's clock."""
        if self.time_server is None:
            self.time_server = TimeServer(self.registry, self.mqtt, clock=self.clock)
        return self.time_server

    def sync_time(self, device: str, timeout: float = 10.0, ttl: int = 60) -> bool:
        """Have `device` ask the time now (the `sync_time` command) and answer it: True once the
        answer went out. The device still checks the answer (its nonce, the round trip)."""
        ts = self.serve_time()
        n = ts.count(device)
        deadline = time.monotonic() + timeout
        if not self.send(device, "sync_time", timeout=timeout, ttl=ttl).ok:
            return False
        return ts.wait_answered(device, _left(deadline), after=n)

    # -- results
    def _on_result(self, topic: str, payload: bytes) -> None:
        device = topic.split("/")[2]
        try:
            dev = self._keys.get(device)
            try:
                if dev is None:
                    raise ProtocolError("bad_mac", "no key at hand")
                # by the kid it names (SPEC §11): the next key's first result makes it current
                res, now_dev = self.registry.open_uplink_message(dev, topic, payload)
            except ProtocolError as e:
                if e.code not in ("bad_kid", "bad_mac"):
                    raise
                fresh = self.registry.get(device)  # not sent to lately, or its key changed since
                if dev is not None and (fresh.key, fresh.kid) == (dev.key, dev.kid):
                    raise
                res, now_dev = self.registry.open_uplink_message(fresh, topic, payload)
            if now_dev is not dev:
                self._keys[device] = now_dev
        except (ProtocolError, Exception) as e:  # never correlate what we cannot verify
            self.unverified_results += 1
            log.warning("unverified result on %s: %s", topic, getattr(e, "code", e))
            return
        cti = res.get("cti")
        if cti is None:
            # The device refused something it could not authenticate (SPEC §4): it names no
            # command, so it changes none, whatever cti the forged message carried.
            self.unattributed_refusals += 1
            return
        with self._lock:
            cmd = self._pending.get(cti)
            # Bound to this exact command: its cti and the seq it was signed with (a result for
            # an earlier signing of a re-signed command, or for another device, changes nothing).
            if cmd is None or cmd.device != device or res.get("cseq") != cmd.seq:
                return
            code = ERROR_NAMES.get(res["status"], str(res["status"]))
            if code == "stale_seq" and not cmd.state.final and cmd.resigned < 3:
                threading.Thread(target=self._resign, args=(cmd,), daemon=True).start()
                return
            if cmd.state.final:
                cmd.late = res  # after our timeout: keep it, don't rewrite the outcome
                return
            if cmd.state is State.CREATED:
                cmd._to(State.SENT)  # a result: the broker had it (its PUBACK may still be coming)
            cmd.code, cmd.data = code, res.get("data")
            cmd._to(state_for(code))
