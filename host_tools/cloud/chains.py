"""Which ledger chain a record belongs to, when a device id has had more than one board (SPEC §6
"Chains and re-provisioning", issue 15 §1).

A device's records form one hash chain per board: seq rising from 1, each record's prev the hash
of the one before, the first one's prev the genesis hash (16 zero bytes). Re-provisioning a
revoked device (`edgepay provision DEVICE --reprovision`, key version R = the highest so far + 1,
every earlier one compromised) puts a fresh key on a board over its serial link. Two cases:

- the same board (recovered): its journal and counters are kept, so its next record, under key R,
  links to its last one: the chain goes on, under the device id as before;
- a fresh board (a replacement: empty journal, new flash): its seq starts at 1 again and its first
  record's prev is the genesis hash. Under the device id that would collide with the old board's
  seqs (CONFLICT, or OUT_OF_CHAIN "a second genesis record"), and its session ids, which the
  firmware numbers by its boot counter, with the old board's sessions. So it gets a chain of its
  own: **the ledger device `DEVICE~R`** (a `~` is never in a device id), its records committed and
  deduplicated by (`DEVICE~R`, seq), its sessions by (`DEVICE~R`, sid).

The rule, for a record of DEVICE that verified under a key that is not compromised, when DEVICE
has been re-provisioned (R = its lowest non-compromised key version; never re-provisioned: always
the device id, no lookup):
1. prev = genesis: `DEVICE~R`, unless no chain of the device has a record yet (a device
   re-provisioned before it ever sent one keeps its plain id);
2. otherwise the chain holding the record whose hash is prev (committed or quarantined), searched
   over the device id and every `DEVICE~…` chain: the same board goes on in its chain;
3. prev found nowhere: `DEVICE~R` (the predecessor has not arrived: a GAP there, held and resent
   as any gap; never judged against the old board's seqs).
A record under a compromised key (the old board's, quarantined compromised_key) goes to the chain
holding its prev, else to the device id. Acks go to the device (topic, key, aud) whatever the
chain; their `upto` is in the board's own seq space, which is the chain's.

The session service's requests (auth_req) are not chained: a seq and the key version it verified
under are all they have, and a fresh board's first auth_req comes before its first record (a gate
asks at the entry, then journals sess_open). So the service keys a re-provisioned device's requests
(answers, claims: (chain, seq)) and sessions ((chain, sid), order `chain:sid`) by the board that
holds the id since R, judged once per (device, R) at its first request under a key >= R and
remembered (the session store's svc_boards), by `board_chain` below, which agrees with `route`:
1. a chain `DEVICE~R` holds a record: the fresh board's (the ledger has seen its genesis);
2. no chain of the device holds a record: the device id (route's rule 1 keeps it there too);
3. the newest other chain's head was signed under a key >= R: the same board went on there;
4. else by the seq: at or below the old board's high-water mark H (that chain's head seq, or the
   highest seq the service answered under it, whichever is higher) it is the fresh board's
   (DEVICE~R: its counter started from 1 again), above it the same board's (its counter goes on).
A record committed in `DEVICE~R` later overrides a judgement of rule 4 (the service's on_commit):
the ledger's genesis test is exact, the seq's is not (a fresh board's counter, shared with its
heartbeats, may pass the mark before its first request).
"""
from __future__ import annotations

from typing import Callable

import threading
from typing import Any

from host_tools.cloud.ledger import GENESIS, Ledger, Record

SEP = "~"  # never in a device id (a-z 0-9 -), and safe in a URL path and in the API's "t0/device/sid" cursors


def chain_id(device: str, epoch: int | None) -> str:
    return device if epoch is None else f"{device}{SEP}{epoch}"


def device_of(chain: str) -> str:
    """The device id of a ledger chain (the device id itself, or DEVICE~R)."""
    return chain.split(SEP, 1)[0]


def epoch_of(chain: str) -> int | None:
    """R of a chain DEVICE~R; None for the device's first chain."""
    _, sep, r = chain.partition(SEP)
    return int(r) if sep else None


