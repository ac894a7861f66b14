"""The host (cloud) codec against the golden vectors and SPEC.md: the vector file, round trips,
topic/kid helpers, the CBOR profile, the envelope, the payload schema, and the cbor2 error mapping.
Interoperability with pycose is in tests/test_host_codec_pycose.py; the shared vectors and helpers
are in tests/hostcodeckit.py."""
from __future__ import annotations

import ast
import subprocess
import sys
from typing import Any

import cbor2
import pytest

from host_tools.protocol import (
    ERROR_CODES, ERROR_NAMES, MAX_CHUNK_DATA, MESSAGE_TYPES, ProtocolError, Tag, build_mac0, decode,
    decode_payload, device_from_topic, encode, encode_payload, make_kid, open_message,
    parse_kid, parse_topic, seal, to_wire, topic, verify_mac0,
)
from host_tools.protocol.messages import payload_bstr_bound
from host_tools.protocol.cose import compute_tag, protected_header
from tests.hostcodeckit import HB, HB_TOPIC, KEY, KID, ROOT, VECTORS, message_of, rejects, to_json


# --- the vectors -------------------------------------------------------------------------------

def test_vector_file_shape() -> None:
    names = [v["name"] for v in VECTORS]
    assert len(names) == len(set(names))
    invalid = [v for v in VECTORS if "error" in v]
    assert len(VECTORS) >= 45 and len(invalid) >= 20
    for v in VECTORS:
        assert {"name", "description", "key", "kid", "topic", "hex"} <= set(v)
        assert ("decoded" in v) != ("error" in v)
        assert v.get("error", "malformed") in ERROR_CODES
    covered_types = {v["decoded"]["type"] for v in VECTORS if "decoded" in v}
    assert covered_types == {t.name for t in MESSAGE_TYPES.values()}


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    key, data = bytes.fromhex(vector["key"]), bytes.fromhex(vector["hex"])
    if "error" in vector:
        rejects(vector["error"], open_message, key, vector["kid"], vector["topic"], data)
        return
    message = open_message(key, vector["kid"], vector["topic"], data)
    assert {k: to_json(v) for k, v in message.items()} == vector["decoded"]
    # sealing the decoded message again gives the same bytes (unless it dropped unknown keys)
    resealed = seal(key, vector["kid"], vector["topic"], message_of(vector["decoded"]))
    assert (resealed == data) != ("unknown_fields" in vector["name"])


def test_generator_check_passes() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "protocol/vectors/generate.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_generator_imports_neither_codec() -> None:
    # generate.py and the sibling modules it is split into: the standard library and each other only
    files = sorted((ROOT / "protocol/vectors").glob("*.py"))
    siblings = {f.stem for f in files}
    assert "generate" in siblings
    for f in files:
        tree = ast.parse(f.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in (node.names if isinstance(node, ast.Import)
                                  else [ast.alias(node.module or "")])}
        assert imported <= {"__future__", "hashlib", "hmac", "json", "sys", "pathlib", "typing"} | siblings, f


# --- round trips -------------------------------------------------------------------------------

def test_seal_open_round_trip_every_type() -> None:
    for vector in VECTORS:
        if "decoded" not in vector:
            continue
        message = message_of(vector["decoded"])
        data = seal(KEY, KID, vector["topic"], message)
        assert open_message(KEY, KID, vector["topic"], data) == message


def test_topic_and_kid_helpers() -> None:
    assert topic("gate-001", "sess_close") == "v1/dev/gate-001/up/rec"
    assert topic("gate-001", "command") == "v1/dev/gate-001/dn/cmd"
    assert topic("v9", 22) == "v1/dev/v9/dn/time"
    assert device_from_topic("v1/dev/gate-001/up/evt") == "gate-001"
    assert parse_topic("v1/dev/a/dn/ack") == ("a", "dn/ack")
    assert make_kid("gate-001", 1) == b"gate-001:1"
    assert parse_kid(b"gate-001:12") == ("gate-001", 12)
    assert parse_kid("x:3") == ("x", 3)
    for bad in ("v1/dev/Gate/up/hb", "v1/dev/a/up/nope", "v2/dev/a/up/hb", "v1/dev/a/b/up/hb",
                "v1/dev//up/hb", "v1/dev/" + "a" * 33 + "/up/hb"):
        rejects("bad_topic", parse_topic, bad)
    for bad_kid in (b"gate-001", b"gate-001:0", b"gate-001:01", b"gate-001:x", b":1", b"\xff:1",
                    b"Gate:1"):
        rejects("bad_kid", parse_kid, bad_kid)
    with pytest.raises(ValueError):
        make_kid("gate-001", 0)
    with pytest.raises(ValueError):
        make_kid("bad/id", 1)
    with pytest.raises(ValueError):
        topic("bad id", "hello")
    rejects("unknown_type", topic, "gate-001", "nope")


