"""Claims of other instances, watched until they are answered (durable session instances).

Every durable instance receives every auth_req and one claim in the store picks the instance that
answers it. The others acknowledge their copy at once (holding it would fill their broker in-flight
window behind a slow peer) and keep it here instead: if the claim's holder has stored no answer by
the end of the lease — it was killed mid-answer and has not come back — one of them takes the claim
over (a compare-and-set in the store, so only one does) and answers. The holder's own copy is not
acknowledged until it is answered, so a holder that comes back first gets it again from the broker
and answers it itself. Bounded: at most `limit` watches (the oldest are dropped, counted).
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable

log = logging.getLogger("edgepay.sessions")

# (device, kind, msg, holder, rounds) -> called when the lease of `holder`'s claim has run out
Expire = Callable[[str, str, dict, str, int], None]


class ClaimWatch:
    def __init__(self, lease_s: float, on_expire: Expire, *, limit: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        self.lease_s = lease_s
        self.limit = limit
        self.dropped = 0
        self._on_expire = on_expire
        self._clock = clock
        self._heap: list[tuple[float, int, str, str, dict, str, int]] = []
        self._n = itertools.count()
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="sessions-claims", daemon=True)
        self._thread.start()

    def add(self, device: str, kind: str, msg: dict, holder: str, rounds: int = 0) -> None:
        """Watch `holder`'s claim on msg; rounds: how many holders have been watched before."""
        with self._cv:
            if len(self._heap) >= self.limit:
                heapq.heappop(self._heap)   # the soonest due: the one nearest its own end
                self.dropped += 1
            heapq.heappush(self._heap, (self._clock() + self.lease_s, next(self._n), device, kind, msg, holder, rounds))
            self._cv.notify()

    def __len__(self) -> int:
        with self._cv:
            return len(self._heap)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stop and (not self._heap or self._heap[0][0] > self._clock()):
                    self._cv.wait(None if not self._heap else max(0.0, self._heap[0][0] - self._clock()))
                if self._stop:
                    return
                _, _, device, kind, msg, holder, rounds = heapq.heappop(self._heap)
            try:
                self._on_expire(device, kind, msg, holder, rounds)
            except Exception:  # noqa: BLE001 - one bad watch must not end the others
                log.exception("claim watch for %s seq %s failed", device, msg.get("seq"))

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=5)
