"""What the session service (host_tools/cloud/sessions.py) knows and says: purposes, auth reasons,
a session's state, flags, tariffs sent, and a closed session waiting to be charged."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only
    from host_tools.cloud.ledger_model import Record, Session

REQ_FILTER = "v1/dev/+/up/req"
PURPOSES = {"gate": {"entry", "exit", "reauth"}, "vending": {"vend", "reauth"},
            "rental": {"rent", "return", "reauth"}}
OPENING = {"entry", "vend", "rent"}
CLOSING = {"exit", "return"}

# auth reasons (<= 32 characters, SPEC: auth arg 5)
R_QR = "scan QR to pay"
R_UNKNOWN = "unknown payer"
R_REFUSED = "credit refused"
R_UNAVAILABLE = "provider unavailable"
R_NO_TARIFF = "no tariff"
R_PURPOSE = "bad purpose"
R_CLOSED = "order closed"
R_CONFLICT = "order conflict"
R_NO_ORDER = "no order"


@dataclass
class Flag:
    kind: str
    device: str
    sid: str
    detail: str
    order_no: str | None = None
    device_amount: int | None = None
    cloud_amount: int | None = None
    charged: int | None = None
    cur: str | None = None
    at: float = 0.0


@dataclass
class SessionState:
    """What the service knows of one (device, sid)."""
    device: str
    sid: str
    kind: str
    payer: str | None = None            # the id the device saw (plate, QR, tag)
    account: str | None = None          # the pay-after account it is bound to
    order_no: str | None = None
    t0: int | None = None
    status: str = "new"                 # new | authorized | denied | awaiting_qr | paid | closing | settled | pending | unpaid
    granted: bool | None = None
    limit: int | None = None
    cur: str | None = None
    qr_amount: int | None = None        # the fee the QR path will charge (set by a denied exit)
    device_amount: int | None = None    # last amount the device reported (exit/return or sess_close)
    cloud_amount: int | None = None     # last amount the cloud computed
    charged: int | None = None          # what the provider charged (DONE)
    closed: bool = False                # a sess_close was settled
    last_deny_at: float | None = None   # a transient deny (orders in doubt: swept later)
    answers: int = 0


@dataclass
class TariffState:
    args: dict
    command: Any = None                 # the set_tariff Command (None after a restart)
    sent_at: float = 0.0


@dataclass
class CloseRecord:
    """A committed sess_close as the settle path needs it (a ledger Record or Session carries the
    same attributes); what the store keeps for a settlement still to be retried."""
    device: str
    sid: str
    payer: str | None = None
    t0: int | None = None
    t1: int | None = None
    amount: int | None = None
    currency: str | None = None
    reason: str | None = None
    lines: list | None = None
    auth: str | None = None
    seq: int | None = None

    @classmethod
    def of(cls, r: "Record | Session") -> "CloseRecord":
        """The settle path's input from a committed sess_close Record or a closed ledger Session."""
        return cls(r.device, r.sid, r.payer, r.t0, r.t1, r.amount, r.currency, r.reason,
                   [list(x) for x in r.lines] if r.lines is not None else None, r.auth,
                   getattr(r, "seq", getattr(r, "close_seq", None)))


def lines_taken(lines: list | None) -> list:
    return [[ln[0], ln[1]] for ln in (lines or [])]
