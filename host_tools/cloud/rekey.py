"""Device key rotation, the cloud's side (protocol/SPEC.md §11, issue 15 §1).

    out = rotate(client, "gate-001", timeout=10)   # a CommandClient; RekeyError if it cannot finish

1. offer_next: the next key is stored in the registry (sealed, state `next`) before anything is
   sent; a rotation already under way reuses its key, so a re-run sends the same wrapped bytes.
2. `rekey` {1: version, 2: the next key wrapped under the current one (RFC 3394)}, signed under the
   current key; the device's result carries {"kv", "proof"}: the proof must be
   HMAC-SHA256(next key, "edgepay-rekey:" + next kid)[:16], else RekeyError `bad_proof` and the
   confirmation is never sent (nothing is promoted; the device keeps its current key).
3. `get_state` signed under the next key: the device switches on it, and its result, verified
   under the next kid (Registry.verify_uplink), makes the next key current in the registry.

Resumable at any point: a re-run offers the same key, and a device that holds it answers `rekey`
with the same proof. A device that switched already (its answer to the confirmation was lost)
refuses the current kid; then the rekey goes unanswered and the confirmation is sent anyway: only a
device that holds the next key can verify it, and usually its first uplink under the new kid has
promoted it before that (checked first).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from host_tools.cloud.commands import CommandClient, State
from host_tools.cloud.registry import RegistryError
from host_tools.cloud.rollout import Outcome
from host_tools.cloud.rollout_store import Campaign
from host_tools.protocol import keywrap

log = logging.getLogger("edgepay.rekey")
ACTION = "rekey"


class RekeyError(Exception):
    """A rotation that did not finish; `code` says where: revoked, refused, bad_proof, no_answer,
    not_confirmed. The device keeps a key both sides hold whatever the code."""

    def __init__(self, code: str, detail: str) -> None:
        self.code, self.detail = code, detail
        super().__init__(f"{code}: {detail}")


@dataclass(frozen=True)
class Rotated:
    device: str
    was: int        # the key version current before this call
    version: int    # the key version current now
    resumed: bool   # a rotation under way (a next key stored) was finished

    def as_json(self) -> dict:
        return {"device": self.device, "was": self.was, "version": self.version, "resumed": self.resumed,
                "kid": f"{self.device}:{self.version}"}


def rotate(client: CommandClient, device: str, *, timeout: float = 10.0, ttl: int = 60) -> Rotated:
    """Rotate `device`'s key (module doc); `timeout` seconds for each of the two answers."""
    reg = client.registry
    dev = reg.get(device)  # RegistryError: unknown device
    if not dev.active:
        raise RekeyError("revoked", f"{device} is {dev.status}: provision it again over serial instead")
    resumed = reg.next_key(device) is not None
    try:
        version, key = reg.offer_next(device)
    except RegistryError as e:
        raise RekeyError("refused", str(e)) from None
    kid = f"{device}:{version}"
    c = client.send(device, "rekey", {1: version, 2: keywrap.wrap(dev.key, key)}, timeout=timeout, ttl=ttl)
    if c.ok:
        data = c.data if isinstance(c.data, dict) else {}
        if data.get("kv") != version or not keywrap.proof_matches(key, kid, data.get("proof")):
            raise RekeyError("bad_proof", f"{device} answered rekey with a proof that is not of key {kid} "
                             f"(kv {data.get('kv')!r}): not confirmed; its current key stays")
    elif c.state in (State.TIMED_OUT, State.EXPIRED):
        if reg.get(device).key_version >= version:  # it switched already: an uplink under the new kid came
            return Rotated(device, dev.key_version, reg.get(device).key_version, True)
        # it may hold the next key and have switched (refusing the current kid): confirm anyway
    else:
        raise RekeyError("refused", f"{device} refused rekey: {c.code} {c.data or ''}".rstrip())
    deadline = time.monotonic() + timeout
    if reg.get(device).key_version < version:
        conf = client.send(device, "get_state", timeout=timeout, ttl=ttl, under_next=True)
        # the result's verification under the next kid promoted it (CommandClient._on_result)
        while reg.get(device).key_version < version and time.monotonic() < deadline:
            time.sleep(0.05)
        if reg.get(device).key_version < version:
            code = "no_answer" if not c.ok and not conf.state.final else "not_confirmed"
            raise RekeyError(code, f"{device} did not answer under {kid} ({conf.state.value}"
                             f"{', ' + conf.code if conf.code else ''}); run it again to finish")
    return Rotated(device, dev.key_version, reg.get(device).key_version, resumed)


class RekeyAction:
    """A key rotation as a rollout engine Action (host_tools/cloud/rollout.py): a fleet rotated in
    cohorts, at a rate, halting past a failure share, with pause, resume, cancel and status as for
    firmware campaigns. spec {"timeout": seconds per answer, "ttl": each command's lifetime}.

    start() runs rotate() on a thread of its own; poll() is its outcome (a RekeyError's code as
    the reason). abort() only stops waiting: a rotation stopped anywhere leaves the device with a
    key both sides hold, and a rerun finishes it. A runner restarted mid-campaign adopts a started
    device it did not start by rotating it again (it resumes where the other left it)."""

    def __init__(self, client: CommandClient):
        self.client = client
        self._runs: dict[tuple[str, str], list] = {}   # (campaign, device) -> [outcome or None]
        self._lock = threading.Lock()

    @staticmethod
    def spec(timeout: float = 10.0, ttl: int = 60) -> dict:
        return {"timeout": float(timeout), "ttl": int(ttl)}

    def start(self, c: Campaign, device: str) -> None:
        self.client.registry.get(device)  # an unknown device fails at its start
        slot: list = [None]
        with self._lock:
            self._runs[(c.id, device)] = slot
        threading.Thread(target=self._rotate, args=(c, device, slot), daemon=True,
                         name=f"rekey-{device}").start()

    def _rotate(self, c: Campaign, device: str, slot: list) -> None:
        try:
            rotate(self.client, device, timeout=float(c.spec.get("timeout", 10.0)), ttl=int(c.spec.get("ttl", 60)))
            slot[0] = (True, None)
        except RekeyError as e:
            slot[0] = (False, e.code)
        except Exception as e:  # noqa: BLE001 - the device fails with a reason; the campaign goes on
            log.warning("rotation of %s failed: %s", device, e)
            slot[0] = (False, type(e).__name__)

    def poll(self, c: Campaign, device: str) -> Outcome | None:
        with self._lock:
            slot = self._runs.get((c.id, device))
        if slot is None:  # started by a runner that is gone: resume it here
            self.start(c, device)
            return None
        if slot[0] is None:
            return None
        with self._lock:
            self._runs.pop((c.id, device), None)
        return slot[0]

    def abort(self, c: Campaign, device: str) -> None:
        with self._lock:
            self._runs.pop((c.id, device), None)
