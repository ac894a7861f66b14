"""What ingest keeps in quarantine (SPEC §6): an authenticated record the codec refused, or one
from a revoked device or under a compromised key (a re-provisioned device's old one), as a
quarantined ledger Record that takes its place in the chain, or as Unplaceable when its seq or
prev cannot place it (kept aside, never acked). host_tools/cloud/ingest.py decides when; this
module is what such a record becomes."""
from __future__ import annotations

from host_tools.cloud.ledger import RECORD_TYPES, Record, chain_hash
from host_tools.protocol import ERROR_CODES, ProtocolError, decode
from host_tools.protocol.schema import MAX_COUNT


class Unplaceable(ProtocolError):
    """An authenticated record the codec refused whose seq or prev is unusable: it cannot be placed
    in the chain, so it is kept (ledger.quarantine_unplaced) and never acked."""

    def __init__(self, code: str, detail: str, device: str, raw: bytes):
        super().__init__(code if code in ERROR_CODES else "refused", detail)
        self.code = code  # the quarantine reason: a SPEC §7 code, or compromised_key / device_revoked
        self.device, self.raw = device, raw


class Revoked(Exception):
    """A revoked (or decommissioned) device's authentic record: kept in quarantine for audit."""
    code = "device_revoked"

    def __init__(self, status: str):
        super().__init__(status)
        self.detail = f"the device is {status}"


def quarantine_record(device: str, payload: bytes, raw: bytes, err: ProtocolError | Revoked) -> Record:
    """The quarantined Record of an authenticated payload the codec refused (SPEC §6 Quarantine);
    Unplaceable if its seq/prev cannot place it, ProtocolError as is if it is no record at all.
    The reason is err.code, or err.quarantine_code if it has one (registry.CompromisedKey: refused
    bad_kid, kept as compromised_key)."""
    code = getattr(err, "quarantine_code", err.code)
    try:
        p = decode(payload)
    except ProtocolError:
        p = None
    if isinstance(p, dict) and type(p.get(0)) is int and p[0] not in RECORD_TYPES:
        raise err  # another message type on up/rec: not money, a plain refusal
    seq = p.get(8) if isinstance(p, dict) else None
    prev = p.get(9) if isinstance(p, dict) else None
    if (not isinstance(p, dict) or type(seq) is not int or not 0 <= seq <= MAX_COUNT or type(prev) is not bytes
            or len(prev) != 16):
        raise Unplaceable(code, err.detail, device, raw)
    return Record(device=device, seq=seq, type=p[0] if type(p.get(0)) is int else 0, sid="",
                  prev=prev, hash=chain_hash(payload), raw=bytes(raw), quarantine=code,
                  quarantine_detail=err.detail)
