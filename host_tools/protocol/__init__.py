"""edgepay wire protocol v1, cloud side (cbor2 + cryptography). See protocol/SPEC.md."""
from .cbor import (MAX_DEPTH, MAX_ENTRIES, MAX_ITEMS, MAX_MESSAGE, MAX_STRING, Tag, decode,
                   encode)
from .cose import build_mac0, mac_structure, protected_header, verify_mac0
from .errors import ERROR_CODES, ERROR_NAMES, ProtocolError
from .ids import device_from_topic, is_device_id, make_kid, parse_kid, parse_topic
from .messages import decode_payload, encode_payload, open_message, seal, topic
from .schema import (MESSAGE_TYPES, TYPES_BY_NAME, Field, MessageType, from_wire, message_type,
                     to_wire)

__all__ = [
    "MAX_DEPTH", "MAX_ENTRIES", "MAX_ITEMS", "MAX_MESSAGE", "MAX_STRING", "Tag", "decode",
    "encode", "build_mac0", "mac_structure", "protected_header", "verify_mac0", "ERROR_CODES",
    "ERROR_NAMES", "ProtocolError", "device_from_topic", "is_device_id", "make_kid", "parse_kid",
    "parse_topic", "decode_payload", "encode_payload", "open_message", "seal", "topic",
    "MESSAGE_TYPES", "TYPES_BY_NAME", "Field", "MessageType", "from_wire", "message_type",
    "to_wire",
]
