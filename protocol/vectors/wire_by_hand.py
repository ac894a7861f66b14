"""The golden vectors' bytes, assembled by hand (protocol/vectors/generate.py): CBOR item heads,
payload maps from SPEC §4's key tables, COSE_Mac0 and its MAC structure, the fixed test keys, and
the case list every builder appends to. Standard library only (hashlib, hmac): no codec.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Any, NamedTuple

DEV, OTHER = "gate-001", "gate-002"
KID, KID_V2, KID_OTHER = f"{DEV}:1", f"{DEV}:2", f"{OTHER}:1"
T = 1767225600  # 2026-01-01T00:00:00Z


def test_key(name: str) -> bytes:
    return hashlib.sha256(b"edgepay-vector-key-" + name.encode()).digest()


KEY, KEY_V2, KEY_OTHER = test_key(KID), test_key(KID_V2), test_key(KID_OTHER)


def topic(suffix: str, device: str = DEV) -> str:
    return f"v1/dev/{device}/{suffix}"


# --- CBOR, by hand -----------------------------------------------------------------------------

def head(major: int, arg: int, size: int | None = None) -> bytes:
    """An item head; shortest form unless ``size`` (1, 2, 4, 8 argument bytes) forces one."""
    if size is None:
        size = next(n for n, lim in ((0, 24), (1, 1 << 8), (2, 1 << 16), (4, 1 << 32), (8, 1 << 64))
                    if arg < lim)
    if size == 0:
        return bytes([major << 5 | arg])
    ai = {1: 24, 2: 25, 4: 26, 8: 27}[size]
    return bytes([major << 5 | ai]) + arg.to_bytes(size, "big")


class V(NamedTuple):
    """An encoded item and what SPEC §9 JSON shows for it (None: not representable)."""

    enc: bytes
    js: Any = None


def u(n: int) -> V:
    return V(head(0, n), n)


def i(n: int) -> V:
    return u(n) if n >= 0 else V(head(1, -1 - n), n)


def t(s: str) -> V:
    b = s.encode("utf-8")
    return V(head(3, len(b)) + b, s)


def b(x: bytes) -> V:
    return V(head(2, len(x)) + x, {"$hex": x.hex()})


TRUE, FALSE = V(b"\xf5", True), V(b"\xf4", False)


def arr(*items: V) -> V:
    return V(head(4, len(items)) + b"".join(x.enc for x in items), [x.js for x in items])


def mp(*pairs: tuple[V, V]) -> V:
    """A well-ordered map: its keys must be given in strictly ascending bytewise order."""
    assert ascending(list(pairs)), [k.enc.hex() for k, _ in pairs]
    return mpx(*pairs)


def mpx(*pairs: tuple[V, V]) -> V:
    """A map with its entries exactly in the order given (for the non-canonical cases)."""
    return V(head(5, len(pairs)) + b"".join(k.enc + v.enc for k, v in pairs),
             {"$map": [[k.js, v.js] for k, v in pairs]})


def raw(enc: bytes) -> V:
    return V(enc)


def ascending(pairs: list[tuple[V, V]]) -> bool:
    keys = [k.enc for k, _ in pairs]
    return all(a < c for a, c in zip(keys, keys[1:]))


# --- the schema, as written in SPEC §4 ---------------------------------------------------------

TYPES = {"hello": 1, "status": 2, "heartbeat": 3, "event": 4, "alarm": 5, "sess_open": 6,
         "sess_update": 7, "sess_close": 8, "cmd_result": 9, "auth_req": 10, "time_req": 11,
         "chunk_req": 12, "command": 20, "ack": 21, "time": 22, "chunk": 23}
COMMON = {"type": 0, "aud": 3, "exp": 4, "nbf": 5, "iat": 6, "cti": 7, "seq": 8, "prev": 9}
SESS = {"sid": 10, "payer": 11, "slot": 12, "t0": 13, "offline": 14, "auth": 15, "amount": 16,
        "cur": 17, "t1": 18, "lines": 19, "reason": 20}
FIELDS = {
    "hello": {"fw": 10, "board": 11, "reset": 12, "caps": 13, "kind": 14, "boots": 15},
    "status": {"online": 10},
    "heartbeat": {"uptime": 10, "heap": 11, "jdepth": 12, "rssi": 13, "clock": 14, "rx_refused": 15,
                  "rx_oversize": 16, "rx_dropped": 17, "off_amt": 18, "off_n": 19},
    "event": {"code": 10, "detail": 11},
    "alarm": {"code": 10, "detail": 11, "active": 12},
    "sess_open": SESS, "sess_update": SESS, "sess_close": SESS,
    "cmd_result": {"status": 10, "name": 11, "data": 12, "cseq": 13},
    "auth_req": {"sid": 10, "payer": 11, "slot": 12, "purpose": 14, "auth": 15, "amount": 16,
                 "cur": 17, "t0": 18, "t1": 19},
    "command": {"name": 10, "args": 11},
    "ack": {"upto": 10, "resend": 11, "quarantined": 12},
    "time": {"nonce": 10},
    "time_req": {"nonce": 10},
    "chunk_req": {"rel": 10, "i": 11},
    "chunk": {"rel": 10, "i": 11, "data": 12},
}
SUFFIX = {"hello": "up/hello", "status": "up/status", "heartbeat": "up/hb", "event": "up/evt",
          "alarm": "up/evt", "sess_open": "up/rec", "sess_update": "up/rec",
          "sess_close": "up/rec", "cmd_result": "up/res", "auth_req": "up/req",
          "time_req": "up/time", "chunk_req": "up/ota", "command": "dn/cmd", "ack": "dn/ack",
          "time": "dn/time", "chunk": "dn/ota"}


def payload(tname: str, fields: dict[str, V],
            extra: tuple[tuple[V, V], ...] = ()) -> tuple[bytes, dict[str, Any]]:
    """A payload map from named fields plus unknown ``extra`` entries, keys sorted bytewise
    by their encoding; and its §9 JSON."""
    keys = {**COMMON, **FIELDS[tname]}
    pairs = [(u(0), u(TYPES[tname]))] + [(u(keys[n]), v) for n, v in fields.items()] + list(extra)
    pairs.sort(key=lambda kv: kv[0].enc)
    decoded = {"type": tname, **{n: v.js for n, v in fields.items()}}
    return mp(*pairs).enc, decoded


# --- COSE_Mac0, by hand ------------------------------------------------------------------------

def protected(kid: str, alg: int = 5) -> bytes:
    return head(5, 2) + u(1).enc + i(alg).enc + u(4).enc + b(kid.encode()).enc


def mac_tag(key: bytes, prot: bytes, topic_: str, body: bytes) -> bytes:
    structure = head(4, 4) + t("MAC0").enc + b(prot).enc + b(topic_.encode()).enc + b(body).enc
    return hmac.new(key, structure, hashlib.sha256).digest()


def mac0(key: bytes, topic_: str, body: bytes, *, kid: str = KID, prot: bytes | None = None,
         unprotected: bytes = b"\xa0", tag_head: bytes = b"\xd1",
         tag: bytes | None = None) -> bytes:
    prot = protected(kid) if prot is None else prot
    tag = mac_tag(key, prot, topic_, body) if tag is None else tag
    return tag_head + head(4, 4) + b(prot).enc + unprotected + b(body).enc + b(tag).enc


# --- the cases ---------------------------------------------------------------------------------

CASES: list[dict[str, Any]] = []


def case(name: str, description: str, data: bytes, topic_: str, *, decoded: Any = None,
         error: str | None = None, key: bytes = KEY, kid: str = KID) -> None:
    assert (decoded is None) != (error is None)
    assert name not in {c["name"] for c in CASES}, name
    entry: dict[str, Any] = {"name": name, "description": description, "key": key.hex(),
                             "kid": kid, "topic": topic_, "hex": data.hex()}
    entry["decoded" if error is None else "error"] = decoded if error is None else error
    CASES.append(entry)


def valid(name: str, description: str, tname: str, fields: dict[str, V],
          extra: tuple[tuple[V, V], ...] = ()) -> None:
    body, decoded = payload(tname, fields, extra)
    top = topic(SUFFIX[tname])
    case(name, description, mac0(KEY, top, body), top, decoded=decoded)


def bad_payload(name: str, description: str, error: str, body: bytes, suffix: str) -> None:
    """A payload defect behind a valid MAC, so the payload's own error is the first one."""
    top = topic(suffix)
    case(name, description, mac0(KEY, top, body), top, error=error)


