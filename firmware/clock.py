# Trusted time from signed cloud time beacons. The board's own clock is never trusted alone: the
# device counts monotonic ticks from the last verified beacon.
import time


class Clock:
    def __init__(self):
        self.base = None      # beacon time, Unix seconds
        self.at = 0           # ticks_ms when it arrived

    def trusted(self):
        return self.base is not None

    def now(self):
        """Unix seconds, or None while the clock is untrusted."""
        if self.base is None:
            return None
        return self.base + time.ticks_diff(time.ticks_ms(), self.at) // 1000

    def set(self, t):
        self.base = t
        self.at = time.ticks_ms()
