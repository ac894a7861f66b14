"""Write protocol/vectors/vectors.json, the golden vectors of the edgepay wire protocol (SPEC §9).

Every byte is assembled here by hand (item heads, maps, arrays, COSE headers, MAC structure):
this file uses neither codec (not host_tools, not firmware), only hashlib/hmac from the standard
library, so that the vectors are an independent statement of SPEC.md. Keys are fixed test keys
derived from a name, so the output is reproducible.

    python protocol/vectors/generate.py          # (re)write vectors.json
    python protocol/vectors/generate.py --check  # exit 1 if vectors.json is stale
"""
from __future__ import annotations

import hashlib
import hmac
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

OUT = Path(__file__).resolve().parent / "vectors.json"

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
         "sess_update": 7, "sess_close": 8, "cmd_result": 9, "auth_req": 10, "command": 20,
         "ack": 21, "time": 22}
COMMON = {"type": 0, "aud": 3, "exp": 4, "nbf": 5, "iat": 6, "cti": 7, "seq": 8, "prev": 9}
SESS = {"sid": 10, "payer": 11, "slot": 12, "t0": 13, "offline": 14, "auth": 15, "amount": 16,
        "cur": 17, "t1": 18, "lines": 19, "reason": 20}
FIELDS = {
    "hello": {"fw": 10, "board": 11, "reset": 12, "caps": 13, "kind": 14, "boots": 15},
    "status": {"online": 10},
    "heartbeat": {"uptime": 10, "heap": 11, "jdepth": 12, "rssi": 13, "clock": 14},
    "event": {"code": 10, "detail": 11},
    "alarm": {"code": 10, "detail": 11, "active": 12},
    "sess_open": SESS, "sess_update": SESS, "sess_close": SESS,
    "cmd_result": {"status": 10, "name": 11, "data": 12, "cseq": 13},
    "auth_req": {"sid": 10, "payer": 11, "slot": 12, "purpose": 14, "auth": 15, "amount": 16,
                 "cur": 17, "t0": 18},
    "command": {"name": 10, "args": 11},
    "ack": {"upto": 10, "resend": 11},
    "time": {},
}
SUFFIX = {"hello": "up/hello", "status": "up/status", "heartbeat": "up/hb", "event": "up/evt",
          "alarm": "up/evt", "sess_open": "up/rec", "sess_update": "up/rec",
          "sess_close": "up/rec", "cmd_result": "up/res", "auth_req": "up/req",
          "command": "dn/cmd", "ack": "dn/ack", "time": "dn/time"}


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

HB = {"seq": u(42), "uptime": u(3600), "heap": u(81234), "jdepth": u(0), "clock": u(1)}
HELLO = {"seq": u(1), "fw": t("1.0.0"), "board": t("esp32-s3"), "reset": t("power_on"),
         "caps": arr(t("nfc"), t("relay")), "kind": t("gate")}