class Epochs:
    """R of each device: the lowest key version that is not compromised if it was re-provisioned
    (None: never), read from the registry's key history once per current key version (a rotation
    or a re-provisioning changes it). Ingest and the session service keep one each."""

    def __init__(self, registry: Any):
        self.registry = registry
        self._seen: dict[str, tuple[int, int | None]] = {}   # device -> (key version read at, R)
        self._lock = threading.Lock()

    def __contains__(self, device: str) -> bool:
        with self._lock:
            return device in self._seen

    def get(self, device: str, key_version: int) -> int | None:
        with self._lock:
            hit = self._seen.get(device)
        if hit is not None and hit[0] == key_version:
            return hit[1]
        keys = self.registry.keys(device)
        epoch = None
        if any(k.state == "compromised" for k in keys):
            epoch = min((k.version for k in keys if k.state != "compromised"), default=None)
        with self._lock:
            self._seen[device] = (key_version, epoch)
        return epoch


def chains(ledger: Ledger, device: str) -> list[str]:
    """Every chain of `device` that holds a record (committed or quarantined), first board first."""
    rows = ledger._read("SELECT device FROM heads WHERE (device=? OR device LIKE ?) AND seq >= 0",
                        (device, device + SEP + "%"))
    return sorted({r[0] for r in rows}, key=lambda c: (epoch_of(c) or 0))


def find_prev(ledger: Ledger, device: str, prev: bytes) -> str | None:
    """The chain of `device` whose record (committed or quarantined) has hash `prev`, or None."""
    like = device + SEP + "%"
    for table in ("records", "quarantine"):
        rows = ledger._read(f"SELECT device FROM {table} WHERE hash=? AND (device=? OR device LIKE ?)",
                            (prev, device, like))
        if rows:
            return rows[0][0]
    return None


def route(ledger: Ledger, device: str, epoch: int | None, rec: Record, compromised: bool = False) -> str:
    """The chain `rec` of `device` belongs to (the module doc's rule); `epoch`: R, the device's
    lowest non-compromised key version if it was re-provisioned, else None."""
    if epoch is None:
        return device
    if not compromised:
        new = chain_id(device, epoch)
        if rec.prev == GENESIS:
            return new if chains(ledger, device) else device
        return find_prev(ledger, device, rec.prev) or new
    if rec.prev == GENESIS:
        return device
    return find_prev(ledger, device, rec.prev) or device


def _head_version(ledger: Ledger, chain: str, seq: int) -> int | None:
    """The key version the record at (chain, seq) was signed under (its envelope's kid), if known."""
    from host_tools.cloud.registry import envelope_kid
    from host_tools.protocol import ProtocolError, parse_kid
    for table in ("records", "quarantine"):
        rows = ledger._read(f"SELECT raw FROM {table} WHERE device=? AND seq=?", (chain, seq))
        if rows:
            kid = envelope_kid(bytes(rows[0][0]))
            try:
                return parse_kid(kid)[1] if kid is not None else None
            except ProtocolError:
                return None
    return None


def board_chain(ledger: Ledger, device: str, epoch: int, seq: int,
                answered: Callable[[str], int] = lambda chain: 0) -> str:
    """The chain of the board that holds `device` since its re-provisioning at `epoch` (R), for
    the session service's first request from it (seq `seq`, verified under a key >= R): the module
    doc's rules 1-4. `answered(chain)`: the highest seq the service answered under `chain` (0:
    none). Called once per (device, R): the caller remembers the answer."""
    new = chain_id(device, epoch)
    have = chains(ledger, device)
    if new in have:
        return new
    if not have:
        return device
    old = have[-1]
    head = ledger.head(old)
    if head is not None and head.seq >= 0:
        v = _head_version(ledger, old, head.seq)
        if v is not None and v >= epoch:
            return old
    mark = max(head.seq if head is not None else 0, answered(old))
    return new if seq <= mark else old
