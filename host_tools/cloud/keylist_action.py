"""A release key list as a rollout engine Action (host_tools/cloud/rollout.py, issue 12 §1): a signed
list (`edgepay release keylist`) taken to a fleet as firmware and key rotations are, in cohorts, at
a rate, halting past a failure share, with pause, resume, cancel and status.

    ro = Rollouts(store, {"keylist": KeylistAction(client)})
    ro.create("keys-2", "keylist", KeylistAction.spec(raw), devices, cohorts=(5, 25, 50, 100), rate=30,
              timeout_s=60, abort_share=0.2)

The work for each device is one `set_release_keys` command carrying the list (SPEC §10 "The release
key list"). Outcomes:
- the device's result {"v": the list's version, "keys": n}: succeeded;
- refused `stale_version`: the device already holds a list of this version or a later one (a
  device answers so for the very list it took, when a campaign is run again, or when `push-keys`
  reached it first). That counts as succeeded, reason "stale_version" kept (the device does not say
  which version it holds, so status shows the difference). A list can never lower a device's
  version, so nothing is left to do for it;
- any other refusal (unknown_key, revoked_key, bad_signature, self_revoked, empty, bad_list: the
  list does not fit that device's trust, and nothing changed there) or code fails with that reason,
  a command that expired or was refused by the cloud with its state.
abort() only stops waiting: a list is one power-safe write on the device, taken whole or not at all.
A runner restarted mid-campaign sends the list again to a started device it did not start (the
device takes it or answers stale_version: the same outcome either way).
"""
from __future__ import annotations

import logging
import threading

from host_tools.cloud.commands import Command, CommandClient
from host_tools.cloud.rollout import Outcome
from host_tools.cloud.rollout_store import Campaign
from host_tools.protocol.keylist import KeyListError, peek_keylist

log = logging.getLogger("edgepay.keylist")
ACTION = "keylist"
ALREADY = "stale_version"


class KeylistAction:
    def __init__(self, client: CommandClient, publish_timeout: float = 2.0):
        self.client = client
        self.publish_timeout = publish_timeout
        self._cmds: dict[tuple[str, str], Command] = {}
        self._lock = threading.Lock()

    @staticmethod
    def spec(raw: bytes, ttl: int = 60) -> dict:
        """The campaign's spec: the signed list (hex), its version and signer (for status), the
        command's lifetime. KeyListError for bytes that are no key list (nothing is created then)."""
        kid, kl = peek_keylist(raw)
        return {"list": raw.hex(), "v": kl.version, "signer": kid.hex(), "ttl": int(ttl)}

    def start(self, c: Campaign, device: str) -> None:
        raw = bytes.fromhex(c.spec["list"])
        cmd = self.client.submit(device, "set_release_keys", {1: raw}, ttl=int(c.spec.get("ttl", 60)),
                                 publish_timeout=self.publish_timeout)
        with self._lock:
            self._cmds[(c.id, device)] = cmd

    def poll(self, c: Campaign, device: str) -> Outcome | None:
        with self._lock:
            cmd = self._cmds.get((c.id, device))
        if cmd is None:  # started by a runner that is gone: send it again (the same outcome)
            self.start(c, device)
            return None
        if not cmd.state.final:
            return None
        with self._lock:
            self._cmds.pop((c.id, device), None)
        return outcome(cmd, int(c.spec["v"]))

    def abort(self, c: Campaign, device: str) -> None:
        with self._lock:
            self._cmds.pop((c.id, device), None)


def outcome(cmd: Command, version: int) -> Outcome:
    """A finished set_release_keys command's outcome in a campaign of list `version`."""
    data = cmd.data if isinstance(cmd.data, dict) else {}
    if cmd.ok:
        if data.get("v") != version:  # a device that took some other list: not this campaign's
            return False, f"took list v{data.get('v')}"
        return True, None
    why = data.get("why")
    if cmd.code == "refused" and why == ALREADY:
        return True, ALREADY
    if cmd.code == "refused" and isinstance(why, str):
        return False, why[:64]
    return False, cmd.code or cmd.state.value.lower()


__all__ = ["ACTION", "ALREADY", "KeylistAction", "KeyListError", "outcome"]
