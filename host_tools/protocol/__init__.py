"""edgepay wire protocol v1, cloud side (cbor2 + cryptography). The contract is protocol/SPEC.md.

An implementation independent of the firmware's (firmware/cbor.py, cose.py, msg.py): the two share
no code and meet only in protocol/vectors/ and the cross-codec property tests.

    raw = seal(key, kid, topic("gate-001", "command"), {"type": "command", ...})   # COSE_Mac0 bytes
    msg = open_message(key, kid, topic, raw)      # verify (MAC, topic as AAD, kid) and decode: a dict
    verify_mac0(key, kid, topic, raw) -> payload bytes;  decode_payload(payload, topic) -> dict
    parse_topic("v1/dev/gate-001/up/rec") -> ("gate-001", "up/rec")

Messages are dicts with SPEC §4 field names ("type": "heartbeat", "seq", ...). Every failure is a
ProtocolError whose `code` is a SPEC §7 name (ERROR_CODES / ERROR_NAMES map names and numbers).
"""
from .cbor import (MAX_CHUNK_DATA, MAX_DEPTH, MAX_ENTRIES, MAX_ITEMS, MAX_MESSAGE, MAX_STRING, Tag,
                   decode, encode)
from .cose import build_mac0, mac_structure, protected_header, verify_mac0
from .errors import ERROR_CODES, ERROR_NAMES, ProtocolError
from .ids import device_from_topic, is_device_id, make_kid, parse_kid, parse_topic
from .messages import decode_payload, encode_payload, open_message, seal, topic
from .schema import (MESSAGE_TYPES, SESS_CLOSE, SESS_OPEN, SESS_UPDATE, TYPES_BY_NAME, Field, MessageType,
                     from_wire, message_type, to_wire)

__all__ = [
    "MAX_CHUNK_DATA", "MAX_DEPTH", "MAX_ENTRIES", "MAX_ITEMS", "MAX_MESSAGE", "MAX_STRING", "Tag", "decode",
    "encode", "build_mac0", "mac_structure", "protected_header", "verify_mac0", "ERROR_CODES",
    "ERROR_NAMES", "ProtocolError", "device_from_topic", "is_device_id", "make_kid", "parse_kid",
    "parse_topic", "decode_payload", "encode_payload", "open_message", "seal", "topic",
    "MESSAGE_TYPES", "TYPES_BY_NAME", "Field", "MessageType", "from_wire", "message_type",
    "to_wire", "SESS_OPEN", "SESS_UPDATE", "SESS_CLOSE",
]
