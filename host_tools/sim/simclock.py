"""The simulated clock of a site (host_tools/sim/world.py): Unix time that runs `rate` x real time."""
from __future__ import annotations

import calendar
import threading
import time

START = calendar.timegm((2025, 6, 2, 8, 0, 0))  # Monday 2 June 2025, 08:00 UTC


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
