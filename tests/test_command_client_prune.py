"""The command client forgets a finished command only once even a late result could no longer
come (exp + LATE_GRACE_S), whatever the number held, and never one still unfinished; pruning
costs what is due, not a scan of everything held (a scan per command made every send slower:
6 ms a command after 3,000)."""
import time

from host_tools.cloud.commands import LATE_GRACE_S, State
from host_tools.cloud.registry import Registry
from tests.agentkit import cloud


def _client(broker):
    reg = Registry()
    reg.add("dev1", b"k" * 32, "gate", "sim-gate")
    return cloud(broker, reg)  # no device: every command times out, finished either way


def test_finished_commands_are_forgotten_after_the_grace_and_not_before(broker):
    c = _client(broker)
    try:
        done = [c.send("dev1", "display", {1: "x"}, timeout=0.05, ttl=1) for _ in range(3)]
        assert all(cmd.state in (State.TIMED_OUT, State.EXPIRED) for cmd in done)
        open_ = c.submit("dev1", "display", {1: "y"}, ttl=1, publish_timeout=1)  # never waited for
        assert not open_.state.final
        now = time.time()
        c._prune(now)  # nothing is due yet: all kept, a late result still correlates
        assert all(cmd.cti in c._pending for cmd in done + [open_])
        later = max(cmd.exp for cmd in done + [open_]) + LATE_GRACE_S + 1
        c._prune(later)
        assert not any(cmd.cti in c._pending for cmd in done)  # far fewer than 1,024 held: still pruned
        assert open_.cti in c._pending  # unfinished: kept, looked at again a grace later
        open_.wait(0)
        c._prune(later + LATE_GRACE_S + 1)
        assert c._pending == {} and c._forget == []
    finally:
        c.close()


def test_pruning_looks_only_at_what_is_due(broker):
    c = _client(broker)
    try:
        for _ in range(50):
            c.send("dev1", "display", {1: "x"}, timeout=0.01)
        seen = []

        class Counting(dict):
            def get(self, k, default=None):
                seen.append(k)
                return super().get(k, default)

            def items(self):
                seen.append("scan")
                return super().items()
        c._pending = Counting(c._pending)
        c._prune(time.time())  # none due: not one held command examined
        assert seen == [] and len(c._pending) == 50
    finally:
        c.close()
