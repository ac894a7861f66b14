"""The payload schema (SPEC §4): message types, their fields, and validation in SPEC §7 order."""
from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

from .cbor import MAX_CHUNK_DATA
from .errors import ERROR_NAMES, ProtocolError
from .ids import DEVICE_ID_RE, TOPIC_TYPES, parse_topic

CURRENCY_RE = re.compile(r"[A-Z]{3}")
RESET_CAUSES = frozenset({"power_on", "hard", "soft", "watchdog", "deepsleep", "brownout",
                          "unknown"})
DEVICE_KINDS = frozenset({"gate", "vending", "rental"})
AUTH_PURPOSES = frozenset({"entry", "exit", "vend", "rent", "return", "reauth"})
KEY_TYPE = 0
# Integer bounds (SPEC §4): nothing past them reaches a database column (signed 64-bit), a JSON
# number (exact to 2^53) or a SUM over many rows. Every uint/int field has one; COUNT by default.
MAX_COUNT = (1 << 53) - 1  # seqs, counts, sizes, qty, slot, boots, uptime, heap; |rssi|
MAX_TIME = (1 << 32) - 1  # Unix seconds: iat, exp, nbf, t0, t1 (to 2106)
MAX_MONEY = 10 ** 12  # minor units: amount, unit_price


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def _is_uint(v: Any) -> bool:
    return type(v) is int and v >= 0


def _is_uint_list(v: Any) -> bool:
    return type(v) is list and all(_is_uint(x) for x in v)


def _is_line(v: Any) -> bool:
    return (type(v) is list and len(v) == 3 and type(v[0]) is str
            and _is_uint(v[1]) and _is_uint(v[2]))


_TYPE_CHECKS: Mapping[str, Callable[[Any], bool]] = MappingProxyType({
    "uint": _is_uint,
    "int": lambda v: type(v) is int,
    "bool": lambda v: type(v) is bool,
    "tstr": lambda v: type(v) is str,
    "bstr": lambda v: type(v) is bytes,
    "map": lambda v: type(v) is dict,
    "tstr_list": lambda v: type(v) is list and all(type(x) is str for x in v),
    "lines": lambda v: type(v) is list and all(_is_line(x) for x in v),
    "uint_list": _is_uint_list,
})
_INT_KINDS = ("uint", "int", "uint_list")


@dataclass(frozen=True)
class Field:
    """One payload field. ``size`` bounds a string's UTF-8 length, a bstr's length or a list's
    entry count; ``item_size`` bounds each string inside a list; ``choices`` and ``pattern``
    restrict text and integer values; ``max`` bounds an integer (|value| for ``int``, each entry
    of a ``uint_list``); a line's qty and unit_price have their own (MAX_COUNT, MAX_MONEY)."""

    key: int
    name: str
    kind: str
    required: bool = True
    size: tuple[int, int] | None = None
    item_size: tuple[int, int] | None = None
    choices: frozenset[Any] | None = None
    pattern: re.Pattern[str] | None = None
    max: int | None = None

    def optional(self) -> "Field":
        return Field(self.key, self.name, self.kind, False, self.size, self.item_size,
                     self.choices, self.pattern, self.max)

    def check(self, value: Any) -> None:
        """Type (``bad_type``) then range (``bad_value``) of a present value."""
        if not _TYPE_CHECKS[self.kind](value):
            raise ProtocolError("bad_type", f"{self.name} is not {self.kind}")
        if not self._in_range(value):
            raise ProtocolError("bad_value", f"{self.name} out of range")

    def _in_range(self, value: Any) -> bool:
        if self.size is not None:
            lo, hi = self.size
            n = _utf8_len(value) if isinstance(value, str) else len(value)
            if not lo <= n <= hi:
                return False
        if self.item_size is not None:
            lo, hi = self.item_size
            texts = [x[0] if isinstance(x, list) else x for x in value]
            if not all(lo <= _utf8_len(t) <= hi for t in texts):
                return False
        items: Any = value  # the kind fixed its shape (validated before): not the str narrowed above
        if self.max is not None:
            ints = items if self.kind == "uint_list" else [abs(int(items))]
            if any(x > self.max for x in ints):
                return False
        if self.kind == "lines" and any(q > MAX_COUNT or p > MAX_MONEY for _, q, p in items):
            return False
        if self.choices is not None and value not in self.choices:
            return False
        return self.pattern is None or self.pattern.fullmatch(value) is not None


def _f(key: int, name: str, kind: str, **kw: Any) -> Field:
    if kind in _INT_KINDS:
        kw.setdefault("max", MAX_COUNT)
    return Field(key, name, kind, **kw)


