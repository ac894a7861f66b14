"""bench/link_size.py: how TLS records are charged to message types (a PUBLISH of its size, PUBACKs
of 4 bytes to the message they acknowledge, pings of 2, the rest MQTT control), the JSON baseline's
encoding, and a short run of the bench itself (the firmware on the VM over TLS to Mosquitto
through the counting proxy) whose bytes are all accounted for."""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from host_tools.protocol import make_kid, seal

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import link_size  # noqa: E402

KEY = bytes(range(32))
DEV = "gate-1"
K = SimpleNamespace(key=KEY, kid=make_kid(DEV, 1))
FRAME = 5 + 24  # TLS 1.2 record header + AES-GCM explicit nonce and tag


def msg(t, kind, topic_suffix, fields, qos):
    topic = f"v1/dev/{DEV}/{topic_suffix}"
    return (t, topic, seal(KEY, K.kid, topic, dict(fields, type=kind)), qos)


def test_records_are_charged_to_their_messages():
    hb = msg(1.0, "heartbeat", "up/hb", {"seq": 1, "uptime": 5, "heap": 9000, "jdepth": 0, "clock": 1}, 0)
    rec = msg(2.0, "sess_open", "up/rec", {"seq": 2, "prev": bytes(16), "sid": "g1-1", "payer": "PL1", "t0": 1767225600}, 1)
    ack = msg(4.0, "ack", "dn/ack", {"aud": DEV, "iat": 1767225601, "seq": 1, "upto": 2}, 1)
    rec2 = msg(5.0, "sess_close", "up/rec", {"seq": 3, "prev": bytes(16), "sid": "g1-1", "payer": "PL1",
                                              "t0": 1767225600, "t1": 1767229200, "amount": 500, "cur": "CNY"}, 1)
    msgs = [hb, rec, ack, rec2]
    size = {m[1] + str(m[0]): link_size.publish_size(m[1], len(m[2]), m[3]) for m in msgs}
    c = link_size.Conn()
    c.cipher = 0xC02C
    c.records = [
        (0.1, "up", 22, 300), (0.2, "dn", 22, 900),                          # handshake
        (0.3, "up", 23, 20 + FRAME), (0.31, "dn", 23, 4 + FRAME),            # CONNECT, CONNACK
        (1.0, "up", 23, size[hb[1] + "1.0"] + FRAME),
        (2.0, "up", 23, size[rec[1] + "2.0"] + FRAME), (2.001, "dn", 23, 4 + FRAME),  # PUBLISH, PUBACK
        (3.0, "up", 23, 2 + FRAME), (3.001, "dn", 23, 2 + FRAME),            # PINGREQ, PINGRESP
        (4.0, "dn", 23, size[ack[1] + "4.0"] + FRAME),
        (5.0, "up", 23, size[rec2[1] + "5.0"] + 4 + FRAME),                  # PUBLISH + the ack's PUBACK
        (5.001, "dn", 23, 4 + FRAME),
    ]
    att = link_size.attribute(c, msgs, K)
    t = att["types"]
    assert att["missing"] == []
    assert t["tls_handshake"]["bytes"] == 1200
    assert t["mqtt_control"]["bytes"] == 24 + 2 * FRAME
    assert t["up/hb"] == {"n": 1, "bytes": size[hb[1] + "1.0"] + FRAME}
    assert t["up/rec:sess_open"] == {"n": 1, "bytes": size[rec[1] + "2.0"] + FRAME + 4 + FRAME}
    assert t["mqtt_ping"] == {"n": 2, "bytes": 2 * (2 + FRAME)}
    assert t["dn/ack"] == {"n": 1, "bytes": size[ack[1] + "4.0"] + FRAME + 4}  # its PUBACK rode along
    assert t["up/rec:sess_close"] == {"n": 1, "bytes": size[rec2[1] + "5.0"] + FRAME + 4 + FRAME}
    assert sum(v["bytes"] for v in t.values()) == sum(r[3] for r in c.records)


def test_publish_size_and_the_json_baseline():
    assert link_size.publish_size("a/b", 10, 0) == 1 + 1 + 2 + 3 + 10
    assert link_size.publish_size("a/b", 200, 1) == 1 + 2 + 2 + 3 + 2 + 200
    js = json.loads(link_size.as_json(DEV, {"type": "sess_open", "prev": b"\x01\x02", "lines": [["cola", 1, 350]]}))
    assert js["device"] == DEV and js["prev"] == "0102" and js["lines"] == [["cola", 1, 350]]
    assert len(js["mac"]) == 64


def test_bench_short_run_accounts_for_every_byte():
    p = subprocess.run([sys.executable, "bench/link_size.py", "--idle", "2", "--span", "900", "--sessions", "50"],
                       cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["unaccounted_bytes"] == 0 and out["missing"] == 0 and out["sessions_measured"] >= 1
    assert 0 < out["link_bytes_per_device_day"] < out["json_bytes_per_device_day"]
    assert out["heartbeat_bytes"] < out["json_heartbeat_bytes"] and out["session_bytes"] < out["json_session_bytes"]
    # paho on the board's cipher suite: the board's heartbeat payload costs what it cost the board
    assert out["paho_cipher"] == out["cipher"] and out["paho_minus_board_heartbeat"] == 0
