# Trusted time from signed cloud time beacons. The board's own clock is never trusted alone: the
# device counts monotonic ticks from the last verified beacon.
import time


class Clock:
    def __init__(self, rate=1):
        self.base = None      # beacon time, Unix seconds
        self.at = 0           # ticks_ms when it arrived
        # Simulator only (config "sim": {"clock_rate": n}; config.py checks it, a board never
        # sets it): between beacons the clock runs n x real time, so a simulated site can play an
        # hour in a minute while its beacons carry the simulated time. 1 on every real board.
        self.rate = rate

    def trusted(self):
        return self.base is not None

    def now(self):
        """Unix seconds, or None while the clock is untrusted."""
        if self.base is None:
            return None
        return self.base + time.ticks_diff(time.ticks_ms(), self.at) * self.rate // 1000

    def set(self, t):
        self.base = t
        self.at = time.ticks_ms()