# common claims (keys 0-9)
AUD = _f(3, "aud", "tstr", pattern=DEVICE_ID_RE)  # a device id
EXP = _f(4, "exp", "uint", max=MAX_TIME)
NBF = _f(5, "nbf", "uint", max=MAX_TIME)
IAT = _f(6, "iat", "uint", max=MAX_TIME)
CTI = _f(7, "cti", "bstr", size=(8, 16))
SEQ = _f(8, "seq", "uint")
PREV = _f(9, "prev", "bstr", size=(16, 16))
# shared per-type fields
CODE = _f(10, "code", "tstr", size=(1, 32))
DETAIL = _f(11, "detail", "map", required=False)
SID = _f(10, "sid", "tstr", size=(1, 32))
PAYER = _f(11, "payer", "tstr", size=(1, 64))
SLOT = _f(12, "slot", "uint", required=False)
T0 = _f(13, "t0", "uint", max=MAX_TIME)
OFFLINE = _f(14, "offline", "bool", required=False)
AUTH = _f(15, "auth", "tstr", size=(1, 64), required=False)
AMOUNT = _f(16, "amount", "uint", max=MAX_MONEY)
CUR = _f(17, "cur", "tstr", pattern=CURRENCY_RE)
T1 = _f(18, "t1", "uint", max=MAX_TIME)
NONCE = _f(10, "nonce", "bstr", size=(8, 16))  # time_req / time (SPEC §5)
REL = _f(10, "rel", "bstr", size=(8, 8))  # chunk_req / chunk: SHA-256(release payload)[:8] (§10)
CHUNK_INDEX = _f(11, "i", "uint")


@dataclass(frozen=True)
class MessageType:
    number: int
    name: str
    suffix: str  # topic suffix, e.g. "up/rec"
    fields: tuple[Field, ...]  # ascending key order

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


def _type(number: int, name: str, suffix: str, *fields: Field) -> MessageType:
    ordered = tuple(sorted(fields, key=lambda f: f.key))
    assert len({f.key for f in ordered}) == len(ordered)
    assert number in TOPIC_TYPES[suffix]
    return MessageType(number, name, suffix, ordered)


MESSAGE_TYPES: Mapping[int, MessageType] = MappingProxyType({t.number: t for t in (
    _type(1, "hello", "up/hello", SEQ, IAT.optional(),
          _f(10, "fw", "tstr", size=(1, 32)), _f(11, "board", "tstr", size=(1, 32)),
          _f(12, "reset", "tstr", choices=RESET_CAUSES),
          _f(13, "caps", "tstr_list", size=(0, 16), item_size=(1, 16)),
          _f(14, "kind", "tstr", choices=DEVICE_KINDS), _f(15, "boots", "uint", required=False)),
    _type(2, "status", "up/status", SEQ, IAT.optional(), _f(10, "online", "bool")),
    _type(3, "heartbeat", "up/hb", SEQ, IAT.optional(), _f(10, "uptime", "uint"),
          _f(11, "heap", "uint"), _f(12, "jdepth", "uint"), _f(13, "rssi", "int", required=False),
          _f(14, "clock", "uint", choices=frozenset({0, 1})), _f(15, "rx_refused", "uint", required=False),
          _f(16, "rx_oversize", "uint", required=False), _f(17, "rx_dropped", "uint", required=False),
          _f(18, "off_amt", "uint", required=False), _f(19, "off_n", "uint", required=False)),
    _type(4, "event", "up/evt", SEQ, IAT.optional(), CODE, DETAIL),
    _type(5, "alarm", "up/evt", SEQ, IAT.optional(), CODE, DETAIL, _f(12, "active", "bool")),
    _type(6, "sess_open", "up/rec", SEQ, PREV, SID, PAYER, SLOT, T0, OFFLINE, AUTH,
          AMOUNT.optional(), CUR.optional(), _f(21, "item", "tstr", size=(1, 64), required=False)),
    _type(7, "sess_update", "up/rec", SEQ, PREV, SID, AMOUNT, CUR, T1),
    _type(8, "sess_close", "up/rec", SEQ, PREV, SID, PAYER, SLOT, T0, OFFLINE, AUTH, AMOUNT, CUR,
          T1, _f(19, "lines", "lines", required=False, size=(0, 32), item_size=(1, 32)),
          _f(20, "reason", "tstr", size=(1, 16), required=False)),
    _type(9, "cmd_result", "up/res", SEQ, IAT.optional(), CTI.optional(),  # iat: CDDL
          _f(10, "status", "uint", choices=frozenset(ERROR_NAMES)),
          _f(11, "name", "tstr", size=(1, 24), required=False),
          _f(12, "data", "map", required=False), _f(13, "cseq", "uint", required=False)),
    _type(10, "auth_req", "up/req", SEQ, IAT.optional(), SID, PAYER, SLOT,
          _f(14, "purpose", "tstr", choices=AUTH_PURPOSES), AUTH, AMOUNT.optional(),
          CUR.optional(), _f(18, "t0", "uint", required=False, max=MAX_TIME),
          _f(19, "t1", "uint", required=False, max=MAX_TIME)),
    _type(11, "time_req", "up/time", SEQ, NONCE),
    _type(12, "chunk_req", "up/ota", SEQ, IAT.optional(), REL, CHUNK_INDEX),
    _type(20, "command", "dn/cmd", AUD, EXP, NBF.optional(), IAT, CTI, SEQ,
          _f(10, "name", "tstr", size=(1, 24)), _f(11, "args", "map", required=False)),
    _type(21, "ack", "dn/ack", AUD, IAT, SEQ, _f(10, "upto", "uint"),
          _f(11, "resend", "bool", required=False),
          _f(12, "quarantined", "uint_list", required=False, size=(0, 16))),
    _type(22, "time", "dn/time", AUD, IAT, SEQ, NONCE),
    # data: the one bstr over the 512-byte string bound, allowed on dn/ota only (SPEC §3)
    _type(23, "chunk", "dn/ota", AUD, IAT.optional(), SEQ.optional(), REL, CHUNK_INDEX,  # not numbered: §10
          _f(12, "data", "bstr", size=(1, MAX_CHUNK_DATA))),
)})

