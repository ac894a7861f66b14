"""The invalid golden vectors: envelope defects (COSE, MAC, kid, topic, size) and payload
defects behind a valid MAC (CBOR well-formedness, bounds, schema), each with its SPEC §7 error."""
from __future__ import annotations

from typing import Any

from wire_by_hand import (CTI, DEV, FALSE, HB, HELLO, KEY, KEY_OTHER, KEY_V2, KID, KID_OTHER,
                          KID_V2, NONCE, PREV1, REL, T, V, arr, b, bad_payload, case, chunk_data, head,
                          i, mac0, mac_tag, mp, mpx, payload, protected, raw, sized_event, t, topic,
                          u)


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
    # SPEC §4 integer bounds: one past each, bad_value in both codecs
    bad_payload("bound_amount_2_63", "amount 2^63: a valid CBOR uint that no signed 64-bit "
                "column holds (the poison record of issue 10 §4)", "bad_value",
                payload("sess_update", {**sess, "amount": u(1 << 63)})[0], "up/rec")
    bad_payload("bound_amount_money", "amount 10^12 + 1 minor units", "bad_value",
                payload("sess_update", {**sess, "amount": u(10 ** 12 + 1)})[0], "up/rec")
    bad_payload("bound_open_amount", "sess_open amount 2^64-1", "bad_value",
                payload("sess_open", {"seq": u(113), "prev": b(PREV1), "sid": t("s-11"),
                                      "payer": t("p"), "t0": u(T), "amount": u((1 << 64) - 1),
                                      "cur": t("EUR")})[0], "up/rec")
    bad_payload("bound_t1_2_32", "t1 2^32: past the time bound", "bad_value",
                payload("sess_update", {**sess, "t1": u(1 << 32)})[0], "up/rec")
    bad_payload("bound_t0_2_32", "sess_close t0 2^32", "bad_value",
                payload("sess_close", {**close, "t0": u(1 << 32)})[0], "up/rec")
    bad_payload("bound_seq_2_53", "record seq 2^53", "bad_value",
                payload("sess_update", {**sess, "seq": u(1 << 53)})[0], "up/rec")
    bad_payload("bound_slot_2_53", "sess_close slot 2^53", "bad_value",
                payload("sess_close", {**close, "slot": u(1 << 53)})[0], "up/rec")
    bad_payload("bound_unit_price", "a line's unit_price 10^12 + 1", "bad_value",
                payload("sess_close", {**close, "lines": arr(arr(t("tea"), u(1),
                                                                 u(10 ** 12 + 1)))})[0], "up/rec")
    bad_payload("bound_qty_2_53", "a line's qty 2^53", "bad_value",
                payload("sess_close", {**close, "lines": arr(arr(t("tea"), u(1 << 53),
                                                                 u(1)))})[0], "up/rec")
    bad_payload("bound_heap_2_64", "heartbeat heap 2^64-1 (no longer the full uint range)",
                "bad_value", hb(heap=u((1 << 64) - 1)), "up/hb")
    bad_payload("bound_rssi_2_53", "heartbeat rssi -(2^53)", "bad_value", hb(rssi=i(-(1 << 53))),
                "up/hb")
    bad_payload("bound_off_amt_2_53", "heartbeat off_amt 2^53 (a sum: the count bound)",
                "bad_value", hb(off_amt=u(1 << 53)), "up/hb")
    bad_payload("schema_off_n_negative", "heartbeat off_n -1 (a uint)", "bad_type",
                hb(off_n=i(-1)), "up/hb")
    bad_payload("bound_iat_2_32", "heartbeat iat 2^32", "bad_value", hb(iat=u(1 << 32)), "up/hb")
    bad_payload("bound_boots_2_53", "hello boots 2^53", "bad_value",
                payload("hello", {**HELLO, "boots": u(1 << 53)})[0], "up/hello")
    bad_payload("bound_cseq_2_53", "cmd_result cseq 2^53", "bad_value",
                payload("cmd_result", {"seq": u(114), "status": u(0), "cseq": u(1 << 53)})[0],
                "up/res")
    bad_payload("bound_auth_req_t0", "auth_req t0 2^32", "bad_value",
                payload("auth_req", {"seq": u(115), "sid": t("s-1"), "payer": t("p"),
                                     "purpose": t("exit"), "t0": u(1 << 32)})[0], "up/req")
    bad_payload("bound_auth_req_t1", "auth_req t1 2^32", "bad_value",
                payload("auth_req", {"seq": u(116), "sid": t("s-1"), "payer": t("p"),
                                     "purpose": t("exit"), "t1": u(1 << 32)})[0], "up/req")
    ack = {"aud": t(DEV), "iat": u(T), "seq": u(603), "upto": u(104)}
    bad_payload("bound_ack_upto_2_53", "ack upto 2^53", "bad_value",
                payload("ack", {**ack, "upto": u(1 << 53)})[0], "dn/ack")
    bad_payload("bound_command_exp", "command exp 2^32", "bad_value",
                payload("command", {"aud": t(DEV), "exp": u(1 << 32), "iat": u(T), "cti": b(CTI),
                                    "seq": u(604), "name": t("open")})[0], "dn/cmd")
    bad_payload("schema_ack_quarantined_17", "ack quarantined with 17 seqs (<= 16)", "bad_value",
                payload("ack", {**ack, "quarantined": arr(*[u(n) for n in range(17)])})[0],
                "dn/ack")
    bad_payload("schema_ack_quarantined_2_53", "ack quarantined seq 2^53", "bad_value",
                payload("ack", {**ack, "quarantined": arr(u(1), u(1 << 53))})[0], "dn/ack")
    bad_payload("schema_ack_quarantined_text", "ack quarantined seq as text, after an "
                "out-of-range one: the list's type is checked whole first", "bad_type",
                payload("ack", {**ack, "quarantined": arr(u(1 << 60), t("3"))})[0], "dn/ack")
    bad_payload("schema_ack_quarantined_not_list", "ack quarantined as one uint", "bad_type",
                payload("ack", {**ack, "quarantined": u(3)})[0], "dn/ack")
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
    answer = {"aud": t(DEV), "iat": u(T), "seq": u(603), "nonce": b(NONCE)}
    bad_payload("schema_time_no_nonce", "a time answer without a nonce (an unsolicited beacon)",
                "missing", payload("time", {k: v for k, v in answer.items() if k != "nonce"})[0],
                "dn/time")
    bad_payload("schema_time_nonce_short", "a time answer whose nonce is 7 bytes (8-16)", "bad_value",
                payload("time", {**answer, "nonce": b(NONCE[:7])})[0], "dn/time")
    bad_payload("schema_time_nonce_text", "a time answer whose nonce is a text string", "bad_type",
                payload("time", {**answer, "nonce": t("a1b2c3d4e5f6")})[0], "dn/time")
    bad_payload("schema_time_req_no_nonce", "a time_req without a nonce", "missing",
                payload("time_req", {"seq": u(79)})[0], "up/time")
    bad_payload("schema_time_req_nonce_17", "a time_req whose nonce is 17 bytes (8-16)", "bad_value",
                payload("time_req", {"seq": u(79), "nonce": b(bytes(17))})[0], "up/time")
    bad_payload("schema_time_req_wrong_topic", "a time_req on up/req (MACed for up/req)", "bad_topic",
                payload("time_req", {"seq": u(79), "nonce": b(NONCE)})[0], "up/req")
    build_chunk_errors()
    command = {"aud": t(DEV), "exp": u(T + 300), "iat": u(T), "cti": b(CTI), "seq": u(602),
               "name": t("open")}
    bad_payload("schema_cti_short", "cti of 7 bytes (8-16)", "bad_value",
                payload("command", {**command, "cti": b(CTI[:7])})[0], "dn/cmd")
    bad_payload("schema_aud_pattern", "aud \"Gate_001\" is not a device id", "bad_value",
                payload("command", {**command, "aud": t("Gate_001")})[0], "dn/cmd")
    bad_payload("schema_args_not_map", "command args as an array", "bad_type",
                payload("command", {**command, "args": arr(u(1))})[0], "dn/cmd")