def test_error_table() -> None:
    assert ERROR_CODES["bad_mac"] == 14 and ERROR_NAMES[43] == "refused"
    assert len(ERROR_CODES) == 32
    err = ProtocolError("bad_kid", "detail")
    assert (err.code, err.number, str(err)) == ("bad_kid", 13, "bad_kid: detail")
    with pytest.raises(ValueError):
        ProtocolError("no_such_code")


# --- the CBOR profile --------------------------------------------------------------------------

@pytest.mark.parametrize("hexdata, code", [
    ("", "malformed"),
    ("18", "malformed"),                 # truncated argument
    ("1c", "malformed"),                 # reserved additional info
    ("1f", "malformed"),                 # ai 31 on an integer
    ("ff", "malformed"),                 # lone break
    ("f818", "malformed"),               # two-byte simple value < 32
    ("62c328", "malformed"),             # invalid UTF-8
    ("8301", "malformed"),               # truncated array
    ("0000", "trailing"),
    ("1801", "non_canonical"),
    ("390000", "non_canonical"),         # -1 with a 2-byte argument
    ("5801" "00", "non_canonical"),      # bstr length 1 in one extra byte
    ("a20200" "0100", "non_canonical"),  # keys 2, 1
    ("a2616201" "616100", "non_canonical"),
    ("a2010001" "01", "dup_key"),
    ("9f01ff", "indefinite"),
    ("5f4100ff", "indefinite"),
    ("f93c00", "unsupported_cbor"),
    ("f7", "unsupported_cbor"),
    ("f0", "unsupported_cbor"),
    ("f8ff", "unsupported_cbor"),
    ("c11a00000000", "unsupported_cbor"),
    ("c24101", "unsupported_cbor"),      # bignum
    ("d9d9f700", "unsupported_cbor"),    # self-describe tag
    ("d1820102", "unsupported_cbor"),    # tag 17 outside an envelope
    ("a1410001", "unsupported_cbor"),    # byte-string key
    ("a1f500", "unsupported_cbor"),      # boolean key
    ("a1800001", "unsupported_cbor"),    # array key
    ("81" * 8 + "80", "too_deep"),
    ("81" * 8 + "00", "too_deep"),
    ("5a00000201" + "00" * 513, "too_large"),
    ("7a7fffffff", "too_large"),         # bound checked before reading the string
    ("9b00000000ffffffff", "too_large"),  # count checked before reading the items
])
def test_decode_rejects(hexdata: str, code: str) -> None:
    rejects(code, decode, bytes.fromhex(hexdata))


def test_decode_bounds_accept_the_limit() -> None:
    assert decode(bytes.fromhex("81" * 7 + "00")) == [[[[[[[0]]]]]]]
    assert decode(bytes.fromhex("81" * 7 + "80")) == [[[[[[[[]]]]]]]]
    assert decode(encode("x" * 512)) == "x" * 512
    assert decode(encode([0] * 64)) == [0] * 64
    assert decode(encode({k: 0 for k in range(64)})) == {k: 0 for k in range(64)}
    rejects("too_large", decode, encode({k: 0 for k in range(65)}))
    big = [[0] * 63] * 4  # 1 + 4 + 252 = 257 items
    rejects("too_large", decode, encode(big))
    assert decode(encode([[0] * 63] * 3 + [[0] * 62])) is not None  # 256 items


