"""The high-level API: messages by field names in, sealed COSE_Mac0 bytes out, and back."""
from __future__ import annotations

from typing import Any, Mapping

from .cbor import decode, decode_own, encode
from .cose import build_mac0, verify_mac0
from .ids import topic_for_suffix
from .schema import from_wire, message_type, to_wire


def topic(device_id: str, type_name: str | int) -> str:
    """The topic a message type travels on: ``topic("gate-001", "sess_close")`` ->
    ``"v1/dev/gate-001/up/rec"``."""
    return topic_for_suffix(device_id, message_type(type_name).suffix)


def encode_payload(message: Mapping[str | int, Any], topic: str | None = None) -> bytes:
    """Validate a message by field names and return its deterministic payload bytes."""
    data = encode(to_wire(message))
    from_wire(decode_own(data), topic)  # whatever we send, we would accept
    return data


def decode_payload(data: bytes, topic: str | None = None) -> dict[str, Any]:
    """Strictly decode and validate payload bytes; the message by field names."""
    return from_wire(decode(data), topic)


def seal(key: bytes, kid: bytes | str, topic: str, message: Mapping[Any, Any]) -> bytes:
    """Encode, validate and MAC a message for ``topic``; the bytes to publish."""
    return build_mac0(key, kid, topic, encode_payload(message, topic))


def open_message(key: bytes, kid: bytes | str, topic: str, data: bytes) -> dict[str, Any]:
    """Verify and decode a message received on ``topic`` (SPEC §7 order); raises ProtocolError."""
    return decode_payload(verify_mac0(key, kid, topic, data), topic)
