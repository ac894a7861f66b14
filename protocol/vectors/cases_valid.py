"""The valid golden vectors: one per message type and its notable shapes (SPEC §9)."""
from __future__ import annotations

from wire_by_hand import (CTI, CTI16, DEV, FALSE, HB, HELLO, KEY, NONCE, PREV0, PREV1, REL, T, TRUE, V,
                          arr, b, case, chunk_data, i, mac0, mp, sized_event, t, topic, u, valid)


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
    valid("heartbeat_rx_counters", "heartbeat with the receive counters: refused, oversize, dropped",
          "heartbeat", {**HB, "rx_refused": u(3), "rx_oversize": u(1), "rx_dropped": u(300)})
    valid("heartbeat_offline_budget", "heartbeat with the offline budget used: 2350 minor units "
          "charged offline and 3 sessions opened offline, not yet re-authorised", "heartbeat",
          {**HB, "off_amt": u(2350), "off_n": u(3)})
    valid("heartbeat_uint_max", "uptime and heap 2^53-1, rssi -(2^53-1): at the count bound "
          "(SPEC §4 integer bounds)", "heartbeat",
          {**HB, "uptime": u((1 << 53) - 1), "heap": u((1 << 53) - 1), "rssi": i(-(1 << 53) + 1)})
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
    valid("sess_update_large_amount", "amount 10^12 minor units: at the money bound",
          "sess_update", {"seq": u(103), "prev": b(PREV1), "sid": t("s-0001"),
                          "amount": u(10 ** 12), "cur": t("JPY"), "t1": u(T + 1900)})
    valid("sess_close_bounds", "every integer at its bound: seq 2^53-1, t0 and t1 2^32-1, "
          "amount and unit_price 10^12, slot and qty 2^53-1", "sess_close",
          {"seq": u((1 << 53) - 1), "prev": b(PREV1), "sid": t("s-max"), "payer": t("p"),
           "slot": u((1 << 53) - 1), "t0": u((1 << 32) - 1), "amount": u(10 ** 12),
           "cur": t("JPY"), "t1": u((1 << 32) - 1),
           "lines": arr(arr(t("x"), u((1 << 53) - 1), u(10 ** 12)))})
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
    valid("auth_req_exit_priced", "auth_req for exit with t1, the instant its amount was priced "
          "(the cloud prices that instant, not the request's arrival)", "auth_req",
          {"seq": u(123), "iat": u(T + 5401), "sid": t("s-0100"), "payer": t("plate:B-EP-123"),
           "purpose": t("exit"), "amount": u(450), "cur": t("EUR"), "t0": u(T), "t1": u(T + 5400)})
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
    valid("ack_quarantined", "ack up to 104 whose batch held seqs 102 and 103 in quarantine "
          "(SPEC §6 Quarantine)", "ack", {"aud": t(DEV), "iat": u(T), "seq": u(514),
                                           "upto": u(104), "quarantined": arr(u(102), u(103))})
    valid("ack_quarantined_16", "quarantined at its bound: 16 seqs, the last 2^53-1", "ack",
          {"aud": t(DEV), "iat": u(T), "seq": u(515), "upto": u((1 << 53) - 1),
           "quarantined": arr(*[u(n) for n in range(15)], u((1 << 53) - 1))})
    valid("time_req", "the device asks for the time with a fresh 8-byte nonce", "time_req",
          {"seq": u(77), "nonce": b(NONCE)})
    valid("time_req_nonce16", "a time_req with a 16-byte nonce (the upper bound)", "time_req",
          {"seq": u(78), "nonce": b(CTI16)})
    valid("time", "the cloud's signed time, echoing the time_req's nonce", "time",
          {"aud": t(DEV), "iat": u(T + 7), "seq": u(513), "nonce": b(NONCE)})
    valid("chunk_req", "the device asks for chunk 0 of the release whose payload digest begins "
          "with rel (SPEC §10)", "chunk_req", {"seq": u(90), "rel": b(REL), "i": u(0)})
    valid("chunk_req_iat", "a chunk_req with iat, for chunk 41", "chunk_req",
          {"seq": u(91), "iat": u(T + 30), "rel": b(REL), "i": u(41)})
    valid("chunk_1536", "a chunk whose data is 1536 bytes: on dn/ota a byte string valued in the "
          "payload's top-level map may be up to 1536 bytes (SPEC §3)", "chunk",
          {"aud": t(DEV), "iat": u(T + 31), "seq": u(530), "rel": b(REL), "i": u(41),
           "data": b(chunk_data(1536))})
    valid("chunk_last_1_byte", "the last chunk of a release, 1 byte of data (the lower bound)",
          "chunk", {"aud": t(DEV), "iat": u(T + 32), "seq": u(531), "rel": b(REL), "i": u(63),
                    "data": b(chunk_data(1))})
    valid("chunk_unnumbered", "a chunk as the cloud sends it: no seq, no iat (SPEC §10: the request makes "
          "it fresh, the payload digest proves its bytes)", "chunk",
          {"aud": t(DEV), "rel": b(REL), "i": u(5), "data": b(chunk_data(1536))})
    valid("chunk_unknown_fields_bstr_1536", "a chunk with an unknown key 13 holding 1536 bytes: every "
          "byte string valued in a dn/ota payload's top-level map has the 1536-byte bound",
          "chunk", {"aud": t(DEV), "iat": u(T + 33), "seq": u(532), "rel": b(REL), "i": u(2),
                    "data": b(chunk_data(8))}, extra=((u(13), b(bytes(1536))),))

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