def test_deterministic_encoder_orders_keys_bytewise() -> None:
    value = {"a": 1, 256: 2, -1: 3, 24: 4, 1: 5}
    assert encode(value).hex() == "a5" "0105" "181804" "19010002" "2003" "616101"
    # cbor2's canonical=True is RFC 7049 length-first: different, and rejected by the profile
    length_first = cbor2.dumps(value, canonical=True)
    assert length_first != encode(value)
    rejects("non_canonical", decode, length_first)
    assert encode(Tag(17, [b"", {}])) == bytes.fromhex("d18240a0")
    for bad in (1.5, {1.5: 0}, {b"k": 0}, {True: 0}, 1 << 64, -(1 << 64) - 1, object()):
        rejects("unsupported_cbor", encode, bad)
    assert decode(encode((1 << 64) - 1)) == (1 << 64) - 1
    assert decode(encode(-(1 << 64))) == -(1 << 64)


# --- the envelope ------------------------------------------------------------------------------

def _envelope(body: list[Any], tag: int | None = 17) -> bytes:
    return encode(Tag(tag, body) if tag is not None else body)


def _parts(payload: bytes = b"\xa0", kid: str = KID) -> tuple[bytes, bytes, bytes]:
    prot = protected_header(kid)
    return prot, payload, compute_tag(KEY, prot, HB_TOPIC, payload)


def test_envelope_rejections() -> None:
    prot, payload, tag = _parts(encode_payload(HB))
    good = build_mac0(KEY, KID, HB_TOPIC, payload)
    assert _envelope([prot, {}, payload, tag]) == good
    assert verify_mac0(KEY, KID, HB_TOPIC, good) == payload
    rejects("too_large", verify_mac0, KEY, KID, HB_TOPIC, good + bytes(2048))
    rejects("bad_tag", verify_mac0, KEY, KID, HB_TOPIC, _envelope([prot, {}, payload, tag], 98))
    rejects("bad_tag", verify_mac0, KEY, KID, HB_TOPIC, encode(b"just bytes"))
    for body in ([prot, {}, payload], [prot, {}, payload, tag, b""], [prot, [], payload, tag],
                 [prot, {}, None, tag], [prot, {}, payload, "tag"], {"a": 1}, [1, {}, payload, tag],
                 [prot, {1: 5}, payload, tag], [b"", {}, payload, tag],
                 [encode({1: 5}), {}, payload, tag], [encode([5, KID.encode()]), {}, payload, tag],
                 [encode({1: 5, 4: KID}), {}, payload, tag],
                 [encode({1: 5, 4: KID.encode(), 33: b""}), {}, payload, tag]):
        rejects("bad_envelope", verify_mac0, KEY, KID, HB_TOPIC, _envelope(body))
    rejects("malformed", verify_mac0, KEY, KID, HB_TOPIC,
            _envelope([b"\xa2\x01", {}, payload, tag]))
    long_kid_length = bytes.fromhex("a2010504590" + "00a") + KID.encode()  # kid length 00 0a
    rejects("non_canonical", verify_mac0, KEY, KID, HB_TOPIC,
            _envelope([long_kid_length, {}, payload, tag]))
    for alg in (4, 6, -7, "HS256", True, None):
        rejects("bad_alg", verify_mac0, KEY, KID, HB_TOPIC,
                _envelope([encode({1: alg, 4: KID.encode()}), {}, payload, tag]))
    rejects("bad_kid", verify_mac0, KEY, "gate-001:2", HB_TOPIC, good)
    rejects("bad_kid", verify_mac0, KEY, b"gate-002:1", HB_TOPIC, good)
    rejects("bad_mac", verify_mac0, bytes(32), KID, HB_TOPIC, good)
    rejects("bad_mac", verify_mac0, KEY, KID, "v1/dev/gate-001/up/evt", good)
    rejects("bad_mac", verify_mac0, KEY, KID, HB_TOPIC, _envelope([prot, {}, payload, tag[:31]]))
    rejects("bad_mac", verify_mac0, KEY, KID, HB_TOPIC, _envelope([prot, {}, payload, tag + b"\0"]))
    rejects("bad_mac", verify_mac0, KEY, KID, HB_TOPIC, _envelope([prot, {}, payload, bytes(32)]))
    with pytest.raises(ValueError):
        verify_mac0(b"short", KID, HB_TOPIC, good)