def build_valid() -> None:
    valid("hello", "hello with every field, optional boots and iat included", "hello",
          {**HELLO, "iat": u(T), "boots": u(17)})
    valid("hello_minimal", "hello without optional fields, no capabilities", "hello",
          {**HELLO, "caps": arr(), "reset": t("watchdog"), "kind": t("vending")})
    valid("status_online", "status: online", "status", {"seq": u(2), "online": TRUE, "iat": u(T)})
    valid("status_offline_will", "status: offline (the MQTT will), no iat", "status",
          {"seq": u(3), "online": FALSE})
    valid("heartbeat", "heartbeat with a negative rssi and iat", "heartbeat",
          {**HB, "rssi": i(-67), "iat": u(T + 60)})
    valid("heartbeat_untrusted_clock", "heartbeat without rssi, clock 0 (untrusted)",
          "heartbeat", {**HB, "clock": u(0), "jdepth": u(3)})
    valid("heartbeat_unknown_fields", "unknown keys 99 and 1000 are ignored and left out of "
          "decoded", "heartbeat", HB, extra=((u(99), t("future")), (u(1000), arr(u(1), u(2)))))
    valid("heartbeat_uint_max", "uptime 2^40 and heap 2^64-1: the full uint range", "heartbeat",
          {**HB, "uptime": u(1 << 40), "heap": u((1 << 64) - 1)})
    valid("event", "event with a detail map mixing int and text keys (bytewise order)", "event",
          {"seq": u(5), "code": t("door_forced"),
           "detail": mp((u(1), u(2)), (u(24), t("x")), (i(-1), FALSE), (t("a"), t("b")))})
    valid("event_no_detail", "event without detail", "event", {"seq": u(6), "code": t("boot")})
    valid("alarm_raised", "alarm raised with detail", "alarm",
          {"seq": u(7), "code": t("tamper"), "detail": mp((t("zone"), u(3))), "active": TRUE,
           "iat": u(T)})
    valid("alarm_cleared", "alarm cleared", "alarm",
          {"seq": u(8), "code": t("tamper"), "active": FALSE})
    valid("sess_open", "first record (prev all zero): pre-authorised amount with currency, "
          "slot, offline flag and auth reference", "sess_open",
          {"seq": u(100), "prev": b(PREV0), "sid": t("s-0001"), "payer": t("card:4111..1111"),
           "slot": u(2), "t0": u(T), "offline": FALSE, "auth": t("auth-77f3"),
           "amount": u(500), "cur": t("EUR")})
    valid("sess_open_no_amount", "sess_open without amount and cur", "sess_open",
          {"seq": u(101), "prev": b(PREV1), "sid": t("s-0002"), "payer": t("app:u-19"),
           "t0": u(T + 5)})
    valid("sess_update", "sess_update", "sess_update",
          {"seq": u(102), "prev": b(PREV1), "sid": t("s-0001"), "amount": u(750),
           "cur": t("EUR"), "t1": u(T + 1800)})
    valid("sess_update_large_amount", "amount 2^40 minor units", "sess_update",
          {"seq": u(103), "prev": b(PREV1), "sid": t("s-0001"), "amount": u(1 << 40),
           "cur": t("JPY"), "t1": u(T + 1900)})
    valid("sess_close_lines", "sess_close with lines and reason", "sess_close",
          {"seq": u(104), "prev": b(PREV1), "sid": t("s-0003"), "payer": t("card:5500..0004"),
           "slot": u(4), "t0": u(T), "offline": TRUE, "auth": t("auth-1"), "amount": u(510),
           "cur": t("USD"), "t1": u(T + 95),
           "lines": arr(arr(t("coffee"), u(2), u(180)), arr(t("water"), u(1), u(150))),
           "reason": t("done")})
    valid("sess_close_minimal", "sess_close with required fields only", "sess_close",
          {"seq": u(105), "prev": b(PREV1), "sid": t("s-0004"), "payer": t("p"), "t0": u(T),
           "amount": u(0), "cur": t("GBP"), "t1": u(T + 1)})
    valid("cmd_result_ok", "cmd_result ok with cti, name, data and cseq", "cmd_result",
          {"seq": u(106), "cti": b(CTI), "status": u(0), "name": t("open"),
           "data": mp((u(1), u(2))), "cseq": u(9001)})
    valid("cmd_result_refused", "cmd_result refused (43)", "cmd_result",
          {"seq": u(107), "cti": b(CTI16), "status": u(43), "name": t("open"), "cseq": u(9002)})
    valid("cmd_result_get_state", "cmd_result carrying the device state", "cmd_result",
          {"seq": u(108), "cti": b(CTI), "status": u(0), "name": t("get_state"),
           "data": mp((t("fw"), t("1.0.0")), (t("jdepth"), u(0)), (t("sessions"), arr(t("s-1"))))})
    valid("auth_req_entry", "auth_req for entry: plate as payer, slot and iat", "auth_req",
          {"seq": u(120), "iat": u(T), "sid": t("s-0100"), "payer": t("plate:B-EP-123"),
           "slot": u(1), "purpose": t("entry")})
    valid("auth_req_exit_amount", "auth_req for exit with the amount due and its currency, the "
          "earlier authorisation and the session start t0", "auth_req",
          {"seq": u(121), "sid": t("s-0100"), "payer": t("plate:B-EP-123"), "purpose": t("exit"),
           "auth": t("auth-77f3"), "amount": u(450), "cur": t("EUR"), "t0": u(T)})
    valid("auth_req_reauth", "auth_req to re-authorise a running rental (t0, no amount)",
          "auth_req", {"seq": u(122), "sid": t("s-0101"), "payer": t("qr:7f3a9c"),
                       "purpose": t("reauth"), "auth": t("ord-5521"), "t0": u(T - 3600)})
    valid("cmd_result_no_cti", "cmd_result refusing an unreadable command: no cti; with iat "
          "(optional per the CDDL)", "cmd_result", {"seq": u(109), "status": u(14), "iat": u(T)})

    def command(name: str, description: str, cname: str, args: V | None, seq: int,
                extra_fields: dict[str, V] | None = None) -> None:
        fields = {"aud": t(DEV), "exp": u(T + 300), "iat": u(T), "cti": b(CTI), "seq": u(seq),
                  "name": t(cname), **(extra_fields or {})}
        if args is not None:
            fields["args"] = args
        valid(name, description, "command", fields)

    command("cmd_open", "open slot 2 for session s-1, hold 5 s", "open",
            mp((u(1), u(2)), (u(2), t("s-1")), (u(3), u(5))), 500, {"nbf": u(T - 10)})
    command("cmd_set_tariff", "set_tariff with a price list", "set_tariff",
            mp((u(1), u(7)), (u(2), t("EUR")), (u(3), u(15)), (u(4), u(3600)), (u(5), u(250)),
               (u(6), u(2000)), (u(7), u(5000)),
               (u(8), arr(arr(t("coffee"), u(180)), arr(t("tea"), u(150)))), (u(9), u(99))), 501)
    command("cmd_set_config", "set_config with text keys (bytewise order)", "set_config",
            mp((t("led"), TRUE), (t("hb_s"), u(60)), (t("mode"), t("eco")), (t("offset"), i(-5))),
            502)
    command("cmd_set_allowlist_full", "set_allowlist, full list (mode 0)", "set_allowlist",
            mp((u(1), u(5)), (u(2), u(0)),
               (u(4), arr(arr(t("card:1"), u(5000)), arr(t("card:2"), u(0))))), 503)
    command("cmd_set_allowlist_diff", "set_allowlist, differential from base 5", "set_allowlist",
            mp((u(1), u(6)), (u(2), u(1)), (u(3), u(5)), (u(4), arr(arr(t("card:3"), u(1000)))),
               (u(5), arr(t("card:1")))), 504)
    command("cmd_cancel_session", "cancel_session s-0001", "cancel_session",
            mp((u(1), t("s-0001"))), 505)
    command("cmd_display", "display a non-ASCII text for 10 s", "display",
            mp((u(1), t("Grüße – 5 € bitte")), (u(2), u(10))), 506)
    command("cmd_get_state", "get_state without args", "get_state", None, 507)
    command("cmd_reboot", "reboot after 5 s", "reboot", mp((u(1), u(5))), 508)
    command("cmd_ota", "ota with a (placeholder) manifest", "ota",
            mp((u(1), b(bytes(range(40))))), 509)
    command("cmd_auth", "auth: the cloud grants an auth_req (order ref, limit, pay-after mode)",
            "auth", mp((u(1), t("s-0100")), (u(2), TRUE), (u(3), t("auth-9")), (u(4), u(2000)),
                       (u(6), u(0))), 520)
    command("cmd_paid", "paid: a payment was made out of band (parking QR): open", "paid",
            mp((u(1), t("s-0100")), (u(2), t("qr-ord-8812"))), 521)
    command("cmd_set_policy", "set_policy: the signed offline risk policy", "set_policy",
            mp((u(1), u(3)), (u(2), t("EUR")), (u(3), u(5000)), (u(4), u(50000)), (u(5), u(20)),
               (u(6), u(86400))), 522)
    command("cmd_unknown_name", "a command name the device may not know is still a valid "
            "message (the device answers unsupported)", "self_destruct", None, 510)
    valid("ack", "ack up to seq 104", "ack",
          {"aud": t(DEV), "iat": u(T), "seq": u(511), "upto": u(104)})
    valid("ack_resend", "ack with resend: true", "ack",
          {"aud": t(DEV), "iat": u(T), "seq": u(512), "upto": u(101), "resend": TRUE})
    valid("time", "time beacon", "time", {"aud": t(DEV), "iat": u(T + 7), "seq": u(513)})

    # bounds, at the limit
    nest = u(0)
    for _ in range(5):
        nest = arr(nest)
    valid("bound_depth_8", "payload map (1) > detail (2) > 5 arrays (3-7) > 0 at depth 8",
          "event", {"seq": u(20), "code": t("deep"), "detail": mp((u(1), nest))})
    valid("bound_string_512", "a 512-byte text string", "event",
          {"seq": u(21), "code": t("long"), "detail": mp((u(1), t("x" * 512)))})
    valid("bound_array_64", "an array of 64 entries", "event",
          {"seq": u(22), "code": t("wide"), "detail": mp((u(1), arr(*[u(0)] * 64)))})
    valid("bound_items_256", "exactly 256 data items, counting map keys", "event",
          {"seq": u(23), "code": t("many"), "detail": mp(
              *[(u(k), arr(*[u(0)] * n)) for k, n in ((1, 60), (2, 60), (3, 60), (4, 59))])})
    body, decoded = sized_event(2048)
    case("bound_message_2048", "a message of exactly 2048 bytes", mac0(KEY, topic("up/evt"), body),
         topic("up/evt"), decoded=decoded)


