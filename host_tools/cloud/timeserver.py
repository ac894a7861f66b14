"""The cloud's time responder (SPEC §5, time by challenge).

A device trusts its clock only after a signed answer to its own time_req: it sends a fresh nonce on
`v1/dev/{id}/up/time` (at each connect, then every `time_s`); this worker verifies the request with
the registry's key and answers on `dn/time` with a signed `time` (type 22) carrying the cloud's time
and the nonce echoed. Both at QoS 0: a lost one is asked again, and a late one is worthless (the
device refuses an answer that does not echo its outstanding nonce, or that comes after 5 s).

    ts = TimeServer(registry, mqtt)                # on an existing CloudMQTT connection
    ts = TimeServer.connect(registry, BrokerSettings(host, port, user, password))   # or on its own
    ts.skew["gate-1"] = 3600                       # tests: answer gate-1 an hour ahead
    ts.wait_answered("gate-1", 10)                 # a later answer to gate-1 was sent

`clock` is where the time comes from (the simulator's SimClock in host_tools/sim/world.py).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from host_tools.cloud.mqtt import BrokerSettings, CloudMQTT
from host_tools.cloud.registry import Registry
from host_tools.protocol import ProtocolError, seal
from host_tools.protocol import topic as topic_for

log = logging.getLogger("edgepay.time")
REQUESTS = "v1/dev/+/up/time"


class TimeServer:
    def __init__(self, registry: Registry, mqtt: CloudMQTT, *, clock: Callable[[], float] = time.time,
                 share: str | None = None):
        self.registry = registry
        self.mqtt = mqtt
        self.clock = clock
        self.skew: dict[str, float] = {}        # device -> seconds added to its answers (tests)
        self.answered: dict[str, int] = {}      # device -> answers sent
        self.refused = 0                        # requests that did not verify
        self._cv = threading.Condition()
        self._own = False
        # With `share`, N responders split the requests ($share/<group>/); without, each answers all
        # (a device takes the first answer to its nonce and refuses the others: harmless).
        mqtt.subscribe(mqtt.settings.work_share(share, REQUESTS), self._on_req, qos=0)

    @classmethod
    def connect(cls, registry: Registry, broker: BrokerSettings, **kw) -> "TimeServer":
        ts = cls(registry, CloudMQTT(broker), **kw)
        ts._own = True
        ts.mqtt.connect()
        return ts

    def close(self) -> None:
        if self._own:
            self.mqtt.close()

    def count(self, device: str) -> int:
        with self._cv:
            return self.answered.get(device, 0)

    def wait_answered(self, device: str, timeout: float, after: int | None = None) -> bool:
        """Wait until `device` has been answered more than `after` times (default: the count now)."""
        with self._cv:
            n = self.answered.get(device, 0) if after is None else after
            return self._cv.wait_for(lambda: self.answered.get(device, 0) > n, timeout)

    def _on_req(self, topic: str, payload: bytes) -> None:
        device = topic.split("/")[2]
        try:
            dev = self.registry.get(device)
            # by its kid (SPEC §11); answered under the key that is now current
            req, dev = self.registry.open_uplink_message(dev, topic, payload)
        except (ProtocolError, Exception) as e:  # an unknown device, a bad MAC: no answer
            self.refused += 1
            log.warning("time_req refused on %s: %s", topic, getattr(e, "code", e))
            return
        t = topic_for(device, "time")
        msg = {"type": "time", "aud": device, "iat": max(0, int(self.clock() + self.skew.get(device, 0))),
               "seq": self.registry.next_seq(device), "nonce": req["nonce"]}
        self.mqtt.publish(t, seal(dev.key, dev.kid, t, msg), qos=0, timeout=None)
        with self._cv:
            self.answered[device] = self.answered.get(device, 0) + 1
            self._cv.notify_all()
