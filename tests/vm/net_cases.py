# firmware/net.py on the VM. The radio cannot exist here, so FakeWLAN stands in for network.WLAN
# (the only double); everything else is the real module, on the real MicroPython asyncio.
# argv[1]: "noop" (the VM has no WLAN: every entry point does nothing) or "radio" (the logic,
# with FakeWLAN injected). Prints one JSON object.
import asyncio
import json
import sys

import net


class FakeWLAN:
    """network.WLAN's station API as net.py uses it. `plan`: what isconnected() answers, in order;
    the last answer repeats."""

    def __init__(self, plan, rssi=-61):
        self.plan = list(plan)
        self.calls = []
        self.checks = 0
        self.rssi = rssi

    def active(self, on):
        self.calls.append("active")

    def connect(self, ssid, password):
        self.calls.append("connect " + ssid + " " + password)

    def disconnect(self):
        self.calls.append("disconnect")

    def isconnected(self):
        self.checks += 1
        return self.plan.pop(0) if len(self.plan) > 1 else self.plan[0]

    def status(self, what):
        assert what == "rssi"
        return self.rssi


def noop():
    cfg = {"wifi": {"ssid": "site", "password": "secret-pw"}, "broker": {"tls": True}}
    return {"wlan": net.wlan() is None, "up": net.up(cfg) is None, "up_no_wifi": net.up({"broker": {}}) is None,
            "has_network": "network" in sys.modules}


def radio():
    out = {}
    # joins on the 13th poll: 12 sleeps of 100 ms, one join
    w, slept = FakeWLAN([False] * 12 + [True]), []
    ok = net.Link(w, "site", "pw-123456", sleep=slept.append).connect()
    out["quick"] = [ok, slept, w.calls]
    # never joins: rejoins after 500, 1000, 2000 ms pauses, gives up once the budget is spent
    w, slept = FakeWLAN([False]), []
    ok = net.Link(w, "site", "pw-123456", sleep=slept.append).connect(budget_ms=15000, try_ms=5000)
    out["never"] = [ok, [s for s in slept if s != 100], sum(slept), w.calls.count("connect site pw-123456")]
    # the backoff stops doubling at `hi`
    w, slept = FakeWLAN([False]), []
    net.Link(w, "site", "pw-123456", lo=500, hi=1500, sleep=slept.append).connect(budget_ms=60000, try_ms=100)
    out["capped"] = max(slept)
    # keep(): up, dropped for two checks, back: two rejoins with doubling pauses, then quiet
    w = FakeWLAN([True, False, False, True])
    link = net.Link(w, "site", "pw-123456", lo=20, hi=1000)

    async def watch():
        t = asyncio.create_task(link.keep(every_ms=10))
        await asyncio.sleep_ms(300)
        t.cancel()
    asyncio.run(watch())
    out["keep"] = w.calls
    # up(): joins, sets the clock by NTP only with TLS, queues keep() for the agent's event loop
    import ntptime  # tests/vm/fakes: NTP servers are not reachable from here
    for tls in (True, False):
        w = FakeWLAN([True])
        ntptime.calls = 0
        link = net.up({"wifi": {"ssid": "site", "password": "pw-123456"}, "broker": {"tls": tls}}, w)
        checks = w.checks

        async def later():
            await asyncio.sleep_ms(20)
        asyncio.run(later())  # the queued keep() runs now: it checks the link
        out["up_tls" if tls else "up_plain"] = [link is not None, ntptime.calls, w.checks > checks, link.rssi()]
    out["no_wifi_config"] = net.up({"broker": {"tls": True}}, FakeWLAN([True])) is None
    return out


print(json.dumps(noop() if sys.argv[1] == "noop" else radio()))