def sized_event(total: int) -> tuple[bytes, dict[str, Any]]:
    """An event whose whole message is ``total`` bytes (four long strings in its detail)."""
    for last in range(1, 513):
        fields = {"seq": u(24), "code": t("big"), "detail": mp(
            *[(u(k), t("y" * 500)) for k in (1, 2, 3)], (u(4), t("z" * last)))}
        body, decoded = payload("event", fields)
        if len(mac0(KEY, topic("up/evt"), body)) == total:
            return body, decoded
    raise AssertionError(total)


def build_envelope_errors() -> None:
    hb_top = topic("up/hb")
    body, _ = payload("heartbeat", HB)
    good = mac0(KEY, hb_top, body)
    prot = protected(KID)
    tag = mac_tag(KEY, prot, hb_top, body)

    def env(name: str, description: str, error: str, data: bytes, **kw: Any) -> None:
        case(name, description, data, hb_top, error=error, **kw)

    case("env_too_large", "a 2049-byte message, otherwise valid: refused before decoding",
         mac0(KEY, topic("up/evt"), sized_event(2049)[0]), topic("up/evt"), error="too_large")
    env("env_truncated", "the last byte of the MAC is missing", "malformed", good[:-1])
    env("env_trailing", "a zero byte after the envelope", "trailing", good + b"\x00")
    env("env_indefinite", "envelope array of indefinite length", "indefinite",
        b"\xd1\x9f" + b(prot).enc + b"\xa0" + b(body).enc + b(tag).enc + b"\xff")
    env("env_tag_nonshortest", "tag 17 written with a one-byte argument (d8 11)",
        "non_canonical", mac0(KEY, hb_top, body, tag_head=b"\xd8\x11"))
    env("env_tag_18", "outermost tag 18 (COSE_Sign1) instead of 17", "bad_tag",
        mac0(KEY, hb_top, body, tag_head=b"\xd2"))
    env("env_untagged", "the COSE_Mac0 array without its tag", "bad_tag", good[1:])
    env("env_three_items", "envelope array of 3 items (no MAC tag)", "bad_envelope",
        b"\xd1\x83" + b(prot).enc + b"\xa0" + b(body).enc)
    env("env_detached_payload", "payload null (detached)", "bad_envelope",
        b"\xd1\x84" + b(prot).enc + b"\xa0\xf6" + b(tag).enc)
    env("env_unprotected_kid", "the kid repeated in a non-empty unprotected header",
        "bad_envelope", mac0(KEY, hb_top, body, unprotected=mp((u(4), b(KID.encode()))).enc))
    empty = b""
    env("env_protected_empty", "zero-length protected header (an empty map, RFC 9052 §3): "
        "no alg, no kid", "bad_envelope", mac0(KEY, hb_top, body, prot=empty))
    no_kid = mp((u(1), u(5))).enc
    env("env_protected_no_kid", "protected header {1: 5} without kid", "bad_envelope",
        mac0(KEY, hb_top, body, prot=no_kid))
    extra = mp((u(1), u(5)), (u(4), b(KID.encode())), (u(5), b(bytes(12)))).enc
    env("env_protected_extra", "protected header with an extra parameter (5: IV)",
        "bad_envelope", mac0(KEY, hb_top, body, prot=extra))
    unsorted = mpx((u(4), b(KID.encode())), (u(1), u(5))).enc
    env("env_protected_unsorted", "protected header {4: kid, 1: 5}: keys out of order",
        "non_canonical", mac0(KEY, hb_top, body, prot=unsorted))
    env("env_bad_alg", "alg 4 (HMAC 256/64) with a valid full-length MAC", "bad_alg",
        mac0(KEY, hb_top, body, prot=protected(KID, alg=4)))
    env("env_bad_alg_es256", "alg -7 (ES256)", "bad_alg",
        mac0(KEY, hb_top, body, prot=protected(KID, alg=-7)))
    env("env_wrong_kid_version", "kid gate-001:2, correctly MACed with that key, where "
        "gate-001:1 is expected", "bad_kid", mac0(KEY_V2, hb_top, body, kid=KID_V2))
    env("env_other_device_kid", "gate-002's kid and key on gate-001's topic", "bad_kid",
        mac0(KEY_OTHER, hb_top, body, kid=KID_OTHER))
    env("env_wrong_key", "the right kid but MACed with gate-002's key", "bad_mac",
        mac0(KEY_OTHER, hb_top, body))
    flipped = tag[:-1] + bytes([tag[-1] ^ 1])
    env("env_bad_mac", "last bit of the MAC flipped", "bad_mac",
        mac0(KEY, hb_top, body, tag=flipped))
    env("env_mac_truncated", "MAC truncated to its first 16 bytes", "bad_mac",
        mac0(KEY, hb_top, body, tag=tag[:16]))
    altered = body.replace(u(3600).enc, u(3601).enc)
    assert altered != body
    env("env_tstr_600", "a 600-byte text string where the protected header belongs: only the "
        "envelope's own byte strings are exempt from the 512-byte bound", "too_large",
        b"\xd1\x84" + t("a" * 600).enc + b"\xa0" + b(body).enc + b(tag).enc)
    env("env_bstr_over_message", "the protected header's byte string announces 2049 bytes, more "
        "than the message bound: too_large, checked before reading", "too_large",
        b"\xd1\x84" + head(2, 2049) + prot + b"\xa0" + b(body).enc + b(tag).enc)
    env("env_payload_altered", "uptime changed after the MAC was computed", "bad_mac",
        mac0(KEY, hb_top, altered, tag=tag))
    env("env_topic_moved", "signed for v1/dev/gate-001/up/evt, received on up/hb", "bad_mac",
        mac0(KEY, topic("up/evt"), body))
    cmd, _ = payload("command", {"aud": t(DEV), "exp": u(T + 300), "iat": u(T), "cti": b(CTI),
                                 "seq": u(600), "name": t("open"), "args": mp((u(1), u(1)))})
    case("env_reflected_command", "a command signed for dn/cmd published back on up/res",
         mac0(KEY, topic("dn/cmd"), cmd), topic("up/res"), error="bad_mac")


