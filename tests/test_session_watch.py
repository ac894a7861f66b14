"""ClaimWatch (host_tools/cloud/session_watch.py): a watch fires once its lease has run, in due
order; it is bounded (the oldest dropped and counted, so a flood of claims by a dead peer holds a
fixed amount of memory); one callback that raises does not end the others; close() ends it."""
from __future__ import annotations

import threading
import time

from host_tools.cloud.session_watch import ClaimWatch


def test_watches_fire_after_the_lease_in_order_bounded_and_survive_a_failing_one():
    fired: list[tuple[int, str, int]] = []
    done = threading.Event()

    def expire(device, kind, msg, holder, rounds):
        if msg["seq"] == 2:
            raise RuntimeError("poison")
        fired.append((msg["seq"], holder, rounds))
        if msg["seq"] == 4:
            done.set()
    w = ClaimWatch(0.2, expire, limit=3)
    try:
        t0 = time.monotonic()
        for seq in range(5):          # 5 into a watch of 3: seqs 0 and 1 dropped
            w.add("gate-1", "gate", {"seq": seq}, "a", rounds=seq % 2)
        assert w.dropped == 2 and len(w) == 3
        assert fired == []            # nothing before its lease
        assert done.wait(5)
        assert time.monotonic() - t0 >= 0.2
        assert fired == [(3, "a", 1), (4, "a", 0)]   # 2 raised; the others still fired, in order
        assert len(w) == 0
    finally:
        w.close()
    assert not w._thread.is_alive()
