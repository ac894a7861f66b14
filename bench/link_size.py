"""Link bytes of a device's day, MQTT and TLS framing included (issue 14 §4): the firmware's
COSE_Mac0 messages against the same day as JSON with a hex HMAC-SHA256 (bench/wire_size.py's rule).

Measured, not estimated:

1. The firmware (a gate, sim-gate, on the MicroPython VM) runs in a site (host_tools/sim/world.py:
   its cloud side, ingest with signed acks, the session service, the time responder) whose broker
   is a real Mosquitto with a TLS 1.2 listener; the board reaches it over TLS (server certificate
   verified) through a counting TCP proxy on loopback. The proxy counts every byte of TCP payload
   both ways and cuts the streams into TLS records (their 5-byte headers are in the clear). A
   cloud-side subscriber on the broker's plain cloud port sees every message to and from the board
   with its topic and payload, so each application-data record is matched to the MQTT packets in
   it (PUBLISH of a known size, PUBACK 4 bytes, PINGREQ/PINGRESP 2; the cipher suite's fixed
   overhead from the ServerHello) and its bytes charged to a message type; what matches no
   message (CONNECT, CONNACK, SUBSCRIBE, SUBACK, DISCONNECT) is `mqtt_control`; handshake records
   are `tls_handshake`. A record carrying a PUBLISH and PUBACKs (the firmware puts queued PUBACKs
   behind a small PUBLISH in one write) pays its 5 + overhead bytes once, to the PUBLISH.
   The compressed day, timings scaled by --scale (10: heartbeat 6 s for 60, keepalive 3 s for
   the firmware's default 30, time exchange every 60 s for 600): the boot (connect, hello,
   status, time exchange, then the site's set_tariff and set_policy), an idle stretch of
   --idle heartbeats, a gate's traffic (host_tools/sim/scenarios.py hour_plan over --span
   simulated seconds at x60: cars with pay-after plates and QR payers, each an entry and an
   exit authorisation, a sess_open and a sess_close, their acks), the drain.
2. The JSON baseline: every message of that run that belongs to the day, re-encoded as JSON +
   hex HMAC (the same fields, field names as SPEC §4's short names, the device id, compact, the
   MAC over the JSON without "mac", hex: bench/wire_size.py), published with paho over TLS
   through the same proxy to the same Mosquitto (uplink by a paho client with the device's
   credentials, downlink by the cloud to that client), one at a time, each message's bytes
   (both ways: the PUBLISH record and its PUBACK record) counted. The board's own COSE payloads
   go the same way, so `json - cose` per message is the encoding's difference alone, on the same
   MQTT+TLS. The JSON day is the firmware's measured day with each message's bytes moved by that
   difference (the firmware's framing, its coalesced PUBACKs included, kept as measured).

The day's model (per device): one connection (TLS handshake, MQTT connect and subscribe, hello,
status), 86,400 / 60 = 1,440 heartbeats and the keepalive pings measured per heartbeat interval in
the idle stretch, 86,400 / 600 + 1 = 145 time exchanges, 50 sessions at the measured bytes of one
gate session (two authorisations with their command results, two records, their acks); the
provisioning commands (set_tariff, set_policy) are not a day's and are left out (printed).

    python bench/link_size.py [--scale 10] [--idle 6] [--span 1500] [--sessions 50]

Goal (issue 14): link_ratio <= 0.5. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from host_tools.broker import Broker  # noqa: E402
from host_tools.protocol import ProtocolError, open_message  # noqa: E402
from host_tools.tls import write_pki  # noqa: E402

CLOUD = ("cloud", "cloud-pw")
DEVICE = "gate-1"
DAY = 86400
# AEAD suites' per-record overhead in TLS 1.2 (explicit nonce + tag): GCM and CCM 8 + 16; ChaCha20 16
# the suites above by OpenSSL name: the paho client is held to the one the board got
OPENSSL_NAME = {0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256", 0xC02C: "ECDHE-ECDSA-AES256-GCM-SHA384",
                0xC02F: "ECDHE-RSA-AES128-GCM-SHA256", 0xC030: "ECDHE-RSA-AES256-GCM-SHA384",
                0xCCA8: "ECDHE-RSA-CHACHA20-POLY1305", 0xCCA9: "ECDHE-ECDSA-CHACHA20-POLY1305"}
OVERHEAD = {**{s: 24 for s in (0x009C, 0x009D, 0x009E, 0x009F, 0xC02B, 0xC02C, 0xC02F, 0xC030,
                               0xC0AC, 0xC0AD, 0xC09C, 0xC09D)},
            **{s: 16 for s in (0xCCA8, 0xCCA9, 0xCCAA)}}


# ---- the counting proxy ---------------------------------------------------------------------------
class Conn:
    def __init__(self) -> None:
        self.bytes = {"up": 0, "dn": 0}
        self.records: list[tuple[float, str, int, int]] = []   # (t, dir, content type, wire bytes)
        self.cipher: int | None = None
        self._buf = {"up": b"", "dn": b""}
        self.lock = threading.Lock()

    def feed(self, d: str, data: bytes) -> None:
        t = time.monotonic()
        with self.lock:
            self.bytes[d] += len(data)
            buf = self._buf[d] + data
            while len(buf) >= 5:
                n = int.from_bytes(buf[3:5], "big")
                if len(buf) < 5 + n:
                    break
                rec, buf = buf[:5 + n], buf[5 + n:]
                if rec[0] == 22 and d == "dn" and self.cipher is None and rec[5] == 2:  # ServerHello
                    sid = rec[5 + 38]
                    self.cipher = int.from_bytes(rec[5 + 39 + sid:5 + 41 + sid], "big")
                self.records.append((t, d, rec[0], len(rec)))
            self._buf[d] = buf

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return self.bytes["up"], self.bytes["dn"]


class CountingProxy:
    """Loopback TCP proxy: every connection's bytes each way, cut into TLS records."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.port = self.srv.getsockname()[1]
        self.conns: list[Conn] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                a, _ = self.srv.accept()
            except OSError:
                return
            try:
                b = socket.create_connection(self.target)
            except OSError:
                a.close()
                continue
            c = Conn()
            self.conns.append(c)
            for src, dst, d in ((a, b, "up"), (b, a, "dn")):
                threading.Thread(target=self._pump, args=(src, dst, c, d), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, c: Conn, d: str) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                c.feed(d, data)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._stop = True
        self.srv.close()


