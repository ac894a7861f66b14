# Wi-Fi station bring-up for boards with a radio (ESP32, Pico W), before the agent's first MQTT
# connect: join the provisioned network (config "wifi": {"ssid", "password"}), wait a bounded time
# with backoff, then keep the link (rejoin when it drops). With TLS, set the RTC by NTP once the
# link is up: certificate dates are checked against it, and a power cut resets it to 2000.
# Where `network` has no WLAN (the unix VM) everything here is a no-op: detected, never faked.
# Sim boards do not ship this module (host_tools/bundle.py).
import asyncio
import time

from clock import log


def wlan():
    """The station interface, or None without a radio."""
    try:
        import network
        return network.WLAN(network.STA_IF)
    except (ImportError, AttributeError):
        return None


class Link:
    """One station link. `w` is a network.WLAN (a test double on the VM); `sleep` is in ms."""

    def __init__(self, w, ssid, password, lo=500, hi=30000, sleep=time.sleep_ms):
        self.w, self.ssid, self.pw = w, ssid, password
        self.lo, self.hi, self.sleep = lo, hi, sleep

    def rssi(self):
        try:
            return self.w.status("rssi")
        except Exception:  # not associated, or a port without it
            return None

    def join(self):
        w = self.w
        try:
            w.disconnect()  # a connect while one is pending fails on ESP32
        except OSError:
            pass
        try:
            w.connect(self.ssid, self.pw)
        except OSError as e:
            log("wifi error", e)

    def connect(self, budget_ms=15000, try_ms=5000):
        """Join; poll every 100 ms for `try_ms`, then rejoin after a doubling pause; give up after
        `budget_ms` (the agent's MQTT client goes on retrying, and keep() on rejoining)."""
        self.w.active(True)
        d, spent = self.lo, 0
        while spent < budget_ms:
            self.join()
            t = 0
            while t < try_ms:
                if self.w.isconnected():
                    log("wifi up", self.ssid, "rssi", self.rssi())
                    return True
                self.sleep(100)
                t += 100
            self.sleep(d)
            spent += t + d
            d = min(d * 2, self.hi)
        log("wifi down after", spent, "ms")
        return False

    async def keep(self, every_ms=5000):
        """Check the link every `every_ms`; while it is down, rejoin after doubling pauses."""
        d, down = self.lo, False
        while True:
            if self.w.isconnected():
                if down:
                    log("wifi up", self.ssid, "rssi", self.rssi())
                d, down = self.lo, False
                await asyncio.sleep_ms(every_ms)
            else:
                log("wifi lost: rejoin, next check in", d, "ms")
                down = True
                self.join()
                await asyncio.sleep_ms(d)
                d = min(d * 2, self.hi)


def set_clock(tries=3):
    """The RTC from NTP (ntptime, in the ESP32 and RP2 images); False when it could not."""
    try:
        import ntptime
    except ImportError:
        return False
    for _ in range(tries):
        try:
            ntptime.settime()
            log("ntp time set")
            return True
        except Exception as e:  # OSError: timeout, DNS; a bad reply
            log("ntp error", e)
            time.sleep_ms(500)
    return False


def up(cfg, w=None):
    """Bring the link up before the agent connects; keep it up from the agent's event loop.
    Returns the Link, or None when there is nothing to do (no radio, or no "wifi" config)."""
    c = cfg.get("wifi")
    w = w or wlan()
    if not c or w is None:
        return None
    n = Link(w, c["ssid"], c["password"])
    if n.connect() and cfg["broker"].get("tls"):
        set_clock()
    # queued now, runs once main.py starts the event loop (MicroPython's asyncio.run keeps it)
    asyncio.create_task(n.keep())
    return n