PREV0 = bytes(16)
PREV1 = hashlib.sha256(b"previous record payload").digest()[:16]
CTI = bytes.fromhex("0f1e2d3c4b5a6978")
CTI16 = hashlib.sha256(b"cti-16").digest()[:16]
NONCE = bytes.fromhex("a1b2c3d4e5f60718")  # a time_req's nonce (8 bytes from os.urandom on a device)
REL = hashlib.sha256(b"release payload").digest()[:8]  # chunk_req / chunk rel (SPEC §10)


def chunk_data(n: int) -> bytes:
    """n bytes of a release payload, not all alike (a chunk's data)."""
    return bytes((k * 7 + 3) & 0xFF for k in range(n))

HB = {"seq": u(42), "uptime": u(3600), "heap": u(81234), "jdepth": u(0), "clock": u(1)}
HELLO = {"seq": u(1), "fw": t("1.0.0"), "board": t("esp32-s3"), "reset": t("power_on"),
         "caps": arr(t("nfc"), t("relay")), "kind": t("gate")}


def sized_event(total: int) -> tuple[bytes, dict[str, Any]]:
    """An event whose whole message is ``total`` bytes (four long strings in its detail)."""
    for last in range(1, 513):
        fields = {"seq": u(24), "code": t("big"), "detail": mp(
            *[(u(k), t("y" * 500)) for k in (1, 2, 3)], (u(4), t("z" * last)))}
        body, decoded = payload("event", fields)
        if len(mac0(KEY, topic("up/evt"), body)) == total:
            return body, decoded
    raise AssertionError(total)
