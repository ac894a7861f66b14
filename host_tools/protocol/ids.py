"""Device ids, MQTT topics and COSE key ids (SPEC §1, §2)."""
from __future__ import annotations

import re
from types import MappingProxyType
from typing import Mapping

from .errors import ProtocolError

DEVICE_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
TOPIC_PREFIX = "v1/dev/"

# topic suffix -> message type numbers it carries
TOPIC_TYPES: Mapping[str, frozenset[int]] = MappingProxyType({
    "up/hello": frozenset({1}),
    "up/status": frozenset({2}),
    "up/hb": frozenset({3}),
    "up/evt": frozenset({4, 5}),
    "up/rec": frozenset({6, 7, 8}),
    "up/res": frozenset({9}),
    "up/req": frozenset({10}),
    "up/time": frozenset({11}),
    "up/ota": frozenset({12}),
    "dn/cmd": frozenset({20}),
    "dn/ack": frozenset({21}),
    "dn/time": frozenset({22}),
    "dn/ota": frozenset({23}),
})


def is_device_id(value: object) -> bool:
    return isinstance(value, str) and DEVICE_ID_RE.fullmatch(value) is not None


def topic_for_suffix(device_id: str, suffix: str) -> str:
    if not is_device_id(device_id):
        raise ValueError(f"invalid device id {device_id!r}")
    if suffix not in TOPIC_TYPES:
        raise ValueError(f"unknown topic suffix {suffix!r}")
    return f"{TOPIC_PREFIX}{device_id}/{suffix}"


def parse_topic(topic: str) -> tuple[str, str]:
    """``"v1/dev/gate-001/up/rec"`` -> ``("gate-001", "up/rec")``; ``bad_topic`` otherwise."""
    if isinstance(topic, str) and topic.startswith(TOPIC_PREFIX):
        parts = topic[len(TOPIC_PREFIX):].split("/")
        if len(parts) == 3:
            device_id, suffix = parts[0], f"{parts[1]}/{parts[2]}"
            if is_device_id(device_id) and suffix in TOPIC_TYPES:
                return device_id, suffix
    raise ProtocolError("bad_topic", f"not an edgepay v1 topic: {topic!r}")


def device_from_topic(topic: str) -> str:
    return parse_topic(topic)[0]


def make_kid(device_id: str, version: int) -> bytes:
    """``make_kid("gate-001", 1) == b"gate-001:1"``."""
    if not is_device_id(device_id):
        raise ValueError(f"invalid device id {device_id!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"key version must be an integer >= 1, not {version!r}")
    return f"{device_id}:{version}".encode("ascii")


def parse_kid(kid: bytes | str) -> tuple[str, int]:
    """``b"gate-001:1"`` -> ``("gate-001", 1)``; ``bad_kid`` if it is not of that form."""
    try:
        text = kid.decode("ascii") if isinstance(kid, (bytes, bytearray)) else str(kid)
    except UnicodeDecodeError:
        raise ProtocolError("bad_kid", "kid is not ASCII") from None
    device_id, sep, version = text.rpartition(":")
    if (sep and is_device_id(device_id) and version.isascii() and version.isdigit()
            and not version.startswith("0")):
        return device_id, int(version)
    raise ProtocolError("bad_kid", f"kid not of the form device:version: {text!r}")
