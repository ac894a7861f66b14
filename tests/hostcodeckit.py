"""Test kit for the host (cloud) codec tests (tests/test_host_codec.py,
tests/test_host_codec_pycose.py): the golden vectors, the key/kid/topic and heartbeat they share,
the SPEC §9 JSON form both ways, and `rejects`, which checks a ProtocolError's code and number."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from host_tools.protocol import ERROR_CODES, ProtocolError

ROOT = Path(__file__).resolve().parent.parent
VECTORS_PATH = ROOT / "protocol" / "vectors" / "vectors.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text())
KEY = bytes(range(32))
KID = "gate-001:1"
HB_TOPIC = "v1/dev/gate-001/up/hb"
HB = {"type": "heartbeat", "seq": 42, "uptime": 3600, "heap": 81234, "jdepth": 0, "clock": 1}


def to_json(value: Any) -> Any:
    """A decoded value in the SPEC §9 JSON form."""
    if isinstance(value, bytes):
        return {"$hex": value.hex()}
    if isinstance(value, dict):
        return {"$map": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def from_json(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$hex"}:
        return bytes.fromhex(value["$hex"])
    if isinstance(value, dict) and set(value) == {"$map"}:
        return {from_json(k): from_json(v) for k, v in value["$map"]}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def message_of(decoded: dict[str, Any]) -> dict[str, Any]:
    """A vector's ``decoded`` as a message for ``seal``."""
    return {name: from_json(value) for name, value in decoded.items()}


def rejects(code: str, fn: Any, *args: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        fn(*args)
    assert info.value.code == code, info.value
    assert info.value.number == ERROR_CODES[code]
    return info.value