def test_verification_order() -> None:
    """Several defects at once: the one earliest in SPEC §7's order is reported."""
    prot, payload, tag = _parts(b"\xf9\x3c\x00")  # payload: a float, and not a map
    # a bad MAC hides every payload defect
    rejects("bad_mac", open_message, KEY, KID, HB_TOPIC, _envelope([prot, {}, payload, bytes(32)]))
    # a wrong kid hides a bad MAC; a bad alg hides a wrong kid; a bad tag hides a bad alg
    rejects("bad_kid", verify_mac0, KEY, "gate-001:9", HB_TOPIC,
            _envelope([prot, {}, payload, bytes(32)]))
    bad_alg = encode({1: 4, 4: b"other:1"})
    rejects("bad_alg", verify_mac0, KEY, KID, HB_TOPIC, _envelope([bad_alg, {}, payload, bytes(5)]))
    rejects("bad_tag", verify_mac0, KEY, KID, HB_TOPIC, _envelope([bad_alg, {}, payload, b""], 16))
    # envelope CBOR errors come before the tag check
    rejects("trailing", verify_mac0, KEY, KID, HB_TOPIC, _envelope([bad_alg], 16) + b"\0")
    # payload CBOR before the map check, the map check before the type
    rejects("unsupported_cbor", open_message, KEY, KID, HB_TOPIC,
            build_mac0(KEY, KID, HB_TOPIC, payload))
    # type before topic, topic before fields
    wrong = encode({0: 3, 8: "not a uint"})
    rejects("bad_topic", open_message, KEY, KID, "v1/dev/gate-001/up/evt",
            build_mac0(KEY, KID, "v1/dev/gate-001/up/evt", wrong))
    rejects("unknown_type", open_message, KEY, KID, HB_TOPIC,
            build_mac0(KEY, KID, HB_TOPIC, encode({0: 24, 8: "x"})))


# --- the payload schema ------------------------------------------------------------------------

def _wire(**changes: Any) -> dict[int, Any]:
    wire: dict[int, Any] = {0: 3, 8: 42, 10: 3600, 11: 81234, 12: 0, 14: 1}
    for key, value in changes.items():
        k = int(key[1:])
        if value is KeyError:
            del wire[k]
        else:
            wire[k] = value
    return wire


@pytest.mark.parametrize("wire, code", [
    ([3, 42], "bad_type"),
    (b"map", "bad_type"),
    (_wire(k0=KeyError), "missing"),
    (_wire(k0="heartbeat"), "bad_type"),
    (_wire(k0=-3), "bad_type"),
    (_wire(k0=99), "unknown_type"),
    (_wire(k0=1), "bad_topic"),
    (_wire(k8=KeyError), "missing"),
    (_wire(k8=True), "bad_type"),
    (_wire(k8=-1), "bad_type"),
    (_wire(k10="1"), "bad_type"),
    (_wire(k13="x"), "bad_type"),
    (_wire(k14=2), "bad_value"),
    (_wire(k14=KeyError), "missing"),
    (_wire(k6=-1), "bad_type"),
    # fields are checked in ascending key order: iat (6) before seq (8)
    (_wire(k6="x", k8=KeyError), "bad_type"),
    (_wire(k8=KeyError, k10="x"), "missing"),
])
def test_heartbeat_schema(wire: Any, code: str) -> None:
    rejects(code, decode_payload, encode(wire), HB_TOPIC)


