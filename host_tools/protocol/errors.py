"""The one error type of the protocol codec and the SPEC §7 code table."""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

ERROR_CODES: Mapping[str, int] = MappingProxyType({
    "ok": 0,
    "malformed": 1,
    "trailing": 2,
    "non_canonical": 3,
    "indefinite": 4,
    "dup_key": 5,
    "too_deep": 6,
    "too_large": 7,
    "unsupported_cbor": 8,
    "bad_tag": 10,
    "bad_envelope": 11,
    "bad_alg": 12,
    "bad_kid": 13,
    "bad_mac": 14,
    "bad_type": 20,
    "missing": 21,
    "unknown_type": 22,
    "bad_value": 23,
    "bad_topic": 24,
    "wrong_audience": 30,
    "stale_seq": 31,
    "expired": 32,
    "not_yet_valid": 33,
    "clock_untrusted": 34,
    "replay": 35,
    "ttl_exceeded": 36,
    "future_iat": 37,
    "unsupported": 40,
    "bad_args": 41,
    "failed": 42,
    "refused": 43,
    "busy": 44,
})

ERROR_NAMES: Mapping[int, str] = MappingProxyType({n: c for c, n in ERROR_CODES.items()})


class ProtocolError(Exception):
    """A message was refused; ``code`` is the SPEC §7 name, ``number`` its number."""

    code: str
    number: int
    detail: str

    def __init__(self, code: str, detail: str = "") -> None:
        if code not in ERROR_CODES or code == "ok":
            raise ValueError(f"not an error code: {code!r}")
        self.code = code
        self.number = ERROR_CODES[code]
        self.detail = detail
        super().__init__(f"{code}: {detail}" if detail else code)

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.code, self.detail))
