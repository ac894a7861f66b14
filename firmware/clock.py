# Trusted time by challenge (SPEC §5). The device asks the cloud for the time with a fresh nonce
# (time_req on up/time); only a signed answer that echoes the outstanding nonce within RTT_MS may
# set or step the clock, back as well as forward. Unsolicited or replayed beacons cannot move it,
# and nothing persisted does either: after a reboot the clock is untrusted until an exchange works.
# Between exchanges the device counts monotonic ticks.
# The TLS time floor is not that clock: before a TLS connect an RTC below the floor (the last
# trusted time kept on flash, the build time below it) is set to it, for mbedtls's certificate
# date checks only (rtc(); SPEC §5).
import asyncio
import os
import time

from micropython import const

import hal
import store

_RTT_MS = const(5000)  # a slower round trip could hide a delayed answer: its time is refused
# The floor of floors: no board runs before its firmware was built (Unix s, 2026-12-04), a
# literal like agent.FW_VERSION (neither is stamped by the host) and bumped with it by a release.
BUILT = const(1796342400)
_DAY = const(86400)  # the trusted time kept on flash at most once a day (flash wear)


def log(*a):  # the device's log lines, stamped with its ticks (ms since boot)
    print("%d" % time.ticks_ms(), *a)


class Clock:
    def __init__(self, rate=1, settings=None):
        self.base = None      # the cloud's time, Unix seconds
        self.at = 0           # ticks_ms it stands for
        self.nonce = None     # the outstanding time_req's nonce, single use
        self.asked = 0        # ticks_ms it was sent
        self.due = 0          # seconds until the next time_req (run)
        self.settings = settings  # live: cmd_ttl_s and clock_skew_s (commands.py), time_s
        # Simulator only (config "sim": {"clock_rate": n}; config.py checks it, a board never
        # sets it): the clock runs n x real time, so a simulated site can play an hour in a
        # minute while its answers carry the simulated time. 1 on every real board.
        self.rate = rate
        self.kept = store.read("tfloor", 0)  # the last trusted time kept (Unix s)

    def trusted(self):
        return self.base is not None

    def now(self):
        """Unix seconds, or None while the clock is untrusted."""
        if self.base is None:
            return None
        return self.base + time.ticks_diff(time.ticks_ms(), self.at) * self.rate // 1000

    async def ask(self, send):
        """Send a time_req with a new nonce (it replaces any outstanding one)."""
        self.nonce = os.urandom(8)
        self.asked = time.ticks_ms()
        await send(11, {10: self.nonce}, 0)  # time_req, QoS 0

    def answer(self, p):
        """A verified time answer (type 22): None if it set the clock, else why it was refused."""
        if self.nonce is None or p[10] != self.nonce:
            return "nonce"
        rtt = time.ticks_diff(time.ticks_ms(), self.asked)
        self.nonce = None
        if rtt > _RTT_MS:
            return "rtt"
        # The answer's time was read about half way through the round trip.
        self.base = p[6]
        self.at = time.ticks_add(self.asked, rtt // 2)
        self.due = self.settings["time_s"]  # the next exchange a full period from this one
        if p[6] - self.kept >= _DAY:  # power-safe (store.py); never moves this clock at boot
            self.kept = p[6]
            store.write("tfloor", p[6])
        return None

    def rtc(self):
        """Before a TLS connect (mqtt_client): an RTC below the floor, the latest of the trusted
        time kept, the build time and this clock's time once trusted, is set to it (hal)."""
        t = max(self.kept, BUILT, self.now() or 0)
        if hal.rtc_floor(t):
            log("rtc floor", t)

    def attach(self, mqtt, signer, base):
        """Take the time answers on the device's dn/time (base: its "v1/dev/<id>/")."""
        self.signer = signer
        mqtt.subscribe(base + "dn/time", 0, self._on_time)

    def _on_time(self, topic, data, retain, dup):
        p = self.signer.open_dn(topic, data)
        if p is not None:
            why = self.answer(p)  # only the answer to our outstanding nonce
            log("time refused", why) if why else log("time set", self.now())

    async def run(self, mqtt, send):
        """Ask at each (re)connect, then every time_s; while untrusted, after 2, 4, 8 ... s."""
        gap = self.due = 0
        while True:
            if not mqtt.up:
                gap = self.due = 0
            elif self.due <= 0:
                t = self.settings["time_s"]
                self.due = gap = t if self.base is not None else min(2 * gap or 2, t)
                try:
                    await self.ask(send)
                except Exception:
                    pass  # the link dropped: asked again at the reconnect
            await asyncio.sleep(1)
            self.due -= 1