@pytest.mark.parametrize("message, code", [
    ({"type": "hello", "seq": 1, "fw": "x" * 33, "board": "b", "reset": "hard", "caps": [],
      "kind": "gate"}, "bad_value"),
    ({"type": "hello", "seq": 1, "fw": "1", "board": "b", "reset": "hard", "caps": ["x" * 17],
      "kind": "gate"}, "bad_value"),
    ({"type": "hello", "seq": 1, "fw": "1", "board": "b", "reset": "hard", "caps": [1],
      "kind": "gate"}, "bad_type"),
    ({"type": "hello", "seq": 1, "fw": "1", "board": "b", "reset": "hard", "caps": [],
      "kind": "kiosk"}, "bad_value"),
    ({"type": "status", "seq": 1, "online": 1}, "bad_type"),
    ({"type": "event", "seq": 1, "code": ""}, "bad_value"),
    ({"type": "event", "seq": 1, "code": "c", "detail": [1]}, "bad_type"),
    ({"type": "alarm", "seq": 1, "code": "c"}, "missing"),
    ({"type": "sess_open", "seq": 1, "prev": bytes(16), "sid": "s", "payer": "p", "t0": 1,
      "cur": "EUR"}, "missing"),
    ({"type": "sess_open", "seq": 1, "prev": bytes(16), "sid": "s", "payer": "p" * 65,
      "t0": 1}, "bad_value"),
    ({"type": "sess_update", "seq": 1, "prev": bytes(17), "sid": "s", "amount": 1, "cur": "EUR",
      "t1": 2}, "bad_value"),
    ({"type": "sess_update", "seq": 1, "prev": bytes(16), "sid": "s", "amount": 1, "cur": "EURO",
      "t1": 2}, "bad_value"),
    ({"type": "sess_update", "seq": 1, "prev": bytes(16), "sid": "s", "amount": -1, "cur": "EUR",
      "t1": 2}, "bad_type"),
    ({"type": "sess_close", "seq": 1, "prev": bytes(16), "sid": "s", "payer": "p", "t0": 1,
      "amount": 1, "cur": "EUR", "t1": 2, "lines": [["", 1, 1]]}, "bad_value"),
    ({"type": "sess_close", "seq": 1, "prev": bytes(16), "sid": "s", "payer": "p", "t0": 1,
      "amount": 1, "cur": "EUR", "t1": 2, "lines": [["a", 1, 1]] * 33}, "bad_value"),
    ({"type": "sess_close", "seq": 1, "prev": bytes(16), "sid": "s", "payer": "p", "t0": 1,
      "amount": 1, "cur": "EUR", "t1": 2, "lines": [["a", 1, -1]]}, "bad_type"),
    ({"type": "sess_close", "seq": 1, "prev": bytes(16), "sid": "s", "payer": "p", "t0": 1,
      "amount": 1, "cur": "EUR", "t1": 2, "reason": "r" * 17}, "bad_value"),
    ({"type": "cmd_result", "seq": 1, "status": 9}, "bad_value"),
    ({"type": "cmd_result", "seq": 1, "status": 0, "cti": bytes(17)}, "bad_value"),
    ({"type": "cmd_result", "seq": 1, "status": 0, "name": "n" * 25}, "bad_value"),
    ({"type": "command", "aud": "gate-001", "exp": 1, "iat": 1, "cti": bytes(8), "seq": 1},
     "missing"),
    ({"type": "command", "aud": "gate:001", "exp": 1, "iat": 1, "cti": bytes(8), "seq": 1,
      "name": "open"}, "bad_value"),
    ({"type": "ack", "aud": "gate-001", "iat": 1, "seq": 1, "upto": 1, "resend": "yes"},
     "bad_type"),
    ({"type": "time", "aud": "gate-001", "seq": 1}, "missing"),
    ({"type": "time", "aud": "gate-001", "iat": 1, "seq": 1, "upto": 3}, "bad_value"),
    ({"type": "nope", "seq": 1}, "unknown_type"),
    ({"seq": 1}, "missing"),
    ({"type": "time", "aud": "gate-001", "iat": 1, "seq": 1, 6: 2}, "dup_key"),
    ({"type": "event", "seq": 1, "code": "c", "detail": {1.5: 1}}, "unsupported_cbor"),
    ({"type": "event", "seq": 1, "code": "c", "detail": {1: "x" * 513}}, "too_large"),
])
def test_seal_validates(message: dict[Any, Any], code: str) -> None:
    try:
        name = message["type"]
        dest = topic("gate-001", name)
    except (KeyError, ProtocolError):
        dest = HB_TOPIC
    rejects(code, seal, KEY, KID, dest, message)


