"""The ledger's data: records, heads, commit results, sessions (host_tools/cloud/ledger.py).

Money is integer minor units everywhere; `_int` refuses a float read back from a database.
"""
from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping

GENESIS = bytes(16)
RECORD_TYPES = {6: "sess_open", 7: "sess_update", 8: "sess_close"}
TYPE_NUMBERS = {v: k for k, v in RECORD_TYPES.items()}


def chain_hash(payload: bytes) -> bytes:
    """SPEC §6: the first 16 bytes of SHA-256 over a record's payload bytes."""
    return hashlib.sha256(payload).digest()[:16]


class LedgerError(RuntimeError):
    pass


class Outcome(str, enum.Enum):
    COMMITTED = "committed"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    OUT_OF_CHAIN = "out_of_chain"
    GAP = "gap"
    QUARANTINED = "quarantined"                       # placed in the chain, held in quarantine
    QUARANTINED_DUPLICATE = "quarantined_duplicate"   # the same quarantined bytes again


@dataclass(frozen=True)
class Record:
    """One verified session record, ready for the ledger."""
    device: str
    seq: int
    type: int                 # 6 sess_open, 7 sess_update, 8 sess_close
    sid: str
    prev: bytes
    hash: bytes               # chain_hash(payload)
    raw: bytes                # the signed envelope exactly as received
    payer: str | None = None
    amount: int | None = None
    currency: str | None = None
    t0: int | None = None
    t1: int | None = None
    slot: int | None = None
    offline: bool | None = None
    auth: str | None = None
    reason: str | None = None
    lines: list | None = None
    item: str | None = None   # sess_open of a rental: the item's tag (SPEC field 21)
    # SPEC §6 Quarantine: why this authenticated record cannot be committed (a §7 code, or
    # "commit_error"); it then takes its place in the chain but lands in `quarantine`, not `records`
    quarantine: str | None = None
    quarantine_detail: str = ""

    @classmethod
    def from_message(cls, device: str, msg: Mapping[str, Any], payload: bytes, raw: bytes) -> "Record":
        """From a message decoded by the host codec (field names), its payload bytes and envelope."""
        t = msg["type"]
        number = TYPE_NUMBERS.get(t, t)
        if number not in RECORD_TYPES:
            raise ValueError(f"not a record type: {t!r}")
        lines = msg.get("lines")
        return cls(device=device, seq=msg["seq"], type=number, sid=msg["sid"], prev=bytes(msg["prev"]),
                   hash=chain_hash(payload), raw=bytes(raw), payer=msg.get("payer"),
                   amount=msg.get("amount"), currency=msg.get("cur"), t0=msg.get("t0"),
                   t1=msg.get("t1"), slot=msg.get("slot"), offline=msg.get("offline"),
                   auth=msg.get("auth"), reason=msg.get("reason"),
                   lines=[list(x) for x in lines] if lines is not None else None, item=msg.get("item"))

    @property
    def type_name(self) -> str:
        return RECORD_TYPES[self.type]


@dataclass(frozen=True)
class Head:
    seq: int
    hash: bytes


@dataclass(frozen=True)
class Result:
    device: str
    seq: int
    outcome: Outcome
    detail: str = ""


@dataclass
class CommitResult:
    results: list[Result]
    heads: dict[str, Head | None]          # every device of the batch, after the commit

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)


@dataclass
class Session:
    device: str
    sid: str
    state: str                 # "open" | "closed"
    payer: str | None
    slot: int | None
    t0: int | None
    t1: int | None
    amount: int | None
    currency: str | None
    offline: bool | None
    auth: str | None
    reason: str | None
    lines: list | None
    open_seq: int | None
    last_seq: int
    close_seq: int | None


@dataclass
class Reconciliation:
    missing: list[int] = field(default_factory=list)     # in the journal, not in the ledger
    extra: list[int] = field(default_factory=list)       # in the ledger, not in the journal
    mismatched: list[int] = field(default_factory=list)  # same seq, different bytes

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.mismatched)



def _int(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, float):  # never: money columns are integers in both backends
        raise LedgerError(f"a float in the ledger: {v!r}")
    i = int(v)
    if i != v:
        raise LedgerError(f"not an integer: {v!r}")
    return i

