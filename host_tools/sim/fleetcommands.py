"""The command pipeline of a fleet device (host_tools/sim/fleetdevice.py), SPEC §5 in its order:
envelope and MAC -> aud (`wrong_audience`) -> redelivery (the same seq and cti: the first outcome
again with data {"dup": true}, never run twice) -> seq above the last accepted (`stale_seq`) ->
clock trusted (`clock_untrusted`; read-only commands skip the clock checks) -> TTL
(`ttl_exceeded`) -> iat not ahead (`future_iat`) -> `expired` / `not_yet_valid` -> cti not seen
(`replay`) -> the handler. A refusal of what did not authenticate carries neither cti nor cseq
(SPEC §4), so a forged copy of a real command cannot be taken for its outcome.
"""
from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, Callable

from host_tools.protocol import ERROR_CODES, ProtocolError, open_message

READ_ONLY = ("get_state", "sync_time")
FW = "fleet-0.1"


class Bucket:
    """A token bucket: `burst` at once, then one per `every` seconds (SPEC §4, §5 rate limits)."""

    def __init__(self, burst: int, every: float):
        self.burst, self.every = burst, every
        self.tokens = float(burst)
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) / self.every)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class CommandPipeline:
    """Mixed into FleetDevice, whose state it uses."""
    id: str
    kind: str
    key: bytes
    kid: bytes
    seq: int
    boots: int
    cmd_seq: int
    cmd_ttl_s: int
    clock_skew_s: int
    ctis: collections.deque
    answered: collections.OrderedDict
    tariff: dict | None
    policy: dict | None
    allowlist: dict | None
    settings: dict
    waits: dict[str, asyncio.Future]
    loop: asyncio.AbstractEventLoop
    stats: Any
    send: Callable[..., bool]
    now: Callable[[], int | None]
    trusted: Callable[[], bool]
    depth: Callable[[], int]
    reboot: Callable[[], None]
    _ask_time: Callable[[], None]
    _refusals: Bucket | None = None
    _dups: Bucket | None = None

    def _result(self, status: str, cmd: dict | None, data: Any = None) -> None:
        f: dict[str, Any] = {"status": ERROR_CODES[status]}
        if cmd is not None:  # authenticated: bound to this exact command (cti and cseq)
            f.update(cti=cmd["cti"], cseq=cmd["seq"], name=cmd["name"])
        if data is not None:
            f["data"] = data
        self.send("cmd_result", f)
        self.stats.c["cmd_" + status] += 1

    def _on_cmd(self, topic: str, payload: bytes) -> None:
        try:
            cmd = open_message(self.key, self.kid, topic, payload)
        except ProtocolError as e:
            self.stats.c["rx_refused"] += 1
            if self._refusals is None:
                self._refusals = Bucket(8, 1.25)
            if self._refusals.take():  # a flood of forgeries gets few answers (no amplification)
                self._result(e.code, None)  # nothing in it can be believed: no cti, no cseq
            return
        if cmd.get("aud") != self.id:
            return self._result("wrong_audience", cmd)
        key = (cmd["seq"], cmd["cti"])
        first = self.answered.get(key)
        if first is not None:  # a redelivery: never run again; the cloud has the first answer
            if self._dups is None:
                self._dups = Bucket(4, 0.5)
            if self._dups.take():
                self._result(first[0], cmd, {**(first[1] or {}), "dup": True})
            return
        if cmd["seq"] <= self.cmd_seq:
            return self._result("stale_seq", cmd)
        name = cmd["name"]
        now = self.now()
        status, data = "ok", None
        if now is None and name not in READ_ONLY:
            status = "clock_untrusted"
        elif cmd["exp"] - cmd["iat"] > self.cmd_ttl_s:
            status = "ttl_exceeded"
        elif now is not None and name not in READ_ONLY and cmd["iat"] > now + self.clock_skew_s:
            status = "future_iat"
        elif now is not None and name not in READ_ONLY and now >= cmd["exp"]:
            status = "expired"
        elif now is not None and name not in READ_ONLY and "nbf" in cmd and now < cmd["nbf"]:
            status = "not_yet_valid"
        elif cmd["cti"] in self.ctis:
            status = "replay"
        if status == "ok":
            self.cmd_seq = cmd["seq"]  # accepted: persisted before it acts
            self.ctis.append(cmd["cti"])
            status, data = self._handle(name, cmd.get("args") or {})
            self.answered[key] = (status, data)
            while len(self.answered) > 64:
                self.answered.popitem(last=False)
        self._result(status, cmd, data)

    def _handle(self, name: str, a: dict) -> tuple[str, Any]:
        if name == "set_tariff":
            from host_tools.cloud import fees  # the cloud's fee rules: the fleet prices as FEES.md
            try:
                fees.validate(a)
            except fees.FeeError:
                return "bad_args", None
            self.tariff = dict(a)
            return "ok", None
        if name == "set_policy":
            self.policy = dict(a)
            return "ok", None
        if name == "set_allowlist":
            self.allowlist = dict(a)
            return "ok", None
        if name == "set_config":
            self.settings.update(a)
            return "ok", None
        if name in ("auth", "paid"):
            sid = a.get(1)
            if not isinstance(sid, str):
                return "bad_args", None
            w = self.waits.get(sid)
            if w is None or w.done():
                return "ok", {"ignored": sid}
            w.set_result(dict(a) if name == "auth" else {1: sid, 2: True, 3: a.get(2)})
            return "ok", None
        if name == "get_state":
            return "ok", {"jdepth": self.depth(), "seq": self.seq, "cmd_seq": self.cmd_seq, "boots": self.boots,
                          "clock": 1 if self.trusted() else 0, "kind": self.kind, "fw": FW}
        if name == "sync_time":
            self.loop.call_soon(self._ask_time)
            return "ok", None
        if name == "display":
            return "ok", None
        if name == "reboot":
            self.loop.call_later(0.2, self.reboot)
            return "ok", None
        if name in ("open", "cancel_session", "ota"):
            return ("unsupported" if name == "ota" else "refused"), None
        return "unsupported", None
