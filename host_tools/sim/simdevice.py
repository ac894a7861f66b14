"""One simulated board as the world sees it (host_tools/sim/world.py): its VM, peripherals, the
state read from its console and heartbeats, and the gate that keeps actors off it during a power cut."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from host_tools.sim.peripherals import SimPeripherals


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