# ---- what the cloud side sees -----------------------------------------------------------------------
class Tap:
    """Every message on v1/dev/<device>/#, up and down, as the broker passes it (cloud port)."""

    def __init__(self, port: int, device: str):
        self.msgs: list[tuple[float, str, bytes, int]] = []
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"tap-{os.urandom(3).hex()}")
        self.c.username_pw_set(*CLOUD)
        ok = threading.Event()
        self.c.on_connect = lambda c, u, f, r, p: (c.subscribe(f"v1/dev/{device}/#", 1), ok.set())
        self.c.on_message = lambda c, u, m: self.msgs.append((time.monotonic(), m.topic, bytes(m.payload), m.qos))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert ok.wait(5)
        time.sleep(0.3)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _vlen(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16384 else 3


def publish_size(topic: str, payload_len: int, qos: int) -> int:
    rem = 2 + len(topic.encode()) + (2 if qos else 0) + payload_len
    return 1 + _vlen(rem) + rem


# ---- attribution ---------------------------------------------------------------------------------------
def classify(topic: str, msg: dict | None, cmd_names: dict[int, str]) -> str:
    suffix = "/".join(topic.split("/")[3:])
    if msg is None:
        return suffix
    if suffix == "up/rec":
        return f"up/rec:{msg.get('type')}"
    if suffix == "dn/cmd":
        return f"dn/cmd:{msg.get('name')}"
    if suffix == "up/res":
        name = msg.get("name") or cmd_names.get(msg.get("cseq", -1), "?")
        return f"up/res:{name}"
    return suffix


def attribute(conn: Conn, msgs: list[tuple[float, str, bytes, int]], key: Any) -> dict:
    """Charge every record of `conn` to message types; {type: {"n": messages, "bytes": wire bytes}}."""
    ov = OVERHEAD.get(conn.cipher or -1)
    if ov is None:
        raise SystemExit(f"cipher suite {conn.cipher:#06x} is not an AEAD suite this bench knows")
    decoded = []
    cmd_names: dict[int, str] = {}
    for t, topic, payload, qos in msgs:
        try:
            m = open_message(key.key, key.kid, topic, payload)
        except ProtocolError:
            m = None
        if m is not None and topic.endswith("/dn/cmd"):
            cmd_names[m.get("seq", -1)] = m.get("name", "?")
        decoded.append((t, topic, payload, qos, m))
    pubs = {"up": [], "dn": []}
    for t, topic, payload, qos, m in decoded:
        d = "up" if "/up/" in topic else "dn"
        pubs[d].append({"t": t, "size": publish_size(topic, len(payload), qos), "qos": qos, "type":
                        classify(topic, m, cmd_names), "topic": topic, "payload": payload, "msg": m,
                        "used": False, "acked": False})
    out: dict[str, dict] = defaultdict(lambda: {"n": 0, "bytes": 0})
    unmatched = {"up": 0, "dn": 0}
    for t, d, ctype, wire in sorted(conn.records):
        if ctype != 23:
            out["tls_handshake" if ctype in (20, 22) else "tls_alert"]["bytes"] += wire
            continue
        L = wire - 5 - ov
        frame = wire - L  # the record's own bytes: charged once, to its first packet
        other = "dn" if d == "up" else "up"
        # a PUBLISH in this direction near this time that fits
        cand = [p for p in pubs[d] if not p["used"] and p["size"] <= L and abs(p["t"] - t) <= 1.5]
        cand.sort(key=lambda p: (L - p["size"] != 0, abs(p["t"] - t)))
        r = L
        if cand:
            p = cand[0]
            p["used"] = True
            out[p["type"]]["n"] += 1
            out[p["type"]]["bytes"] += p["size"] + frame
            r -= p["size"]
            frame = 0
        # PUBACKs of the other direction's QoS 1 messages, oldest first
        while r >= 4:
            acks = [p for p in pubs[other] if p["qos"] == 1 and not p["acked"] and p["t"] <= t + 0.3]
            if not acks:
                break
            a = acks[0]
            a["acked"] = True
            out[a["type"]]["bytes"] += 4 + frame
            r -= 4
            frame = 0
        if r == 2:  # PINGREQ / PINGRESP
            out["mqtt_ping"]["n"] += 1
            out["mqtt_ping"]["bytes"] += 2 + frame
            r, frame = 0, 0
        if r or frame:  # CONNECT, CONNACK, SUBSCRIBE, SUBACK, DISCONNECT
            out["mqtt_control"]["bytes"] += r + frame
            unmatched[d] += 1
    missing = [p["type"] for d in pubs for p in pubs[d] if not p["used"]]
    return {"types": dict(out), "missing": missing, "control_records": unmatched, "pubs": pubs,
            "overhead": ov}


# ---- the firmware's compressed day ------------------------------------------------------------------
def firmware_day(root: Path, pki: dict, args: argparse.Namespace) -> dict:
    import host_tools.sim.world as world_mod
    from host_tools.sim.scenarios import Runner, hour_plan
    from host_tools.sim.world import World

    br = Broker(users={CLOUD[0]: CLOUD[1]}, cloud_users=(CLOUD[0],),
                tls={"cafile": pki["ca"], "certfile": pki["cert"], "keyfile": pki["key"]}).start()
    br.host = "127.0.0.1"
    proxy = CountingProxy(br.tls_port)
    real = world_mod.provision_sim
    k = args.scale
    timing = {"hb_s": 60 // k, "keepalive_s": args.keepalive // k, "time_s": 600 // k}

    def provision_tls(broker, registry, r, name, **kw):  # the site's boards: TLS, through the proxy
        kw["settings"] = dict(kw.get("settings") or {}, **timing)
        kw.pop("broker_port", None)
        return real(broker, registry, r, name, ca_file=pki["ca"], broker_port=proxy.port, **kw)
    world_mod.provision_sim = provision_tls
    marks: dict[str, float] = {}
    w = World(root / "site", rate=60, seed=args.seed, proxy=False, broker=br, cloud_user=CLOUD[0],
              cloud_password=CLOUD[1], heapsize="96K")
    try:
        w.start()
        tap = Tap(br.cloud_port, DEVICE)
        marks["start"] = time.monotonic()
        w.add_devices([(DEVICE, "gate")])
        marks["booted"] = time.monotonic()
        time.sleep(args.idle * timing["hb_s"] + 0.5)
        marks["idle_end"] = time.monotonic()
        plan = hour_plan(args.seed, [(DEVICE, "gate")], span=args.span, faults=False)
        runner = Runner(w, plan)
        runner.run()
        w.drain(30)
        time.sleep(1.0)
        marks["end"] = time.monotonic()
        sessions = [s for s in w.ledger.sessions() if s.device == DEVICE]
        closed = sum(1 for s in sessions if s.state == "closed")
        key = w.registry.get(DEVICE)
        password = json.loads((w.devices[DEVICE].board.dir / "config.json").read_text())["broker"]["password"]
        tap.close()
    finally:
        world_mod.provision_sim = real
        w.close()
    time.sleep(0.5)
    conns = [c for c in proxy.conns if c.records]
    if len(conns) != 1:
        raise SystemExit(f"expected one TLS connection of the board, saw {len(conns)}")
    conn = conns[0]
    att = attribute(conn, tap.msgs, key)
    idle_pings = _pings_between(conn, att["overhead"], marks["booted"], marks["idle_end"])
    idle_hbs = sum(1 for t, topic, _, _ in tap.msgs if topic.endswith("/up/hb")
                   and marks["booted"] <= t <= marks["idle_end"])
    return {"broker": br, "proxy": proxy, "conn": conn, "att": att, "marks": marks, "sessions": closed,
            "key": key, "password": password, "timing": timing, "msgs": tap.msgs,
            "pings_per_hb": idle_pings / max(1, idle_hbs), "idle_hbs": idle_hbs, "idle_pings": idle_pings}


def _pings_between(conn: Conn, ov: int, t0: float, t1: float) -> int:
    """PINGREQ + PINGRESP pairs in a window: application records of 2 plaintext bytes, upward."""
    return sum(1 for t, d, ctype, wire in conn.records
               if ctype == 23 and d == "up" and wire - 5 - ov == 2 and t0 <= t <= t1)


# ---- the same messages, and their JSON, through paho -----------------------------------------------------
def as_json(device: str, msg: dict) -> bytes:
    """bench/wire_size.py's rule: the same fields, the device id, compact, hex HMAC-SHA256 as "mac"."""
    key = hashlib.sha256(b"edgepay-bench-key").digest()
    fields = {"device": device, **{str(k): _hexed(v) for k, v in msg.items()}}
    body = json.dumps(fields, separators=(",", ":")).encode()
    mac = hmac.new(key, body, hashlib.sha256).hexdigest()
    return json.dumps({**fields, "mac": mac}, separators=(",", ":")).encode()


def _hexed(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if isinstance(v, dict):
        return {str(k): _hexed(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_hexed(x) for x in v]
    return v


def paho_costs(fw: dict, pki: dict) -> dict[str, dict[str, float]]:
    """Per message type, the mean wire bytes (both ways) of the board's own payloads and of their
    JSON, each published alone through the proxy over TLS (uplink by a client with the device's
    credentials, downlink by the cloud to it)."""
    br, proxy = fw["broker"], fw["proxy"]
    got = threading.Event()
    dev = paho.Client(CallbackAPIVersion.VERSION2, client_id=DEVICE, protocol=paho.MQTTv311)
    dev.username_pw_set(DEVICE, fw["password"])
    ctx = ssl.create_default_context(cafile=pki["ca"])
    ctx.check_hostname = False  # the proxy's address is not the certificate's name; the CA is verified
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if fw["conn"].cipher in OPENSSL_NAME:  # the board's suite, so a record costs the same both ways
        ctx.set_ciphers(OPENSSL_NAME[fw["conn"].cipher])
    dev.tls_set_context(ctx)
    ready = threading.Event()
    dev.on_connect = lambda c, u, f, r, p: (c.subscribe(f"v1/dev/{DEVICE}/dn/#", 1), ready.set())
    dev.on_message = lambda c, u, m: got.set()
    n_before = len(proxy.conns)
    dev.connect("127.0.0.1", proxy.port, keepalive=600)
    dev.loop_start()
    assert ready.wait(10)
    cloud = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{os.urandom(3).hex()}")
    cloud.username_pw_set(*CLOUD)
    cloud.connect("127.0.0.1", br.cloud_port)
    cloud.loop_start()
    time.sleep(0.5)
    conn = proxy.conns[n_before]
    fw["paho_cipher"] = conn.cipher
    out: dict[str, dict[str, list[int]]] = defaultdict(lambda: {"cose": [], "json": []})
    for d in ("up", "dn"):
        for p in fw["att"]["pubs"][d]:
            if p["msg"] is None:
                continue
            for enc, payload in (("cose", p["payload"]), ("json", as_json(DEVICE, p["msg"]))):
                a = sum(conn.snapshot())
                got.clear()
                if d == "up":
                    dev.publish(p["topic"], payload, qos=p["qos"]).wait_for_publish(5)
                else:
                    cloud.publish(p["topic"], payload, qos=1).wait_for_publish(5)
                    got.wait(5)
                time.sleep(0.08)  # the PUBACK's record
                out[p["type"]][enc].append(sum(conn.snapshot()) - a)
    for c in (dev, cloud):
        c.loop_stop()
        c.disconnect()
    return {t: {"n": len(v["cose"]), "cose": sum(v["cose"]) / len(v["cose"]), "json": sum(v["json"]) / len(v["json"])}
            for t, v in out.items() if v["cose"]}


# ---- the day -------------------------------------------------------------------------------------------
CONNECT = ("tls_handshake", "mqtt_control", "up/hello", "up/status")
TIME = ("up/time", "dn/time")
# not a day's: the site sets tariff, offline policy and allowlist once; get_state is its own query
PROVISIONING = tuple(f"{d}:{c}" for c in ("set_tariff", "set_policy", "set_allowlist", "get_state")
                     for d in ("dn/cmd", "up/res"))
SESSION = ("up/req", "up/rec", "dn/ack", "up/evt", "dn/cmd:auth", "up/res:auth",
           "dn/cmd:paid", "up/res:paid")   # paid: a QR payer's pre-authorised order, told to the gate


def session_types(types: dict) -> list[str]:
    return [t for t in types if t.startswith(SESSION)]


def day(types: dict, per: dict[str, float], pings_per_hb: float, sessions_run: int, n_sessions: int,
        ping_bytes: float) -> dict[str, float]:
    """The day's bytes by group from per-type totals of the run (`types`: {type: bytes}), `per`:
    mean bytes of one message of a type."""
    hb_day = DAY // 60
    time_day = DAY // 600 + 1
    sess = sum(types.get(t, 0) for t in session_types(types)) / max(1, sessions_run)
    t_ex = sum(per.get(t, 0) for t in TIME)
    return {"connect": sum(types.get(t, 0) for t in CONNECT), "heartbeats": hb_day * per.get("up/hb", 0),
            "keepalive": hb_day * pings_per_hb * ping_bytes, "time": time_day * t_ex,
            "sessions": n_sessions * sess}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=int, default=10, help="real timings are the day's / SCALE (heartbeat 60/SCALE s)")
    ap.add_argument("--idle", type=int, default=6, help="heartbeat intervals of the idle stretch")
    ap.add_argument("--span", type=int, default=1500, help="simulated seconds of the gate's traffic (x60)")
    ap.add_argument("--sessions", type=int, default=50, help="sessions in the day")
    ap.add_argument("--keepalive", type=int, default=30, help="the day's MQTT keepalive in s (the firmware's "
                    "default 30; a multiple of SCALE)")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="edgepay-link-"))
    pki = write_pki(root / "pki")
    fw = firmware_day(root, pki, args)
    try:
        costs = paho_costs(fw, pki)
    finally:
        fw["proxy"].close()
        fw["broker"].close()
    att = fw["att"]
    types = att["types"]
    tb = {t: v["bytes"] for t, v in types.items()}
    per_fw = {t: v["bytes"] / v["n"] for t, v in types.items() if v["n"]}
    ping_b = per_fw.get("mqtt_ping", 2 + 5 + att["overhead"]) * 2  # a PINGREQ and its PINGRESP
    # the JSON run: every message's bytes moved by (json - cose) measured through paho
    tb_json = dict(tb)
    for t, c in costs.items():
        if t in tb_json and types[t]["n"]:
            tb_json[t] = tb[t] + types[t]["n"] * (c["json"] - c["cose"])
    per_json = {t: tb_json[t] / types[t]["n"] for t in tb_json if types.get(t, {}).get("n")}
    cose_day = day(tb, per_fw, fw["pings_per_hb"], fw["sessions"], args.sessions, ping_b)
    json_day = day(tb_json, per_json, fw["pings_per_hb"], fw["sessions"], args.sessions, ping_b)
    total, total_json = sum(cose_day.values()), sum(json_day.values())
    up, dn = fw["conn"].bytes["up"], fw["conn"].bytes["dn"]
    counted = sum(tb.values())
    print(f"cipher suite {fw['conn'].cipher:#06x} (record overhead 5 + {att['overhead']} bytes); timings "
          f"{fw['timing']} (the day's / {args.scale})")
    print(f"the run: {up} bytes up, {dn} down, {len(fw['conn'].records)} TLS records; charged to types {counted} "
          f"(unaccounted {up + dn - counted}); messages not found on the wire: {att['missing'] or 'none'}")
    print(f"{fw['sessions']} gate sessions; idle stretch: {fw['idle_hbs']} heartbeats, {fw['idle_pings']} pings")
    print(f"{'type':24} {'n':>4} {'fw bytes':>9} {'per msg':>8} {'paho cose':>9} {'paho json':>9}")
    for t in sorted(types):
        v, c = types[t], costs.get(t, {})
        print(f"{t:24} {v['n']:>4} {v['bytes']:>9} {v['bytes'] / v['n'] if v['n'] else 0:>8.1f} "
              f"{c.get('cose', 0):>9.1f} {c.get('json', 0):>9.1f}")
    print("the day (bytes): COSE " + ", ".join(f"{k} {v:,.0f}" for k, v in cose_day.items())
          + f"; total {total:,.0f}")
    print("the day (bytes): JSON " + ", ".join(f"{k} {v:,.0f}" for k, v in json_day.items())
          + f"; total {total_json:,.0f}")
    prov = sum(tb.get(t, 0) for t in PROVISIONING)
    grouped = set(CONNECT) | set(TIME) | set(PROVISIONING) | set(session_types(types)) | {"up/hb", "mqtt_ping"}
    rest = {t: v for t, v in tb.items() if t not in grouped}
    print(f"left out of the day: provisioning and the site's queries {prov} bytes; in no group: {rest or 'nothing'}")
    no_ka = (total - cose_day["keepalive"]) / (total_json - json_day["keepalive"])
    print(json.dumps({
        "link_bytes_per_device_day": round(total), "json_bytes_per_device_day": round(total_json),
        "link_ratio": round(total / total_json, 3), "link_ratio_without_keepalive": round(no_ka, 3),
        "day": {k: round(v) for k, v in cose_day.items()}, "json_day": {k: round(v) for k, v in json_day.items()},
        "session_bytes": round(cose_day["sessions"] / args.sessions),
        "json_session_bytes": round(json_day["sessions"] / args.sessions),
        "heartbeat_bytes": round(per_fw.get("up/hb", 0), 1), "json_heartbeat_bytes": round(per_json.get("up/hb", 0), 1),
        "pings_per_heartbeat": round(fw["pings_per_hb"], 2), "keepalive_s": args.keepalive,
        "sessions_measured": fw["sessions"],
        "cipher": f"{fw['conn'].cipher:#06x}", "paho_cipher": f"{fw.get('paho_cipher') or 0:#06x}",
        # the board's heartbeat (QoS 0: one record) against the same payload through paho: 0 when alike
        "paho_minus_board_heartbeat": round(costs.get("up/hb", {}).get("cose", 0) - per_fw.get("up/hb", 0), 1),
        "run_bytes": up + dn, "unaccounted_bytes": up + dn - counted,
        "missing": len(att["missing"])}))


if __name__ == "__main__":
    main()
