"""What the cloud's passive listeners (heartbeats.Recorder, presence.Tracker) share: a bounded
queue of a device topic's messages that the MQTT network thread only fills, and a `flush` that
verifies each message under its device's key (registry.open_uplink) and stores the verified ones
one batch at a time. The network thread also carries command results, so it must never wait on a
database; a flood beyond the queue's bound is counted as dropped, never held in memory."""
from __future__ import annotations

import logging
import queue
from typing import Any, Callable

from host_tools.cloud.registry import Registry, open_uplink

log = logging.getLogger("edgepay.uplink")


class VerifiedQueue:
    QUEUE = 20000
    BATCH = 500

    def __init__(self, registry: Registry, queue_max: int, clock: Callable[[], float]):
        self.registry = registry
        self.clock = clock
        self._keys: dict = {}
        self._q: queue.Queue = queue.Queue(queue_max)
        self.stats = {"recorded": 0, "refused": 0, "dropped": 0}

    def row(self, device: str, msg: dict, at: float) -> tuple | None:
        """The row a verified message stores; None refuses it (another type)."""
        raise NotImplementedError

    def store(self, rows: list) -> None:
        raise NotImplementedError

    def on_message(self, topic: str, payload: bytes) -> None:
        try:
            self._q.put_nowait((topic, bytes(payload), self.clock()))
        except queue.Full:
            self.stats["dropped"] += 1

    def flush(self) -> int:
        """Verify and store what is queued now, one transaction per batch; how many were taken."""
        n = 0
        while True:
            batch: list[Any] = []
            try:
                while len(batch) < self.BATCH:
                    batch.append(self._q.get_nowait())
            except queue.Empty:
                pass
            if not batch:
                return n
            n += len(batch)
            rows = []
            for topic, payload, at in batch:
                device, msg, err = open_uplink(self.registry, self._keys, topic, payload)
                row = self.row(device, msg, at) if msg is not None else None
                if row is None:
                    self.stats["refused"] += 1
                    log.debug("%s: message on %s refused: %s", type(self).__name__, topic, err or "another type")
                    continue
                rows.append(row)
            self.store(rows)
            self.stats["recorded"] += len(rows)