def test_unknown_fields_are_ignored_and_kept_out() -> None:
    data = seal(KEY, KID, HB_TOPIC, {**HB, 99: "future", 13: -90})
    assert open_message(KEY, KID, HB_TOPIC, data) == {**HB, "rssi": -90}
    assert decode_payload(encode({**_wire(), "x": [1, {"y": None}]})) == {**HB}


def test_seal_checks_topic_and_size() -> None:
    rejects("bad_topic", seal, KEY, KID, "v1/dev/gate-001/up/evt", HB)
    rejects("bad_topic", seal, KEY, KID, "v1/dev/gate-001/up/nothing", HB)
    big = {"type": "event", "seq": 1, "code": "c", "detail": {k: "x" * 500 for k in range(4)}}
    rejects("too_large", seal, KEY, KID, "v1/dev/gate-001/up/evt", big)


# --- the cbor2 belt ----------------------------------------------------------------------------

def test_cbor2_errors_map_to_spec_codes() -> None:
    """The scanner catches these first; should cbor2 ever see them, the mapping still holds."""
    from host_tools.protocol.cbor import _cbor2_error

    cases = {"81" * 12 + "00": "too_deep", "a2010001" "02": "dup_key", "9f01ff": "indefinite",
             "1f": "malformed", "8301": "malformed", "62c328": "malformed"}
    for hexdata, code in cases.items():
        with pytest.raises(cbor2.CBORDecodeError) as info:
            cbor2.loads(bytes.fromhex(hexdata), max_depth=9, allow_indefinite=False,
                        allow_duplicate_keys=False)
        assert _cbor2_error(info.value).code == code, hexdata


def test_every_cbor2_builtin_tag_is_overridden() -> None:
    """If a cbor2 upgrade adds a built-in tag decoder, the list in cbor.py must learn it."""
    from host_tools.protocol.cbor import _CBOR2_BUILTIN_TAGS

    builtin = set()
    for number in range(0x10000):
        head = bytes([0xc0 | number]) if number < 24 else (
            bytes([0xd8, number]) if number < 256 else b"\xd9" + number.to_bytes(2, "big"))
        for content in (b"\x00", b"\x41\x00", b"\x61a", b"\x82\x00\x00", b"\xa0"):
            try:
                if not isinstance(cbor2.loads(head + content), cbor2.CBORTag):
                    builtin.add(number)
            except cbor2.CBORDecodeError:
                builtin.add(number)
    assert builtin <= set(_CBOR2_BUILTIN_TAGS)


# --- the canonical-envelope fast path of verify_mac0 agrees with the full decode at its edges ------

def test_verify_fast_path_edges() -> None:
    import hashlib
    import hmac as _hmac

    from host_tools.protocol.cose import protected_header
    prot = protected_header(KID)
    pre = b"\xd1\x84" + cbor2.dumps(prot) + b"\xa0"

    def env(payload: bytes, head: bytes | None = None, tag: bytes | None = None, tail: bytes = b"") -> bytes:
        mac = _hmac.new(KEY, cbor2.dumps(["MAC0", prot, HB_TOPIC.encode(), payload]), hashlib.sha256).digest()
        return pre + (head if head is not None else cbor2.dumps(payload)[:-len(payload)] if payload else b"\x40") \
            + payload + cbor2.dumps(tag if tag is not None else mac) + tail

    small = encode_payload({"type": "event", "seq": 1, "code": "c"})
    assert len(small) < 24 and verify_mac0(KEY, KID, HB_TOPIC, env(small)) == small
    big = encode_payload({"type": "event", "seq": 1, "code": "c", "detail": {1: "x" * 300}})
    assert len(big) >= 256 and verify_mac0(KEY, KID, HB_TOPIC, env(big)) == big
    good = encode_payload(HB)
    assert verify_mac0(KEY, KID, HB_TOPIC, env(good)) == good
    rejects("non_canonical", verify_mac0, KEY, KID, HB_TOPIC, env(small, head=b"\x58" + bytes([len(small)])))
    rejects("non_canonical", verify_mac0, KEY, KID, HB_TOPIC, env(good, head=b"\x59\x00" + bytes([len(good)])))
    rejects("trailing", verify_mac0, KEY, KID, HB_TOPIC, env(good, tail=b"\x00"))
    rejects("bad_mac", verify_mac0, KEY, KID, HB_TOPIC, env(good, tag=bytes(33)))
    rejects("bad_mac", verify_mac0, KEY, KID, HB_TOPIC, env(good, tag=bytes(32)))
    rejects("malformed", verify_mac0, KEY, KID, HB_TOPIC, env(good)[:-1])
    rejects("bad_kid", verify_mac0, KEY, "gate-001:9", HB_TOPIC, env(good))
    rejects("malformed", verify_mac0, KEY, KID, HB_TOPIC, "not bytes")  # type: ignore[arg-type]


