"""A general rollout engine: one piece of work (an Action) taken to many devices in cohorts, at a
rate, with a per-device timeout and an abort threshold; pause, resume, cancel; every state in the
ledger's database (rollout_store.py), so a campaign survives a restart of the cloud side.

Firmware campaigns and fleet-wide key rotation ride on it (each an Action); today's action is
CommandAction: a signed command (a setting, a tariff, a display text) rolled out safely.

    ro = Rollouts(RolloutStore.open(url), {"command": CommandAction(client)})
    ro.create("hb-60", "command", {"name": "set_config", "args": [[1, 60]]}, devices,
              cohorts=(5, 25, 50, 100), rate=30, timeout_s=120, abort_share=0.2)
    ro.run(stop)          # or ro.tick() from a loop of one's own

The rules, in the order tick() applies them to a live campaign:
1. Outcomes: a started device the action reports finished becomes succeeded or failed (reason
   kept); one started more than timeout_s ago becomes timed_out, and the action is told to abort it.
   So every device, and so every campaign, reaches a final state. An outcome for a device already
   final changes nothing (a late success never rewrites timed_out).
2. Threshold: once at least min_finished devices have finished and failed + timed_out over finished
   reaches abort_share, the campaign halts by itself: the started devices are aborted, the pending
   ones skipped (they keep what they had), the reason says how many failed.
3. Starts (running only, not paused): devices start in their given order while the started count
   is below the current cohort's size (ceil(percent x N / 100)); the next cohort opens only when
   every device of the earlier ones has finished; at most `rate` starts a minute.
4. When every device is final the campaign is done.
A start is a conditional write (pending -> started), so two runners on one database never start a
device twice; the runner that started a device is the one that sees its outcome (its Action holds
it), so run one runner per campaign until the cloud service shares them out.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import Callable, Protocol, Sequence

from host_tools.cloud.commands import Command, CommandClient
from host_tools.cloud.rollout_store import (ABORTED, CANCELLED, DONE, FAILED, FAILURES, FINAL_TARGET, HALTED,
                                            PAUSED, PENDING, RUNNING, SKIPPED, STARTED, SUCCEEDED, TIMED_OUT,
                                            Campaign, RolloutStore)

log = logging.getLogger("edgepay.rollout")
Outcome = tuple[bool, "str | None"]   # (succeeded, reason)


class RolloutError(ValueError):
    pass


class Action(Protocol):
    """The work a campaign takes to each device. start() begins it (an exception fails that device);
    poll() is its outcome once finished, else None; abort() tells it to stop (best effort)."""

    def start(self, c: Campaign, device: str) -> None: ...

    def poll(self, c: Campaign, device: str) -> Outcome | None: ...

    def abort(self, c: Campaign, device: str) -> None: ...


def _burst(step: float) -> float:
    """Above one start a second a tick (every 0.5 s) may start a second's worth at once; below it,
    starts are exactly `step` apart."""
    return 1.0 if step < 1.0 else 0.0


def cohort_sizes(cohorts: Sequence[int], n: int) -> list[int]:
    return [min(n, math.ceil(p * n / 100)) for p in cohorts]


class Rollouts:
    def __init__(self, store: RolloutStore, actions: dict[str, Action], *,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.actions = actions
        self.clock = clock
        self._lock = threading.Lock()   # one tick at a time in this process

    # ---- operator calls --------------------------------------------------------------------
    def create(self, cid: str, action: str, spec: dict, devices: Sequence[str], *,
               cohorts: Sequence[int] = (5, 25, 50, 100), rate: float = 60.0, timeout_s: float = 300.0,
               abort_share: float = 0.2, min_finished: int | None = None) -> Campaign:
        """A new running campaign; RolloutError for a bad parameter (nothing is stored then)."""
        devices = list(devices)
        if not cid or not isinstance(cid, str) or len(cid) > 64:
            raise RolloutError("a campaign id is 1-64 characters")
        if action not in self.actions:
            raise RolloutError(f"unknown action {action!r} (known: {', '.join(sorted(self.actions))})")
        if not devices:
            raise RolloutError("no devices to roll out to")
        if len(set(devices)) != len(devices):
            raise RolloutError("a device is named twice")
        cohorts = [int(p) for p in cohorts]
        if not cohorts or cohorts[-1] != 100 or any(not 0 < p <= 100 for p in cohorts) \
                or any(a >= b for a, b in zip(cohorts, cohorts[1:])):
            raise RolloutError("cohorts are rising percentages ending at 100, e.g. 5,25,50,100")
        if not rate > 0:
            raise RolloutError("rate is starts per minute, above 0")
        if not timeout_s > 0:
            raise RolloutError("timeout_s is above 0")
        if not 0 < abort_share <= 1:
            raise RolloutError("abort_share is a failure share in (0, 1]")
        first = cohort_sizes(cohorts, len(devices))[0]
        mf = max(1, first) if min_finished is None else int(min_finished)
        if mf < 1:
            raise RolloutError("min_finished is at least 1")
        now = self.clock()
        c = Campaign(cid, action, spec, cohorts, float(rate), float(timeout_s), float(abort_share), mf,
                     RUNNING, None, now, now - _burst(60.0 / rate))
        try:
            self.store.create(c, devices)
        except KeyError:
            raise RolloutError(f"campaign {cid!r} exists") from None
        log.info("campaign %s: %s to %d devices, cohorts %s", cid, action, len(devices), cohorts)
        return self.status(cid)

    def status(self, cid: str) -> Campaign:
        c = self.store.campaign(cid)
        if c is None:
            raise RolloutError(f"no campaign {cid!r}")
        return c

    def pause(self, cid: str) -> Campaign:
        """No new starts; devices already started still finish (or time out)."""
        self._live(cid)
        self.store.set_state(cid, PAUSED, "paused", only_from=(RUNNING,))
        return self.status(cid)

    def resume(self, cid: str) -> Campaign:
        self._live(cid)
        self.store.set_state(cid, RUNNING, None, only_from=(PAUSED,))
        return self.status(cid)

    def cancel(self, cid: str) -> Campaign:
        """Stop for good: started devices are aborted, pending ones skipped."""
        c = self._live(cid)
        if self.store.set_state(cid, CANCELLED, "cancelled", only_from=(RUNNING, PAUSED)):
            self._stop_rest(c, "cancelled")
        return self.status(cid)

    def report(self, cid: str, device: str, ok: bool, reason: str | None = None) -> bool:
        """An outcome from outside the action's poll (a device's signed event): True if it counted."""
        return self.store.move(cid, device, SUCCEEDED if ok else FAILED, reason, self.clock(), only_from=(STARTED,))

    def _live(self, cid: str) -> Campaign:
        c = self.status(cid)
        if c.final:
            raise RolloutError(f"campaign {cid!r} is {c.state}")
        return c

    # ---- the engine ------------------------------------------------------------------------
    def tick(self) -> list[Campaign]:
        """One pass over every live campaign (the rules of the module doc); the campaigns after it."""
        with self._lock:
            return [self._tick(c) for c in self.store.campaigns(live_only=True)]

    def run(self, stop: threading.Event, every: float = 0.5) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - a database hiccup skips one pass, never the runner
                log.exception("rollout tick failed")
            stop.wait(every)

    def _tick(self, c: Campaign) -> Campaign:
        action = self.actions.get(c.action)
        if action is None:
            return c  # another process's action: not ours to run
        now = self.clock()
        targets = self.store.targets(c.id)
        for t in targets:  # 1. outcomes and timeouts
            if t.state != STARTED:
                continue
            try:
                out = action.poll(c, t.device)
            except Exception as e:  # noqa: BLE001
                out = (False, f"poll: {e!r}"[:120])
            if out is not None:
                t.state = SUCCEEDED if out[0] else FAILED
                self.store.move(c.id, t.device, t.state, out[1], now, only_from=(STARTED,))
            elif t.started_at is not None and now - t.started_at > c.timeout_s:
                t.state = TIMED_OUT
                if self.store.move(c.id, t.device, TIMED_OUT, f"no outcome in {c.timeout_s:g} s", now,
                                   only_from=(STARTED,)):
                    self._abort(action, c, t.device)
        targets = self.store.targets(c.id)  # as stored: outcomes reported meanwhile included
        n = len(targets)
        finished = [t for t in targets if t.state in (SUCCEEDED, FAILED, TIMED_OUT)]
        failures = sum(1 for t in finished if t.state in FAILURES)
        if len(finished) >= c.min_finished and failures >= c.abort_share * len(finished):  # 2.
            why = f"{failures} of {len(finished)} finished failed (threshold {c.abort_share:g})"
            if self.store.set_state(c.id, HALTED, why, only_from=(RUNNING, PAUSED)):
                log.warning("campaign %s halted: %s", c.id, why)
                self._stop_rest(c, "halted")
            return self.status(c.id)
        if c.state == RUNNING:  # 3. starts
            final_n = sum(1 for t in targets if t.state in FINAL_TARGET)
            started_n = sum(1 for t in targets if t.state != PENDING)
            gate = next((k for k in cohort_sizes(c.cohorts, n) if k > final_n), n)
            step = 60.0 / c.rate
            burst = _burst(step)
            nxt = c.next_start_at
            for t in targets:
                if started_n >= gate or now < nxt:
                    break
                if t.state != PENDING:
                    continue
                if not self.store.move(c.id, t.device, STARTED, None, now, only_from=(PENDING,)):
                    continue  # another runner took it
                started_n += 1
                nxt = max(nxt, now - burst) + step  # no burst after idle beyond a second's worth
                self.store.set_next_start(c.id, nxt)
                try:
                    action.start(c, t.device)
                except Exception as e:  # noqa: BLE001 - one device's failure is that device's outcome
                    self.store.move(c.id, t.device, FAILED, f"start: {e!r}"[:120], now, only_from=(STARTED,))
        counts = self.store.counts(c.id)
        if sum(counts.get(s, 0) for s in FINAL_TARGET) == n:  # 4.
            summary = ", ".join(f"{counts[s]} {s}" for s in FINAL_TARGET if counts.get(s))
            self.store.set_state(c.id, DONE, summary, only_from=(RUNNING, PAUSED))
        return self.status(c.id)

    def _stop_rest(self, c: Campaign, why: str) -> None:
        action = self.actions.get(c.action)
        now = self.clock()
        for t in self.store.targets(c.id):
            if t.state == STARTED and self.store.move(c.id, t.device, ABORTED, why, now, only_from=(STARTED,)):
                if action is not None:
                    self._abort(action, c, t.device)
            elif t.state == PENDING:
                self.store.move(c.id, t.device, SKIPPED, why, now, only_from=(PENDING,))

    @staticmethod
    def _abort(action: Action, c: Campaign, device: str) -> None:
        try:
            action.abort(c, device)
        except Exception:  # noqa: BLE001 - best effort: the device's state is final already
            log.exception("abort of %s in %s failed", device, c.id)


class CommandAction:
    """A signed command as a campaign's work: spec {"name": command, "args": [[key, value], ...]
    (pairs: JSON keeps int keys so), "ttl": seconds}. A device succeeds on `ok`, fails with the
    device's code (or the command's state when it has none). A command cannot be recalled: abort
    only stops waiting for it."""

    def __init__(self, client: CommandClient, publish_timeout: float = 2.0):
        self.client = client
        self.publish_timeout = publish_timeout
        self._cmds: dict[tuple[str, str], Command] = {}

    @staticmethod
    def spec(name: str, args: dict | None = None, ttl: int = 60) -> dict:
        return {"name": name, "args": sorted(([k, v] for k, v in (args or {}).items()), key=lambda kv: str(kv[0])),
                "ttl": int(ttl)}

    def start(self, c: Campaign, device: str) -> None:
        args = {k: v for k, v in c.spec.get("args") or []} or None
        self._cmds[(c.id, device)] = self.client.submit(device, c.spec["name"], args, ttl=int(c.spec.get("ttl", 60)),
                                                        publish_timeout=self.publish_timeout)

    def poll(self, c: Campaign, device: str) -> Outcome | None:
        cmd = self._cmds.get((c.id, device))
        if cmd is None or not cmd.state.final:
            return None
        del self._cmds[(c.id, device)]
        if cmd.ok:
            return True, None
        return False, cmd.code or cmd.state.value.lower()

    def abort(self, c: Campaign, device: str) -> None:
        self._cmds.pop((c.id, device), None)