TYPES_BY_NAME: Mapping[str, MessageType] = MappingProxyType(
    {t.name: t for t in MESSAGE_TYPES.values()})

# The money record types by name (issue 11 §1: no `r.type == 6` in host code).
SESS_OPEN = TYPES_BY_NAME["sess_open"].number
SESS_UPDATE = TYPES_BY_NAME["sess_update"].number
SESS_CLOSE = TYPES_BY_NAME["sess_close"].number


def message_type(type_: str | int) -> MessageType:
    """Look a message type up by name (``"hello"``) or number (``1``)."""
    found = TYPES_BY_NAME.get(type_) if isinstance(type_, str) else (
        MESSAGE_TYPES.get(type_) if type(type_) is int else None)
    if found is None:
        raise ProtocolError("unknown_type", f"message type {type_!r}")
    return found


def from_wire(payload: Any, topic: str | None = None) -> dict[str, Any]:
    """Validate a decoded payload map (SPEC §7 order) and return it by field names.

    ``type`` is returned as its name; unknown keys are dropped. With ``topic`` the type must
    belong to it (``bad_topic``).
    """
    if type(payload) is not dict:
        raise ProtocolError("bad_type", "payload is not a map")
    if KEY_TYPE not in payload:
        raise ProtocolError("missing", "type")
    number = payload[KEY_TYPE]
    if not _is_uint(number):
        raise ProtocolError("bad_type", "type is not uint")
    mtype = MESSAGE_TYPES.get(number)
    if mtype is None:
        raise ProtocolError("unknown_type", f"message type {number}")
    if topic is not None and parse_topic(topic)[1] != mtype.suffix:
        raise ProtocolError("bad_topic", f"{mtype.name} does not belong on {topic}")
    out: dict[str, Any] = {"type": mtype.name}
    for field in mtype.fields:
        if field.key not in payload:
            if field.required:
                raise ProtocolError("missing", field.name)
            continue
        field.check(payload[field.key])
        out[field.name] = payload[field.key]
    if mtype.name in ("sess_open", "auth_req") and ("amount" in out) != ("cur" in out):
        raise ProtocolError("missing", "amount and cur come together")
    return out


def to_wire(message: Mapping[str | int, Any]) -> dict[int, Any]:
    """Turn a message by field names (``{"type": "hello", "seq": 1, ...}``) into its payload
    map. Integer keys pass through unchanged (extra fields for forward-compatibility tests).
    Validation is left to ``from_wire``."""
    if "type" not in message:
        raise ProtocolError("missing", "type")
    mtype = message_type(message["type"])
    wire: dict[int, Any] = {KEY_TYPE: mtype.number}
    for name, value in message.items():
        if name == "type":
            continue
        if isinstance(name, str):
            field = mtype.field(name)
            if field is None:
                raise ProtocolError("bad_value", f"{mtype.name} has no field {name!r}")
            key = field.key
        elif type(name) is int:
            key = name
        else:
            raise ProtocolError("bad_type", f"field name {name!r}")
        if key in wire:
            raise ProtocolError("dup_key", f"field {name!r} given twice")
        wire[key] = value
    return wire