# --- SPEC §3's one exception: a bstr valued in a dn/ota payload's top-level map -----------------

OTA_TOPIC = "v1/dev/gate-001/dn/ota"
CHUNK: dict[str | int, Any] = {"type": "chunk", "aud": "gate-001", "iat": 1767225600, "seq": 9,
                               "rel": bytes(8), "i": 4, "data": b"\x5a" * 1536}


def test_payload_bstr_bound_by_topic() -> None:
    assert payload_bstr_bound(OTA_TOPIC) == MAX_CHUNK_DATA == 1536
    for other in ("v1/dev/gate-001/up/ota", "v1/dev/gate-001/dn/time", "v1/dev/gate-001/dn/otax",
                  None):
        assert payload_bstr_bound(other) == 512, other


def test_top_bstr_bounds_only_top_map_bstr_values() -> None:
    assert decode(encode({12: bytes(1536)}), top_bstr=1536) == {12: bytes(1536)}
    assert decode(encode({1: 0, 13: bytes(1536)}), top_bstr=1536) == {1: 0, 13: bytes(1536)}
    def ota(data: bytes) -> Any:
        return decode(data, top_bstr=MAX_CHUNK_DATA)

    rejects("too_large", ota, encode({12: bytes(1537)}))
    rejects("too_large", ota, b"\xa1\x0c\x59\x06\x01")  # before it is read
    rejects("too_large", decode, encode({12: bytes(513)}))  # 512 unless asked
    for over in ({12: "a" * 600}, {12: {1: bytes(600)}}, {12: [bytes(600)]}, [23, bytes(600)],
                 bytes(600)):
        rejects("too_large", ota, encode(over))


def test_chunk_round_trip_and_bounds() -> None:
    data = seal(KEY, KID, OTA_TOPIC, CHUNK)
    assert len(data) <= 2048
    assert open_message(KEY, KID, OTA_TOPIC, data) == CHUNK
    rejects("too_large", seal, KEY, KID, OTA_TOPIC, {**CHUNK, "data": bytes(1537)})
    rejects("bad_value", seal, KEY, KID, OTA_TOPIC, {**CHUNK, "data": b""})
    rejects("bad_value", seal, KEY, KID, OTA_TOPIC, {**CHUNK, "rel": bytes(7)})
    rejects("too_large", seal, KEY, KID, OTA_TOPIC, {**CHUNK, 13: "x" * 600})
    # the sender's belt (decode_own) applies the topic's bound as the receiver does
    assert decode_payload(encode_payload(CHUNK, OTA_TOPIC), OTA_TOPIC) == CHUNK
    rejects("too_large", encode_payload, CHUNK)  # without its topic the 512-byte bound holds
    rejects("too_large", decode_payload, encode(to_wire(CHUNK)))
    rejects("too_large", encode_payload, CHUNK, "v1/dev/gate-001/up/ota")
    rejects("bad_topic", encode_payload, {**CHUNK, "data": bytes(8)}, "v1/dev/gate-001/up/ota")
    req = {"type": "chunk_req", "seq": 5, "rel": bytes(8), "i": 0}
    up = "v1/dev/gate-001/up/ota"
    assert topic("gate-001", "chunk_req") == up and topic("gate-001", "chunk") == OTA_TOPIC
    assert open_message(KEY, KID, up, seal(KEY, KID, up, req)) == req
    rejects("bad_topic", seal, KEY, KID, OTA_TOPIC, req)
    rejects("bad_value", seal, KEY, KID, up, {**req, "rel": bytes(9)})