def build_chunk_errors() -> None:
    """chunk_req (12) and chunk (23), SPEC §10, and the one exception to the 512-byte string
    bound (SPEC §3): a byte string valued in the top-level map of a payload on dn/ota."""
    chunk = {"aud": t(DEV), "iat": u(T + 40), "seq": u(540), "rel": b(REL), "i": u(5),
             "data": b(chunk_data(1536))}
    small = {**chunk, "data": b(chunk_data(64))}
    req = {"seq": u(95), "rel": b(REL), "i": u(5)}

    def ck(**changes: V) -> bytes:
        return payload("chunk", {**chunk, **changes})[0]

    # the bound: 1536 on dn/ota, for top-level bstr values only; 512 everywhere else
    bad_payload("chunk_data_1537", "a chunk whose data is 1537 bytes: over the dn/ota bound, "
                "too_large before it is read", "too_large", ck(data=b(chunk_data(1537))), "dn/ota")
    bad_payload("chunk_data_1537_nonshortest", "1537 bytes of data with the length written in 4 "
                "bytes (5a 00 00 06 01): too_large before non_canonical", "too_large",
                ck(data=raw(head(2, 1537, 4) + chunk_data(1537))), "dn/ota")
    bad_payload("chunk_data_tstr_600", "a chunk whose data is a 600-byte text string: text keeps "
                "the 512-byte bound on dn/ota (too_large before bad_type)", "too_large",
                ck(data=t("d" * 600)), "dn/ota")
    bad_payload("chunk_unknown_tstr_600", "a chunk with an unknown key 13 holding a 600-byte text "
                "string", "too_large", payload("chunk", small, ((u(13), t("x" * 600)),))[0],
                "dn/ota")
    bad_payload("chunk_nested_bstr_600", "a chunk with an unknown key 13 holding a map whose "
                "value is a 600-byte byte string: only the top-level map's values may exceed 512",
                "too_large", payload("chunk", small, ((u(13), mp((u(1), b(bytes(600))))),))[0],
                "dn/ota")
    bad_payload("chunk_array_bstr_600", "a chunk with an unknown key 13 holding an array of one "
                "600-byte byte string", "too_large",
                payload("chunk", small, ((u(13), arr(b(bytes(600)))),))[0], "dn/ota")
    bad_payload("ota_payload_array_bstr_600", "a payload on dn/ota that is an array holding a "
                "600-byte byte string: an array's elements are not values of a map (too_large "
                "before bad_type)", "too_large", arr(u(23), b(bytes(600))).enc, "dn/ota")
    bad_payload("chunk_data_600_on_up_ota", "a chunk with 600 bytes of data published on up/ota: "
                "the 512-byte bound holds off dn/ota (too_large before bad_topic)", "too_large",
                ck(data=b(chunk_data(600))), "up/ota")
    bad_payload("time_bstr_600", "a time answer on dn/time with an unknown key 12 holding 600 "
                "bytes: the 1536 bound is dn/ota's only", "too_large",
                payload("time", {"aud": t(DEV), "iat": u(T), "seq": u(541), "nonce": b(NONCE)},
                        ((u(12), b(chunk_data(600))),))[0], "dn/time")
    bad_payload("event_detail_bstr_600", "an event on up/evt whose detail holds a 600-byte byte "
                "string", "too_large",
                payload("event", {"seq": u(34), "code": t("x"),
                                  "detail": mp((u(1), b(chunk_data(600))))})[0], "up/evt")
    bad_payload("heartbeat_bstr_600", "a heartbeat with an unknown top-level key 99 holding 600 "
                "bytes", "too_large", payload("heartbeat", HB, ((u(99), b(bytes(600))),))[0],
                "up/hb")
    # topics
    bad_payload("chunk_req_on_dn_ota", "a chunk_req on dn/ota (MACed for dn/ota)", "bad_topic",
                payload("chunk_req", req)[0], "dn/ota")
    bad_payload("chunk_on_up_ota", "a chunk with 64 bytes of data on up/ota (MACed for up/ota)",
                "bad_topic", payload("chunk", small)[0], "up/ota")
    bad_payload("chunk_on_dn_cmd", "a chunk on dn/cmd (MACed for dn/cmd)", "bad_topic",
                payload("chunk", small)[0], "dn/cmd")
    # fields
    bad_payload("chunk_rel_7", "a chunk whose rel is 7 bytes (exactly 8)", "bad_value",
                ck(rel=b(REL[:7])), "dn/ota")
    bad_payload("chunk_req_rel_9", "a chunk_req whose rel is 9 bytes (exactly 8)", "bad_value",
                payload("chunk_req", {**req, "rel": b(REL + b"\x00")})[0], "up/ota")
    bad_payload("chunk_req_rel_text", "a chunk_req whose rel is a text string", "bad_type",
                payload("chunk_req", {**req, "rel": t("0123abcd")})[0], "up/ota")
    bad_payload("chunk_req_no_i", "a chunk_req without i", "missing",
                payload("chunk_req", {k: v for k, v in req.items() if k != "i"})[0], "up/ota")
    bad_payload("chunk_req_i_2_53", "a chunk_req whose i is 2^53", "bad_value",
                payload("chunk_req", {**req, "i": u(1 << 53)})[0], "up/ota")
    bad_payload("chunk_no_data", "a chunk without data", "missing",
                payload("chunk", {k: v for k, v in chunk.items() if k != "data"})[0], "dn/ota")
    bad_payload("chunk_data_empty", "a chunk whose data is empty (1-1536)", "bad_value",
                ck(data=b(b"")), "dn/ota")
    bad_payload("chunk_data_text", "a chunk whose data is a short text string", "bad_type",
                ck(data=t("abc")), "dn/ota")
    bad_payload("chunk_no_aud", "a chunk without aud", "missing",
                payload("chunk", {k: v for k, v in small.items() if k != "aud"})[0], "dn/ota")
    bad_payload("chunk_i_negative", "a chunk whose i is -1", "bad_type", ck(i=i(-1)), "dn/ota")
