"""Property tests of the host codec: hostile bytes only ever raise ProtocolError."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest import mock

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host_tools.protocol import (
    MAX_MESSAGE, ProtocolError, build_mac0, decode, decode_payload, encode, open_message,
)

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads((ROOT / "protocol" / "vectors" / "vectors.json").read_text())
MESSAGES = [(bytes.fromhex(v["key"]), v["kid"], v["topic"], bytes.fromhex(v["hex"]))
            for v in VECTORS]


def _payload_of(data: bytes) -> bytes | None:
    try:
        return bytes(cbor2.loads(data).value[2])
    except Exception:
        return None


PAYLOADS = [p for p in (_payload_of(m[3]) for m in MESSAGES) if p is not None]
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


REFUSED = object()


def only_protocol_errors(fn: Any, *args: Any) -> Any:
    """Call fn; a ProtocolError is fine (REFUSED), anything else fails the test."""
    try:
        return fn(*args)
    except ProtocolError:
        return REFUSED


@st.composite
def mutated(draw: st.DrawFn, corpus: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0x18, 0x1f, 0x5f, 0x7f, 0x9f, 0xbf, 0xc1,
                                              0xd1, 0xf4, 0xf7, 0xf9, 0xfb, 0xff]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and data:
            del data[pos]
        elif op == "truncate":
            del data[pos:]
        elif op == "dup":
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 16))]
    return bytes(data)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_decode(data: bytes) -> None:
    value = only_protocol_errors(decode, data)
    if value is not REFUSED:
        assert encode(value) == data


@FUZZ
@given(st.binary(max_size=300), st.booleans())
def test_random_bytes_open(data: bytes, tagged: bool) -> None:
    key, kid, topic, _ = MESSAGES[0]
    only_protocol_errors(open_message, key, kid, topic, (b"\xd1" if tagged else b"") + data)


@FUZZ
@given(mutated([m[3] for m in MESSAGES]), st.sampled_from(MESSAGES))
def test_mutated_messages(data: bytes, receiver: tuple[bytes, str, str, bytes]) -> None:
    key, kid, topic, _ = receiver
    only_protocol_errors(open_message, key, kid, topic, data)
    value = only_protocol_errors(lambda d: decode(d, envelope=True), data)
    if value is not REFUSED:
        assert encode(value) == data


@FUZZ
@given(mutated(PAYLOADS), st.sampled_from(MESSAGES))
def test_mutated_payloads_behind_a_valid_mac(payload: bytes,
                                             receiver: tuple[bytes, str, str, bytes]) -> None:
    """A valid MAC over a mutated payload reaches the payload decoder and the schema."""
    key, kid, topic, _ = receiver
    try:
        data = build_mac0(key, kid, topic, payload)
    except ProtocolError:
        return  # over the message bound
    only_protocol_errors(open_message, key, kid, topic, data)
    message = only_protocol_errors(decode_payload, payload, topic)
    if message is not REFUSED:
        assert encode(decode(payload)) == payload


@FUZZ
@given(st.binary(min_size=MAX_MESSAGE + 1, max_size=MAX_MESSAGE + 64))
def test_byte_cap_before_decoding(data: bytes) -> None:
    with mock.patch.object(cbor2, "CBORDecoder", side_effect=AssertionError("decoded")), \
            mock.patch("host_tools.protocol.cbor._Scanner", side_effect=AssertionError("scanned")):
        for fn in (decode, lambda d: open_message(*MESSAGES[0][:3], d)):
            try:
                fn(data)
            except ProtocolError as exc:
                assert exc.code == "too_large"
            else:
                raise AssertionError("accepted")


keys = st.one_of(st.integers(-(1 << 64), (1 << 64) - 1), st.text(max_size=8))
leaves = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 64), (1 << 64) - 1),
                   st.binary(max_size=20), st.text(max_size=20))
values = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=5)), max_leaves=30)


@FUZZ
@given(values)
def test_deterministic_round_trip(value: Any) -> None:
    data = encode(value)
    assert decode(data) == value
    assert encode(decode(data)) == data
    # insertion order never matters
    if isinstance(value, dict):
        assert encode(dict(reversed(list(value.items())))) == data


@FUZZ
@given(values)
def test_cbor2_agrees_on_accepted_values(value: Any) -> None:
    data = encode(value)
    assert cbor2.loads(data) == value
