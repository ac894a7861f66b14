"""The high-level API: messages by field names in, sealed COSE_Mac0 bytes out, and back."""
from __future__ import annotations

from typing import Any, Mapping

from .cbor import MAX_CHUNK_DATA, MAX_STRING, decode, decode_own, encode
from .cose import build_mac0, verify_mac0
from .ids import topic_for_suffix
from .schema import from_wire, message_type, to_wire


def topic(device_id: str, type_name: str | int) -> str:
    """The topic a message type travels on: ``topic("gate-001", "sess_close")`` ->
    ``"v1/dev/gate-001/up/rec"``."""
    return topic_for_suffix(device_id, message_type(type_name).suffix)


def payload_bstr_bound(topic: str | None) -> int:
    """The bound of a byte string that is a value of the payload's top-level map (SPEC §3): a
    firmware chunk's data on dn/ota may be 1536 bytes; everywhere else (and without a topic) the
    512-byte string bound holds. Judged on the topic's end, before the payload's type is known,
    as the device does (a topic that is not v1's is refused ``bad_topic`` after the decode)."""
    return MAX_CHUNK_DATA if isinstance(topic, str) and topic.endswith("/dn/ota") else MAX_STRING


def encode_payload(message: Mapping[str | int, Any], topic: str | None = None) -> bytes:
    """Validate a message by field names and return its deterministic payload bytes. A chunk
    whose data is over 512 bytes needs its topic (dn/ota): without one the usual bound holds."""
    data = encode(to_wire(message))
    # whatever we send, we would accept
    from_wire(decode_own(data, payload_bstr_bound(topic)), topic)
    return data


def decode_payload(data: bytes, topic: str | None = None) -> dict[str, Any]:
    """Strictly decode and validate payload bytes; the message by field names."""
    return from_wire(decode(data, top_bstr=payload_bstr_bound(topic)), topic)


def seal(key: bytes, kid: bytes | str, topic: str, message: Mapping[Any, Any]) -> bytes:
    """Encode, validate and MAC a message for ``topic``; the bytes to publish."""
    return build_mac0(key, kid, topic, encode_payload(message, topic))


def open_message(key: bytes, kid: bytes | str, topic: str, data: bytes) -> dict[str, Any]:
    """Verify and decode a message received on ``topic`` (SPEC §7 order); raises ProtocolError."""
    return decode_payload(verify_mac0(key, kid, topic, data), topic)
