"""The firmware codec's tables against protocol/SPEC.md, as the MicroPython VM sees them: the §7
error codes (tests/vm/errors_table.py) and the §4 message schemas (tests/vm/schema_dump.py),
each written out again here by hand."""
import json

from tests.vm import ROOT, run_vm


def test_errors_table_matches_spec():
    out = run_vm(ROOT / "tests" / "vm" / "errors_table.py").stdout.strip().splitlines()[-1]
    spec = (ROOT / "protocol" / "SPEC.md").read_text()
    section = spec.split("## 7.")[1].split("Verification order")[0]
    want = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].isdigit():
            want[cells[1]] = int(cells[0])
    assert json.loads(out) == want


# SPEC §4 by hand: type -> (name, topic, "key name required(1/0)" ...), in ascending key order
SCHEMA = {
    1: ("hello", "/up/hello", "6 iat 0|8 seq 1|10 fw 1|11 board 1|12 reset 1|13 caps 1|14 kind 1|15 boots 0"),
    2: ("status", "/up/status", "6 iat 0|8 seq 1|10 online 1"),
    3: ("heartbeat", "/up/hb",
        "6 iat 0|8 seq 1|10 uptime 1|11 heap 1|12 jdepth 1|13 rssi 0|14 clock 1|15 rx_refused 0|"
        "16 rx_oversize 0|17 rx_dropped 0|18 off_amt 0|19 off_n 0"),
    4: ("event", "/up/evt", "6 iat 0|8 seq 1|10 code 1|11 detail 0"),
    5: ("alarm", "/up/evt", "6 iat 0|8 seq 1|10 code 1|11 detail 0|12 active 1"),
    6: ("sess_open", "/up/rec", "8 seq 1|9 prev 1|10 sid 1|11 payer 1|12 slot 0|13 t0 1|"
                                "14 offline 0|15 auth 0|16 amount 0|17 cur 0|21 item 0"),
    7: ("sess_update", "/up/rec", "8 seq 1|9 prev 1|10 sid 1|16 amount 1|17 cur 1|18 t1 1"),
    8: ("sess_close", "/up/rec", "8 seq 1|9 prev 1|10 sid 1|11 payer 1|12 slot 0|13 t0 1|"
                                 "14 offline 0|15 auth 0|16 amount 1|17 cur 1|18 t1 1|19 lines 0|"
                                 "20 reason 0"),
    9: ("cmd_result", "/up/res", "6 iat 0|7 cti 0|8 seq 1|10 status 1|11 name 0|12 data 0|13 cseq 0"),
    10: ("auth_req", "/up/req", ("6 iat 0|8 seq 1|10 sid 1|11 payer 1|12 slot 0|14 purpose 1|"
                                 "15 auth 0|16 amount 0|17 cur 0|18 t0 0|19 t1 0")),
    20: ("command", "/dn/cmd", "3 aud 1|4 exp 1|5 nbf 0|6 iat 1|7 cti 1|8 seq 1|10 name 1|11 args 0"),
    21: ("ack", "/dn/ack", "3 aud 1|6 iat 1|8 seq 1|10 upto 1|11 resend 0|12 quarantined 0"),
    11: ("time_req", "/up/time", "8 seq 1|10 nonce 1"),
    22: ("time", "/dn/time", "3 aud 1|6 iat 1|8 seq 1|10 nonce 1"),
    12: ("chunk_req", "/up/ota", "6 iat 0|8 seq 1|10 rel 1|11 i 1"),
    23: ("chunk", "/dn/ota", "3 aud 1|6 iat 0|8 seq 0|10 rel 1|11 i 1|12 data 1"),
}


def test_schema_tables_match_spec():
    rows = [json.loads(ln) for ln in run_vm("schema_dump.py").stdout.splitlines() if ln.strip()]
    out = {str(r[0]): r[1:] for r in rows}
    assert sorted(map(int, out)) == sorted(SCHEMA)
    for t, (name, topic, spec) in SCHEMA.items():
        got_name, got_topic, got_level, got_fields = out[str(t)]
        assert (got_name, got_topic, got_level) == (name, "v1/dev/gate-001" + topic,
                                                    topic.split("/")[-1])
        want = [(int(k), n, int(r)) for k, n, r in (f.split() for f in spec.split("|"))]
        assert [(f[0], f[1], f[3]) for f in got_fields] == want, name
