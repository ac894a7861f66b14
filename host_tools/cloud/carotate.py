"""The broker's CA rotated on the devices, cloud side (protocol/SPEC.md §12, docs/broker.md "The
CA"): `set_ca` {1: CA DER} stages the next CA beside the current one (trusted with it from the
device's next connect); `set_ca` {1: CA DER, 2: true} retires every other one, on a trial
connection that ends in the signed event ca_current {n, h} (the broker took the CA alone: it is the
device's only one now) or ca_refused {h, why} (three failed connects: both CAs again), h being the
first 8 bytes of the CA's SHA-256. The waiting is certrenew.trial's, as for set_cert's verdict.

    stage(client, "gate-001", der)            # -> {"device", "ca": n}
    retire(client, "gate-001", der, timeout=30)   # -> {"device", "n", "h"}; CaError("ca_refused", why)
"""
from __future__ import annotations

import hashlib
import time

from host_tools.cloud.certrenew import MAX_CERT, send_retrying, trial

VERDICTS = ("ca_current", "ca_refused")


class CaError(RuntimeError):
    """A device did not take the CA: `code` says where (bad_ca, refused, ca_refused, not_back)."""

    def __init__(self, code: str, detail: str = "") -> None:
        self.code, self.detail = code, detail
        super().__init__(f"{code}: {detail}" if detail else code)


def ca_h(der: bytes) -> bytes:
    """How the device's events name a CA: SHA-256(DER)[:8]."""
    return hashlib.sha256(der).digest()[:8]


def _check(der: bytes) -> None:
    if not (0 < len(der) <= MAX_CERT and der[:1] == b"\x30"):
        raise CaError("bad_ca", f"the CA is {len(der)} bytes of DER; the device takes 1-{MAX_CERT} starting with a SEQUENCE")


def stage(client, device: str, der: bytes, timeout: float = 30.0, busy_wait: float = 2.0) -> dict:
    """set_ca {1: der}: the device stores the CA and trusts it beside its current one from its next
    TLS connect. `busy` (a trial under way) is sent again every `busy_wait` s within `timeout`.
    -> {"device", "ca": n (its file ca<n>.der)}; CaError("refused", ...) otherwise."""
    _check(der)
    c = send_retrying(client, device, "set_ca", {1: der}, time.monotonic() + timeout, busy_wait)
    if not c.ok:
        raise CaError("refused", f"{c.state.value} {c.code} {c.data or ''}".strip())
    return {"device": device, "ca": (c.data or {}).get("ca")}


def retire(client, device: str, der: bytes, timeout: float = 30.0, busy_wait: float = 2.0) -> dict:
    """set_ca {1: der, 2: true}: the device tries `der` alone on a new connection; wait (`timeout` s
    in all, `busy` answers sent again every `busy_wait` s) for its verdict. -> {"device", "n", "h"}
    on ca_current; CaError ca_refused (the broker's certificate is not from this CA: the device trusts
    both again), refused (the command failed) or not_back (no verdict in time: it may still come)."""
    _check(der)
    h = ca_h(der)
    _, detail, code = trial(client, device, "set_ca", {1: der, 2: True}, h, VERDICTS, timeout, busy_wait, CaError)
    if code != "ca_current":
        raise CaError("ca_refused", f"the device could not connect with the new CA alone ({detail.get('why')}) "
                      "and trusts both CAs again")
    return {"device": device, "n": detail.get("n"), "h": h.hex()}