def build_payload_errors() -> None:
    def hb(**changes: V) -> bytes:
        return payload("heartbeat", {**HB, **changes})[0]

    def ev(detail: V) -> bytes:
        return payload("event", {"seq": u(30), "code": t("x"), "detail": detail})[0]

    base = [(u(0), u(3))] + [(u(k), v) for k, v in
                             ((8, u(42)), (10, u(3600)), (11, u(81234)), (12, u(0)), (14, u(1)))]

    def pairs_with(key: int, value: V) -> list[tuple[V, V]]:
        return [(k, value if k.js == key else v) for k, v in base]

    # §3 errors inside the payload
    bad_payload("cbor_nonshortest_int", "seq 42 written with a 2-byte argument (19 00 2a), "
                "not 18 2a", "non_canonical", mp(*pairs_with(8, raw(head(0, 42, 2)))).enc, "up/hb")
    code = raw(head(3, 5, 1) + b"hello")
    bad_payload("cbor_nonshortest_length", "text length 5 written as 78 05", "non_canonical",
                payload("event", {"seq": u(31), "code": code})[0], "up/evt")
    swapped = base[:2] + [base[3], base[2]] + base[4:]
    bad_payload("cbor_unsorted_keys", "payload keys 11 before 10", "non_canonical",
                mpx(*swapped).enc, "up/hb")
    bad_payload("cbor_length_first_order", "detail keys in RFC 7049 length-first order "
                "(1, -1, 24, \"a\"), not bytewise (1, 24, -1, \"a\")", "non_canonical",
                ev(mpx((u(1), u(2)), (i(-1), FALSE), (u(24), t("x")), (t("a"), t("b")))), "up/evt")
    bad_payload("cbor_dup_key", "key 8 (seq) twice", "dup_key",
                mpx(base[0], base[1], (u(8), u(43)), *base[2:]).enc, "up/hb")
    bad_payload("cbor_indefinite_array", "caps as an indefinite-length array", "indefinite",
                payload("hello", {**HELLO, "caps": raw(b"\x9f" + t("nfc").enc + b"\xff")})[0],
                "up/hello")
    bad_payload("cbor_indefinite_map", "detail as an indefinite-length map", "indefinite",
                ev(raw(b"\xbf" + u(1).enc + u(2).enc + b"\xff")), "up/evt")
    bad_payload("cbor_indefinite_string", "code as an indefinite-length text string",
                "indefinite", payload("event", {"seq": u(32), "code": raw(
                    b"\x7f" + t("ab").enc + t("c").enc + b"\xff")})[0], "up/evt")
    nest = arr()
    for _ in range(6):
        nest = arr(nest)
    bad_payload("cbor_too_deep", "payload map (1) > detail (2) > 7 arrays (3-9), the innermost "
                "empty: depth 9", "too_deep", ev(mp((u(1), nest))), "up/evt")
    bad_payload("cbor_string_513", "a 513-byte text string", "too_large",
                ev(mp((u(1), t("x" * 513)))), "up/evt")
    bad_payload("cbor_bytes_513", "a 513-byte byte string", "too_large",
                ev(mp((u(1), b(bytes(513))))), "up/evt")
    bad_payload("cbor_array_65", "an array of 65 entries", "too_large",
                ev(mp((u(1), arr(*[u(0)] * 65)))), "up/evt")
    bad_payload("cbor_map_65", "a map of 65 entries", "too_large",
                ev(mp(*[(u(k), u(0)) for k in range(65)])), "up/evt")
    bad_payload("cbor_items_over_256", "more than 256 data items (273 counting keys, "
                "265 not)", "too_large",
                ev(mp(*[(u(k), arr(*[u(0)] * 64)) for k in (1, 2, 3, 4)])), "up/evt")
    bad_payload("cbor_float", "heap as a half-precision float (f9 3c 00)", "unsupported_cbor",
                mp(*pairs_with(11, raw(b"\xf9\x3c\x00"))).enc, "up/hb")
    bad_payload("cbor_float64", "uptime as a double", "unsupported_cbor",
                mp(*pairs_with(10, raw(b"\xfb" + bytes.fromhex("40ac200000000000")))).enc, "up/hb")
    bad_payload("cbor_undefined", "detail value undefined (f7)", "unsupported_cbor",
                ev(mp((u(1), raw(b"\xf7")))), "up/evt")
    bad_payload("cbor_simple_value", "detail value simple(16) (f0)", "unsupported_cbor",
                ev(mp((u(1), raw(b"\xf0")))), "up/evt")
    bad_payload("cbor_tag_in_payload", "iat wrapped in tag 1 (epoch time)", "unsupported_cbor",
                hb(iat=raw(b"\xc1" + u(T).enc)), "up/hb")
    bad_payload("cbor_tag17_in_payload", "tag 17 inside the payload", "unsupported_cbor",
                ev(mp((u(1), raw(b"\xd1" + arr().enc)))), "up/evt")
    bad_payload("cbor_bytes_key", "a byte-string map key in detail", "unsupported_cbor",
                ev(mp((b(b"k"), u(1)))), "up/evt")
    bad_payload("cbor_invalid_utf8", "code contains c3 28 (invalid UTF-8)", "malformed",
                payload("event", {"seq": u(33), "code": raw(head(3, 3) + b"a\xc3\x28")})[0],
                "up/evt")
    bad_payload("cbor_payload_trailing", "a byte after the payload map", "trailing",
                hb() + b"\x00", "up/hb")
    bad_payload("cbor_payload_truncated", "payload map announces one more entry than it has",
                "malformed", b"\xa7" + hb()[1:], "up/hb")

    # the order of checks within one item (SPEC §3): the head first (malformed, indefinite),
    # then the type (unsupported_cbor), the item total (too_large), depth (too_deep), the length
    # or count (too_large), and only then shortest form (non_canonical)
    def at_depth_9(item: bytes) -> V:
        # detail (depth 2) > 6 arrays (depths 3-8) > item at depth 9
        return raw(b"\x81" * 6 + item)

    bad_payload("cbor_depth9_truncated", "the item due at depth 9 is missing (the payload ends): "
                "malformed, its head is read before depth is judged", "malformed",
                ev(mp((u(1), at_depth_9(b"")))), "up/evt")
    bad_payload("cbor_depth9_indefinite", "an indefinite-length array at depth 9: indefinite "
                "before too_deep", "indefinite", ev(mp((u(1), at_depth_9(b"\x9f\xff")))),
                "up/evt")
    bad_payload("cbor_depth9_float", "a half float at depth 9: unsupported_cbor before "
                "too_deep", "unsupported_cbor", ev(mp((u(1), at_depth_9(b"\xf9\x3c\x00")))),
                "up/evt")
    # items before detail's entries: payload map, 3 keys and values (0, 8, 10), key 11, detail
    before = 1 + 6 + 1 + 1
    fill = [(u(k), arr(*[u(0)] * 64)) for k in (1, 2, 3)]
    n = 256 - before - 66 * 3 - 2  # zeros before the 257th item, in the array under key 4
    bad_payload("cbor_item_257_malformed", "the 257th data item has a reserved head (1c): "
                "malformed before too_large", "malformed",
                ev(mp(*fill, (u(4), raw(head(4, n + 1) + u(0).enc * n + b"\x1c")))), "up/evt")
    assert before + 66 * 3 + 2 + n + 1 == 257
    fill = [(u(k), arr(*[u(0)] * 64)) for k in (1, 2, 3)]
    n = 257 - before - 66 * 3 - 2 - 1 - 6 - 1  # zeros under key 4; key 5 > 6 arrays > 0
    assert 0 < n <= 64
    bad_payload("cbor_item_257_at_depth_9", "the 257th data item is also at depth 9: too_large, "
                "items are counted before depth is judged", "too_large",
                ev(mp(*fill, (u(4), arr(*[u(0)] * n)), (u(5), at_depth_9(u(0).enc)))), "up/evt")
    bad_payload("cbor_f8_below_32", "simple value written f8 14 (a value below 32 in the "
                "one-byte form): not well-formed, RFC 8949 §3.3", "malformed",
                ev(mp((u(1), raw(b"\xf8\x14")))), "up/evt")
    bad_payload("cbor_tag_nonshortest_nested", "tag 17 with a one-byte argument (d8 11) inside "
                "the payload: unsupported_cbor before non_canonical", "unsupported_cbor",
                ev(mp((u(1), raw(b"\xd8\x11\x00")))), "up/evt")
    bad_payload("cbor_bytes_key_nonshortest", "a byte-string map key with a non-shortest length "
                "(58 01 00): unsupported_cbor before non_canonical", "unsupported_cbor",
                ev(raw(b"\xa1\x58\x01\x00\x00")), "up/evt")
    bad_payload("cbor_string_513_nonshortest", "a 513-byte byte string whose length is written "
                "in 4 bytes (5a 00 00 02 01): too_large before non_canonical", "too_large",
                ev(mp((u(1), raw(head(2, 513, 4) + bytes(513))))), "up/evt")
    bad_payload("cbor_key_indefinite", "an indefinite-length byte string as a map key: its head "
                "is read first, indefinite before unsupported_cbor", "indefinite",
                ev(raw(b"\xa1\x5f\x41k\xff\x01")), "up/evt")
    bad_payload("cbor_key_break", "a lone break (ff) as a map key: malformed before "
                "unsupported_cbor", "malformed", ev(raw(b"\xa1\xff\x01")), "up/evt")

    # schema errors
    bad_payload("schema_not_a_map", "payload is an array", "bad_type",
                arr(u(3), u(42)).enc, "up/hb")
    bad_payload("schema_no_type", "payload without key 0", "missing", mp(*base[1:]).enc, "up/hb")
    bad_payload("schema_type_text", "type as text \"heartbeat\"", "bad_type",
                mp((u(0), t("heartbeat")), *base[1:]).enc, "up/hb")
    bad_payload("schema_unknown_type", "message type 99", "unknown_type",
                mp((u(0), u(99)), *base[1:]).enc, "up/hb")
    bad_payload("schema_wrong_topic", "a heartbeat on up/evt", "bad_topic", hb(), "up/evt")
    bad_payload("schema_command_on_up", "a command on up/res (MACed for up/res)", "bad_topic",
                payload("command", {"aud": t(DEV), "exp": u(T + 9), "iat": u(T), "cti": b(CTI),
                                    "seq": u(601), "name": t("open")})[0], "up/res")
    bad_payload("schema_seq_text", "seq as text", "bad_type", hb(seq=t("42")), "up/hb")
    bad_payload("schema_seq_negative", "seq -1 (major type 1 where uint is required)",
                "bad_type", hb(seq=i(-1)), "up/hb")
    bad_payload("schema_online_int", "status online as 1 instead of true", "bad_type",
                payload("status", {"seq": u(3), "online": u(1)})[0], "up/status")
    hello = dict(HELLO)
    del hello["board"]
    bad_payload("schema_missing_board", "hello without board", "missing",
                payload("hello", hello)[0], "up/hello")
    bad_payload("schema_fw_empty", "hello fw is the empty string (1-32)", "bad_value",
                payload("hello", {**HELLO, "fw": t("")})[0], "up/hello")
    bad_payload("schema_reset_enum", "hello reset \"cosmic_ray\"", "bad_value",
                payload("hello", {**HELLO, "reset": t("cosmic_ray")})[0], "up/hello")
    bad_payload("schema_caps_17", "hello with 17 capabilities (<= 16)", "bad_value",
                payload("hello", {**HELLO, "caps": arr(*[t(f"c{n}") for n in range(17)])})[0],
                "up/hello")
    bad_payload("schema_clock_2", "heartbeat clock 2 (0 or 1)", "bad_value", hb(clock=u(2)),
                "up/hb")
    sess = {"seq": u(110), "prev": b(PREV1), "sid": t("s-9"), "amount": u(100), "cur": t("EUR"),
            "t1": u(T)}
    bad_payload("schema_currency_lower", "currency \"eur\"", "bad_value",
                payload("sess_update", {**sess, "cur": t("eur")})[0], "up/rec")
    bad_payload("schema_prev_15", "prev of 15 bytes", "bad_value",
                payload("sess_update", {**sess, "prev": b(bytes(15))})[0], "up/rec")
    bad_payload("cbor_amount_float", "amount as a half float (100.0): never a float for money",
                "unsupported_cbor",
                payload("sess_update", {**sess, "amount": raw(b"\xf9\x56\x40")})[0], "up/rec")
    bad_payload("schema_open_amount_no_cur", "sess_open with amount but no cur", "missing",
                payload("sess_open", {"seq": u(111), "prev": b(PREV1), "sid": t("s-10"),
                                      "payer": t("p"), "t0": u(T), "amount": u(100)})[0],
                "up/rec")
    close = {**sess, "payer": t("p"), "t0": u(T - 60)}
    bad_payload("schema_lines_shape", "a line of two items instead of [sku, qty, unit_price]",
                "bad_type", payload("sess_close", {**close, "lines": arr(arr(t("tea"), u(1)))})[0],
                "up/rec")
    bad_payload("schema_status_not_error_number", "cmd_result status 9: not a §7 error number",
                "bad_value", payload("cmd_result", {"seq": u(112), "status": u(9)})[0],
                "up/res")
    req = {"seq": u(123), "sid": t("s-0102"), "payer": t("tag:04a1b2"), "purpose": t("vend")}
    bad_payload("schema_auth_req_purpose", "auth_req purpose \"park\"", "bad_value",
                payload("auth_req", {**req, "purpose": t("park")})[0], "up/req")
    bad_payload("schema_auth_req_amount_no_cur", "auth_req with amount but no cur", "missing",
                payload("auth_req", {**req, "amount": u(300)})[0], "up/req")
    bad_payload("schema_auth_req_wrong_topic", "an auth_req on up/rec (MACed for up/rec)",
                "bad_topic", payload("auth_req", req)[0], "up/rec")
    command = {"aud": t(DEV), "exp": u(T + 300), "iat": u(T), "cti": b(CTI), "seq": u(602),
               "name": t("open")}
    bad_payload("schema_cti_short", "cti of 7 bytes (8-16)", "bad_value",
                payload("command", {**command, "cti": b(CTI[:7])})[0], "dn/cmd")
    bad_payload("schema_aud_pattern", "aud \"Gate_001\" is not a device id", "bad_value",
                payload("command", {**command, "aud": t("Gate_001")})[0], "dn/cmd")
    bad_payload("schema_args_not_map", "command args as an array", "bad_type",
                payload("command", {**command, "args": arr(u(1))})[0], "dn/cmd")


def render() -> str:
    CASES.clear()
    build_valid()
    build_envelope_errors()
    build_payload_errors()
    return json.dumps(CASES, indent=1) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        print(f"{OUT.name} is current ({len(CASES)} cases)")
        return 0
    OUT.write_text(text)
    n_err = sum("error" in c for c in CASES)
    print(f"wrote {OUT} ({len(CASES)} cases: {len(CASES) - n_err} valid, {n_err} invalid)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
